"""What a run keeps on disk between epochs: ``checkpoint.pt`` (everything ``--resume``
needs) and ``best/``, the artifact of the best epoch with its calibration and scatter plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from qclip_engine import save_artifact

from . import distributed
from .epoch import EpochResult
from .errors import CheckpointError
from .evaluate import scatter

CHECKPOINT = "checkpoint.pt"
BEST = "best"


def no_best() -> dict:
    """The best-epoch record before any epoch (every score beats it)."""
    return {"score": -math.inf}


def trained_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The buffers of every module that holds a trained parameter: what training changes besides the
    parameters (a BatchNorm's running statistics, e.g. DVLTA-VQA's trained parts)."""
    out = {}
    for prefix, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            for name, buffer in module.named_buffers(recurse=False):
                out[f"{prefix}.{name}" if prefix else name] = buffer.detach()
    return out


def save_checkpoint(path: Path, epoch: int, model: torch.nn.Module, optimizer, scheduler, best: dict) -> None:
    """After 0-based ``epoch``: trainable tensors and the buffers of their modules, optimiser,
    schedule, best so far and torch's RNG."""
    torch.save(
        {
            "epoch": epoch,
            "trainable": {name: p.detach() for name, p in model.named_parameters() if p.requires_grad},
            "buffers": trained_buffers(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best": best,
            "torch_rng": torch.get_rng_state(),
        },
        path,
    )


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer, scheduler) -> tuple[dict, int]:
    """Restore a run from ``path`` in place; returns (best so far, first epoch still to run).

    Under torchrun rank 0 reads the file and every process restores the same state from it
    (``distributed.from_main``), the torch RNG state included; the epoch that follows sets
    the samplers' epoch (``datasets.train_loader``)."""
    state = distributed.from_main(lambda: torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None)
    if state is None:
        raise CheckpointError(f"cannot resume: no checkpoint at {path}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in state["trainable"]:
                p.copy_(state["trainable"][name])
        saved = state.get("buffers", {})  # a checkpoint written before buffers were kept has none
        for name, buffer in model.named_buffers():
            if name in saved:
                buffer.copy_(saved[name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if distributed.is_main():
        print(f"resumed from {path} after epoch {state['epoch']}")
    return state["best"], state["epoch"] + 1


def calibration(result: EpochResult) -> dict | None:
    """Mean and spread of the epoch's training predictions and MOS (stored with the artifact); None
    when the labels have no spread (every training label the same: no scale to map scores onto,
    and an artifact's calibration needs spreads > 0, qclip_engine/artifact.py)."""
    tp, tt = np.concatenate(result.preds), np.concatenate(result.targets)
    if not float(tt.std()) > 0:
        if distributed.is_main():
            print(f"no calibration stored: every training label is {float(tt.mean()):g}")
        return None
    return {
        "pred_mean": float(tp.mean()),
        "pred_std": float(tp.std()) or 1.0,
        "target_mean": float(tt.mean()),
        "target_std": float(tt.std()),
    }


def save_best(directory: Path, model: torch.nn.Module, result: EpochResult, preds: np.ndarray, targets: np.ndarray, title: str) -> None:
    """The artifact of the best epoch so far, calibrated on its training pass, and its scatter plot."""
    save_artifact(model, directory, calibration=calibration(result))
    scatter(directory / "scatter.png", preds, targets, title)
