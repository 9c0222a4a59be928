"""The wheel claims no top-level name but ``qclip_engine``, installs and runs outside the checkout,
and the CLIs' ``--help`` and the pure-numpy modules import neither torch nor open_clip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the sources: setuptools' build/ directory in a checkout can hold
    # stale files of modules since removed, which would hide a packaging mistake.
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for tree in ("qclip_engine", "export", "kernels", "train"):
        shutil.copytree(ROOT / tree, source / tree, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    (path,) = out.glob("qclip_engine-*.whl")
    return path


def test_the_wheel_installs_no_top_level_module_but_qclip_engine(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"qclip_engine"}, top
    # Every source file ships, export/, kernels/ and train/ inside the namespace (a subpackage
    # left out of pyproject's list would be missing here), and so do the kernel's .cu source and the
    # dashboard's files.
    expected = {f"qclip_engine/{p.relative_to(ROOT / 'qclip_engine').as_posix()}"
                for p in (ROOT / "qclip_engine").rglob("*.py")}
    for tree in ("export", "kernels", "train"):
        expected |= {f"qclip_engine/{tree}/{p.relative_to(ROOT / tree).as_posix()}" for p in (ROOT / tree).rglob("*.py")}
    expected.add("qclip_engine/kernels/frame_mse.cu")
    # the monitor's dashboard (package data: without it the page answers 503)
    expected |= {f"qclip_engine/monitor/dashboard/{p.name}" for p in (ROOT / "qclip_engine/monitor/dashboard").iterdir()}
    assert not expected - set(names), sorted(expected - set(names))
    assert not any(n.startswith(("benchmarks/", "tests/")) or "/tests/" in n for n in names)


def test_a_non_editable_install_runs_from_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The new venv sees this venv's dependencies (torch …) but not its editable qclip_engine: a
    # path line in a .pth adds the directory without running the .pth files inside it.
    (site / "ci_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")} | {"HF_HUB_OFFLINE": "1"}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for command in ("qclip-convert", "qclip-export", "qclip-score", "qclip-serve"):
        done = subprocess.run([venv / "bin" / command, "--help"], cwd=outside, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        assert "usage:" in done.stdout
    script = (
        "import importlib.resources, qclip_engine\n"
        "from qclip_engine import QCLIP, QCLIPConfig, QualityEngine\n"
        "from qclip_engine.train import run\n"
        "from qclip_engine.export import cli\n"
        f"assert qclip_engine.__file__.startswith({str(site)!r}), qclip_engine.__file__\n"
        "assert (importlib.resources.files('qclip_engine.kernels') / 'frame_mse.cu').is_file()\n"
        "print(qclip_engine.__version__, QualityEngine.__name__)\n"
    )
    done = subprocess.run([python, "-c", script], cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "0.1.0 QualityEngine" in done.stdout


def _imported_after(code: str) -> list[str]:
    probe = code + f"\nimport sys\nprint('imported:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    line = done.stdout.rsplit("imported:", 1)[-1].strip()
    return [m for m in line.split(",") if m]


@pytest.mark.parametrize("module", ["qclip_engine.cli.convert", "qclip_engine.cli.score", "qclip_engine.cli.serve",
                                    "qclip_engine.export.cli"])
def test_cli_help_imports_neither_torch_nor_open_clip(module):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['prog', '--help']\n"
        "try:\n"
        f"    runpy.run_module({module!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
    )
    assert _imported_after(code) == []


@pytest.mark.parametrize("module", ["qclip_engine", "qclip_engine.video.sampling", "qclip_engine.video.frame_mse",
                                    "qclip_engine.batching", "qclip_engine.defaults", "qclip_engine.errors"])
def test_pure_modules_import_neither_torch_nor_open_clip(module):
    assert _imported_after(f"import {module}") == []


def test_the_heavy_names_still_resolve_lazily():
    assert _imported_after("import qclip_engine\nqclip_engine.QCLIPConfig") == list(HEAVY)
