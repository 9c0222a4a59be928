"""``auto`` on the CPU: the fastest backend × precision this machine measures, among the eligible ones.

CPUs differ too much for a fixed rule (ONNX Runtime FP32 runs 2.4× the eager model on one of
this project's machines and 0.9× on another, where torch BF16 on AMX runs 2.5× FP32), so the
choice is measured:

1. Candidates: ``torch-fp32`` and ``onnxruntime-fp32`` (when ONNX Runtime and the exporter are
   installed); ``torch-bf16`` when the CPU has AMX-BF16 or AVX-512-BF16, ``onnxruntime-int8``
   when it has VNNI or AMX-INT8 (``runtime/cpu_features.py``). ``--engine``/``--precision``
   narrow the list.
2. Eligibility: a reduced precision is a candidate only if the artifact's ``precision.json``
   (written by ``qclip-export ARTIFACT --engine onnx --int8``) records its SROCC against FP32
   at or above ``defaults.PRECISION_MIN_SROCC``; unmeasured or outside the limit, it is left
   out and the log says why. Scores never change silently.
3. Timing: each candidate runs one video of the model's real input shape once to warm up,
   then ``TIMED_RUNS`` times; the fastest (best of its runs) wins. The choice is cached per CPU
   model and flags, model (config, adapters, backbone fingerprint), input shape, threads and
   library versions in ``$QCLIP_CACHE/cpu_choice/`` so it is measured once per machine.

One log line says what was chosen, from what, and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import defaults
from ..model.qclip import QCLIP
from .base import cache_root, export_cache_dir
from .cpu_features import CpuIdentity, cpu_identity

log = logging.getLogger("qclip_engine.runtime")

DRIFT_FILE = "precision.json"  # in the artifact directory, written by qclip-export --int8
TIMED_RUNS = 2
FP32 = "fp32"


@dataclass(frozen=True)
class Candidate:
    engine: str  # torch | onnxruntime
    precision: str  # fp32 | bf16 | int8

    @property
    def label(self) -> str:
        return f"{self.engine}-{self.precision}"


ALL_CANDIDATES = (Candidate("torch", "fp32"), Candidate("onnxruntime", "fp32"),
                  Candidate("torch", "bf16"), Candidate("onnxruntime", "int8"))


def candidates(cpu: CpuIdentity, *, engine: str = "auto", precision: str = "auto",
               onnxruntime: bool = True) -> tuple[list[Candidate], dict[str, str]]:
    """The candidates this CPU allows for ``engine``/``precision``, and why the others are out."""
    kept, out = [], {}
    for c in ALL_CANDIDATES:
        if engine not in ("auto", c.engine) or precision not in ("auto", c.precision):
            continue
        if c.engine == "onnxruntime" and not onnxruntime:
            out[c.label] = "ONNX Runtime or the ONNX exporter is not installed"
        elif precision == "auto" and c.precision == "bf16" and not cpu.bf16:
            out[c.label] = "no AMX-BF16 or AVX-512-BF16 on this CPU (BF16 would be emulated)"
        elif precision == "auto" and c.precision == "int8" and not cpu.int8:
            out[c.label] = "no VNNI or AMX-INT8 on this CPU"
        else:
            kept.append(c)
    return kept, out


def read_drift(artifact_dir: Path | None) -> dict | None:
    """The artifact's measured drift per precision (``precision.json``), or None."""
    path = artifact_dir / DRIFT_FILE if artifact_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("%s cannot be read: reduced precisions are not used by auto", path)
        return None


def drift_refusal(precision: str, drift: dict | None) -> str | None:
    """Why ``precision`` may not be chosen by auto given the measured ``drift``, or None."""
    if precision == FP32:
        return None
    limit = defaults.PRECISION_MIN_SROCC[precision]
    measured = (drift or {}).get("precisions", {}).get(precision)
    if not measured or measured.get("srocc") is None:
        return f"its score drift is not measured (qclip-export ARTIFACT --engine onnx --int8 writes {DRIFT_FILE})"
    if measured["srocc"] < limit:
        return f"SROCC vs FP32 {measured['srocc']:.4f} < {limit} (its limit)"
    return None


def cache_key(model: QCLIP, cpu: CpuIdentity, labels: list[str], shape: tuple[int, ...]) -> str:
    versions = [torch.__version__]
    try:
        import onnxruntime

        versions.append(onnxruntime.__version__)
    except ImportError:
        pass
    text = json.dumps([cpu.model, sorted(cpu.flags), export_cache_dir(model).name, list(shape),
                       torch.get_num_threads(), os.cpu_count(), versions, sorted(labels)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def time_backend(run: Callable[[np.ndarray], object], frames: np.ndarray, repeats: int = TIMED_RUNS) -> float:
    """Frames per second of ``run`` on ``frames`` [1, F, H, W, 3]: one warm-up, best of ``repeats``."""
    run(frames)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run(frames)
        best = min(best, time.perf_counter() - started)
    return frames.shape[0] * frames.shape[1] / best


def choose_cpu_backend(model: QCLIP, build: Callable[[Candidate], object], *, artifact_dir: Path | None,
                       engine: str = "auto", precision: str = "auto", onnxruntime: bool = True,
                       cpu: CpuIdentity | None = None, timer=time_backend):
    """The backend ``build(candidate)`` of the fastest eligible candidate (module docstring)."""
    cpu = cpu or cpu_identity()
    listed, out = candidates(cpu, engine=engine, precision=precision, onnxruntime=onnxruntime)
    drift = read_drift(artifact_dir)
    eligible = []
    for c in listed:
        why = drift_refusal(c.precision, drift)
        if why and precision == "auto":
            out[c.label] = why
            continue
        if why:  # asked for by name: used, but not silently
            log.warning("precision %s as asked, although %s", c.precision, why)
        eligible.append(c)
    if not eligible:
        reasons = "; ".join(f"{k}: {v}" for k, v in out.items()) or (
            "the CPU backends are " + ", ".join(c.label for c in ALL_CANDIDATES) + " (BF16 on the CPU runs in the torch backend)")
        raise ValueError(f"no CPU backend for engine={engine!r}, precision={precision!r}: {reasons}")
    for label, why in out.items():
        log.info("CPU backend %s left out: %s", label, why)
    if len(eligible) == 1:
        backend = build(eligible[0])
        log.info("CPU backend: %s (the only candidate)", eligible[0].label)
        return backend

    h, w = model.image_size
    shape = (1, model.config.num_frames, h, w, 3)
    cache = cache_root() / "cpu_choice" / f"{cache_key(model, cpu, [c.label for c in eligible], shape)}.json"
    chosen = _cached_choice(cache, eligible)
    if chosen is not None:
        log.info("CPU backend: %s (measured earlier on this %s; %s)", chosen.label, cpu.model, cache)
        return build(chosen)

    frames = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    rates, best = {}, None
    for c in eligible:
        backend = build(c)
        rates[c.label] = timer(backend.run, frames)
        if best is None or rates[c.label] > rates[best[0].label]:
            best = (c, backend)  # keep the winner built; the others are dropped
        del backend
    chosen, backend = best
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"choice": chosen.label, "frames_per_s": rates, "cpu": cpu.to_dict(),
                                 "shape": list(shape), "left_out": out}, indent=2) + "\n")
    log.warning("CPU backend chosen by measurement: %s (%s; frames/s on %s; cached in %s)", chosen.label,
                ", ".join(f"{k} {v:.1f}" for k, v in sorted(rates.items(), key=lambda kv: -kv[1])),
                cpu.model or "this CPU", cache)
    return backend


def _cached_choice(cache: Path, eligible: list[Candidate]) -> Candidate | None:
    try:
        label = json.loads(cache.read_text())["choice"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return next((c for c in eligible if c.label == label), None)
