"""The import layers of docs/architecture.md, as import-linter contracts in pyproject.toml.

The contracts run on the checkout; a copy with one planted upward import must break them,
so the check can fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
TREES = ("qclip_engine", "export", "train", "kernels")


def lint(cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_import_contracts_hold():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert re.search(r"Contracts: 6 kept, 0 broken", done.stdout), done.stdout[-2000:]


def _planted_copy(tmp_path: Path, module: str, line: str) -> Path:
    for tree in TREES:
        shutil.copytree(ROOT / tree, tmp_path / tree, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / module).open("a") as f:
        f.write(f"\n{line}  # planted upward import\n")
    return tmp_path


def test_an_upward_import_breaks_the_layers(tmp_path):
    done = lint(_planted_copy(tmp_path, "qclip_engine/model/scma.py", "from ..engine import QualityEngine"))
    assert done.returncode != 0
    assert "qclip_engine.model.scma -> qclip_engine.engine" in done.stdout


def test_the_library_importing_training_breaks_the_contracts(tmp_path):
    done = lint(_planted_copy(tmp_path, "qclip_engine/engine.py", "import train.epoch"))
    assert done.returncode != 0
    assert "qclip_engine.engine -> train.epoch" in done.stdout


def test_torch_in_a_base_module_breaks_the_contracts(tmp_path):
    done = lint(_planted_copy(tmp_path, "qclip_engine/video/sampling.py", "import torch"))
    assert done.returncode != 0
    assert "qclip_engine.video.sampling -> torch" in done.stdout


def test_the_kernels_importing_the_library_breaks_the_contracts(tmp_path):
    done = lint(_planted_copy(tmp_path, "kernels/frame_mse.py", "import qclip_engine.engine"))
    assert done.returncode != 0
    assert "kernels.frame_mse -> qclip_engine.engine" in done.stdout
