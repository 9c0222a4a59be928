"""What a run records about where it ran: library versions and the machine.

Artifacts store the versions they were trained with; benchmark and demo results store
both, so a figure can be traced to its hardware and software. Torch-free at import.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CORE_DISTRIBUTIONS = ("qclip-engine", "torch", "open-clip-torch", "timm")


def versions(*dists: str) -> dict[str, str]:
    """Installed versions of the core distributions and ``dists`` ("not installed" when absent)."""
    out = {}
    for dist in (*CORE_DISTRIBUTIONS, *dists):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_identity() -> list[dict] | None:
    """nvidia-smi's view of the GPUs, or None where there is none."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    keys = ("name", "driver", "memory", "max_sm_clock")
    return [dict(zip(keys, (f.strip() for f in line.split(",")))) for line in out.strip().splitlines()]


def machine() -> dict:
    """CPU, cores, torch threads, memory, GPUs, platform and Python of this machine."""
    import torch

    try:
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        mem_gib = round(mem_kb / 2**20, 1)
    except (OSError, StopIteration):
        mem_gib = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": mem_gib,
        "gpu": gpu_identity(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def result_record(name: str, payload: dict, *dists: str) -> dict:
    """What a benchmark (or the demo) writes to ``benchmarks/results/NAME.json``: its name, when,
    the machine and library versions (the core ones and ``dists``), then ``payload``."""
    return {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(*dists),
        **payload,
    }
