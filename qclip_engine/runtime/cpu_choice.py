"""``auto`` on the CPU: the fastest backend × precision this machine measures, among the eligible ones.

CPUs differ too much for a fixed rule (ONNX Runtime FP32 runs 2.4× the eager model on one of
this project's machines and 0.9× on another, where torch BF16 on AMX runs 2.5× FP32), so the
choice is measured:

1. Candidates: ``torch-fp32`` and ``onnxruntime-fp32`` (when ONNX Runtime and the exporter are
   installed); ``torch-bf16`` when the CPU has AMX-BF16 or AVX-512-BF16, ``onnxruntime-int8``
   when it has VNNI or AMX-INT8 (``runtime/cpu_features.py``). ``--engine``/``--precision``
   narrow the list.
2. Eligibility: a reduced precision is a candidate only if the artifact's ``precision.json``
   (written by ``qclip-export ARTIFACT --engine onnx --int8``), measured for this very model
   (its fingerprint), records its SROCC against FP32 at or above
   ``defaults.PRECISION_MIN_SROCC``; unmeasured, measured for another model or outside the
   limit, it is left out and the log says why. Scores never change silently.
3. Timing: the candidates are built side by side and warmed up on one video of the model's
   real input shape; the timed batch is then as many videos (up to the engine's batch, at most
   ``TIMING_BATCH``) as the slowest candidate runs in about ``TIMING_TARGET_S``, so a small
   model is timed at batches like the engine's and a large one stays brief. After a warm-up at
   that batch, ``TIMED_RUNS`` rounds time every candidate in turn (interleaved, so a busy
   moment of the machine hits them all); each keeps its best round and the fastest wins. The
   rounds run as the engine runs the model: beside its ``decode_workers`` decoding
   (``decode_load``). That matters — on a 2-core machine torch BF16 and ONNX Runtime INT8 tie
   with the cores to themselves (127 vs 125 frames/s), while beside two decoding threads torch
   (OpenMP threads that wait at barriers, ops that take the GIL back) falls to 9–20 frames/s
   and ONNX Runtime keeps 43. A candidate that fails to build or run is left out, with the
   reason logged. The choice is
   cached per CPU model and flags, model (config, adapters, backbone fingerprint), input shape,
   threads and library versions in ``$QCLIP_CACHE/cpu_choice/`` so it is measured once per
   machine (a cache that cannot be written only costs the measurement next time). One process
   measures at a time: processes started together wait for the first one's choice and use it
   (a measurement beside another would time both wrong), and the choice file is written whole
   (``runtime/cache_files.py``).

When it measures, one log line (WARNING, so a CLI shows it) says what was chosen and the
frames/s of each candidate; a cached or only choice is logged at INFO. Every result names its
backend either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import defaults
from .base import cache_root, export_cache_dir
from .cache_files import atomic_write, entry_lock
from .cpu_features import CpuIdentity, cpu_identity

log = logging.getLogger("qclip_engine.runtime")

DRIFT_FILE = "precision.json"  # in the artifact directory, written by qclip-export --int8
TIMED_RUNS = 3
TIMING_BATCH = 8  # videos per timed call, at most
TIMING_TARGET_S = 1.5  # the slowest candidate's timed call, about
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


def model_fingerprint(model: torch.nn.Module) -> str:
    """What a drift record is tied to: the model's config, adapters and backbone (as the export cache)."""
    return export_cache_dir(model).name


def read_drift(artifact_dir: Path | None) -> dict | None:
    """The artifact's measured drift per precision (``precision.json``), or None."""
    path = artifact_dir / DRIFT_FILE if artifact_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        drift = json.loads(path.read_text())
    except (OSError, ValueError):
        drift = None
    if not isinstance(drift, dict) or not isinstance(drift.get("precisions"), dict):
        log.warning("%s cannot be read: reduced precisions are not used by auto", path)
        return None
    return drift


def drift_refusal(precision: str, drift: dict | None, fingerprint: str | None = None) -> str | None:
    """Why ``precision`` may not be chosen by auto given the measured ``drift`` (of the model
    whose fingerprint is ``fingerprint``), or None."""
    if precision == FP32:
        return None
    limit = defaults.PRECISION_MIN_SROCC[precision]
    measured = (drift or {}).get("precisions", {}).get(precision)
    srocc = measured.get("srocc") if isinstance(measured, dict) else None
    if not isinstance(srocc, (int, float)) or not math.isfinite(srocc):  # NaN: constant scores, nothing measured
        return f"its score drift is not measured (qclip-export ARTIFACT --engine onnx --int8 writes {DRIFT_FILE})"
    if fingerprint is not None and drift.get("model_fingerprint") != fingerprint:
        return f"its drift in {DRIFT_FILE} was measured for another model (export again with --int8)"
    if srocc < limit:
        return f"SROCC vs FP32 {srocc:.4f} < {limit} (its limit)"
    return None


def cache_key(model: torch.nn.Module, cpu: CpuIdentity, labels: list[str], shape: tuple[int, ...], decode_workers: int = 0) -> str:
    """The choice's identity: CPU, model, input shape, threads, library versions, candidates."""
    versions = [torch.__version__]
    try:
        import onnxruntime

        versions.append(onnxruntime.__version__)
    except ImportError:
        pass
    text = json.dumps([cpu.model, sorted(cpu.flags), model_fingerprint(model), list(shape), decode_workers,
                       torch.get_num_threads(), os.cpu_count(), versions, sorted(labels)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def time_backend(run: Callable[[np.ndarray], object], frames: np.ndarray) -> float:
    """Frames per second of one call of ``run`` on ``frames`` [B, F, H, W, 3]."""
    started = time.perf_counter()
    run(frames)
    return frames.shape[0] * frames.shape[1] / (time.perf_counter() - started)


@contextlib.contextmanager
def decode_load(workers: int):
    """``workers`` threads decoding a small generated clip with the engine's own decoder, over
    and over, while the block runs: the load the model shares the cores with in the engine."""
    if workers < 1:
        yield
        return
    import av

    from ..video.decode import decode_candidates

    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="qclip-load-") as tmp:
        clip = Path(tmp) / "load.mp4"
        with av.open(str(clip), "w") as out:
            stream = out.add_stream("libx264", rate=25)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            rng = np.random.default_rng(0)
            for _ in range(48):
                rgb = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
                out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            out.mux(stream.encode())

        def decode_forever():
            while not stop.is_set():
                decode_candidates(clip, (160, 160), max_frames=16, threads=1)

        threads = [threading.Thread(target=decode_forever, daemon=True, name="qclip-load") for _ in range(workers)]
        for t in threads:
            t.start()
        try:
            yield
        finally:
            stop.set()
            for t in threads:
                t.join()


def choose_cpu_backend(model: torch.nn.Module, build: Callable[[Candidate], object], *, artifact_dir: Path | None,
                       engine: str = "auto", precision: str = "auto", onnxruntime: bool = True, batch: int = 1,
                       decode_workers: int = 0, cpu: CpuIdentity | None = None, timer=time_backend):
    """The backend ``build(candidate)`` of the fastest eligible candidate (module docstring)."""
    cpu = cpu or cpu_identity()
    listed, out = candidates(cpu, engine=engine, precision=precision, onnxruntime=onnxruntime)
    drift = read_drift(artifact_dir)
    fingerprint = model_fingerprint(model) if drift is not None else None
    eligible = []
    for c in listed:
        why = drift_refusal(c.precision, drift, fingerprint)
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
    frames_per_video = model.config.num_frames
    cap = max(1, min(batch, TIMING_BATCH))
    shape = (cap, frames_per_video, h, w, 3)
    key = cache_key(model, cpu, [c.label for c in eligible], shape, decode_workers)
    cache = cache_root() / "cpu_choice" / f"{key}.json"
    with entry_lock(cache):  # one process measures; those started beside it wait, then read its choice
        chosen = _cached_choice(cache, eligible)
        if chosen is None:
            return _measure(build, eligible, out, shape, decode_workers, cpu, cache, timer)
    log.info("CPU backend: %s (measured earlier on this %s; %s)", chosen.label, cpu.model, cache)
    return build(chosen)


def _measure(build: Callable[[Candidate], object], eligible: list[Candidate], out: dict[str, str],
             shape: tuple[int, ...], decode_workers: int, cpu: CpuIdentity, cache: Path, timer):
    """Build and time ``eligible`` on videos of ``shape`` (module docstring), cache the choice in
    ``cache``; the fastest candidate's backend."""
    cap, frames_per_video = shape[0], shape[1]
    video = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    built, first = {}, {}
    for c in eligible:
        try:
            backend = build(c)
            first[c.label] = timer(backend.run, video[:1])  # warm-up, and a first idea of its speed
        except Exception as exc:  # one candidate that cannot run here must not stop the others
            out[c.label] = f"failed: {type(exc).__name__}: {exc}"
            log.warning("CPU backend %s left out: %s", c.label, out[c.label])
            continue
        built[c.label] = (c, backend)
    if not built:
        raise RuntimeError("no CPU backend could run: " + "; ".join(f"{k}: {v}" for k, v in out.items()))
    videos = int(min(cap, max(1, TIMING_TARGET_S * min(first.values()) // frames_per_video)))
    frames = video[:videos]
    rates = dict.fromkeys(built, 0.0)
    with decode_load(decode_workers):
        for round_ in range(TIMED_RUNS + 1):  # round 0 warms up at the timed batch
            for label, (_, backend) in built.items():
                rate = timer(backend.run, frames)
                if round_:
                    rates[label] = max(rates[label], rate)
    chosen, backend = built[max(rates, key=rates.get)]
    built.clear()  # the others are dropped
    record = {"choice": chosen.label, "frames_per_s": rates, "cpu": cpu.to_dict(), "shape": list(frames.shape),
              "decode_workers": decode_workers, "left_out": out}
    try:
        atomic_write(cache, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    except OSError as exc:  # a read-only cache: measured again next time, nothing worse
        log.warning("the CPU choice could not be cached (%s)", exc)
        cache = "not cached"
    log.warning("CPU backend chosen by measurement: %s (%s; frames/s on %s beside %d decoding threads; cached in %s)",
                chosen.label, ", ".join(f"{k} {v:.1f}" for k, v in sorted(rates.items(), key=lambda kv: -kv[1])),
                cpu.model or "this CPU", decode_workers, cache)
    return backend


def _cached_choice(cache: Path, eligible: list[Candidate]) -> Candidate | None:
    try:
        label = json.loads(cache.read_text())["choice"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return next((c for c in eligible if c.label == label), None)
