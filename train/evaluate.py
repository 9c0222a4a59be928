"""Evaluation: predictions on the validation sets, their metrics (SROCC, PLCC linear and
logistic, KROCC, RMSE), the score that selects the best epoch, and its scatter plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qclip_engine.metrics import all_metrics, rescale

from . import distributed
from .data import VideoClips
from .datasets import eval_shard, loader
from .device import autocast
from .errors import DatasetError
from .trunk_cache import batch_inputs


@torch.no_grad()
def predict_items(model: torch.nn.Module, batches, device, precision: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Scores, MOS and item indices of the decodable videos of ``batches`` (possibly none), and
    the count of videos that failed to decode, at the training run's ``precision``
    (``device.autocast``)."""
    model.eval()
    preds, targets, indices, failed = [np.zeros(0, np.float32)], [np.zeros(0, np.float32)], [np.zeros(0, np.int64)], 0
    with autocast(device, precision):
        constants = model.evaluation_inputs()  # e.g. Q-CLIP's text features: once, not per batch
    for batch in batches:
        failed += len(batch["errors"])
        with autocast(device, precision):
            inputs = batch_inputs(model, batch, batches.dataset, device)  # frames, or trunk tokens (trunk_cache.py)
            if inputs is None:
                continue
            score = model(**constants, **inputs)
        preds.append(score.float().cpu().numpy())
        targets.append(batch["mos"].numpy())
        indices.append(batch["index"].numpy())
    return np.concatenate(preds), np.concatenate(targets), np.concatenate(indices), failed


def predict(model: torch.nn.Module, batches, device, precision: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores, MOS and the count of videos that failed to decode, over ``batches``, at the
    training run's ``precision`` (``device.autocast``)."""
    preds, targets, _, failed = predict_items(model, batches, device, precision)
    if not len(preds):
        raise DatasetError("no video of the validation set could be decoded")
    return preds, targets, failed


def evaluate(
    model: torch.nn.Module, val_sets: dict[str, VideoClips], batch_size: int, device, precision: str
) -> tuple[dict[str, dict], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Metrics of each validation set (with its video and failure counts), and its (predictions, MOS).

    Under torchrun each process scores its shard (``datasets.eval_shard``) and every process
    gets the whole set's predictions back in dataset order before the metrics
    (``distributed.gather_predictions``): the metrics of a one-process evaluation.
    """
    metrics, outputs = {}, {}
    for name, dataset in val_sets.items():
        batches = loader(dataset, batch_size, None, 0, indices=eval_shard(len(dataset)))
        preds, targets, failed = distributed.gather_predictions(*predict_items(model, batches, device, precision))
        if not len(preds):
            raise DatasetError("no video of the validation set could be decoded")
        # rank 0 computes them (and alone warns, e.g. of too few videos for the logistic fit)
        metrics[name] = distributed.from_main(lambda: all_metrics(preds, targets)) | {"videos": len(preds), "failed_videos": failed}
        outputs[name] = (preds, targets)
    return metrics, outputs


def selection_score(metrics: dict) -> float:
    """What the best epoch maximises on the first validation set."""
    return metrics["srocc"] + metrics["plcc"]


def scatter(path: Path, preds: np.ndarray, targets: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.scatter(targets, rescale(preds, targets), s=10, alpha=0.7)
    lo, hi = float(np.min(targets)), float(np.max(targets))
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--")
    ax.set_xlabel("target (MOS)")
    ax.set_ylabel("prediction (linearly rescaled)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
