"""One training epoch: the optimiser and its schedule, the pass over the training set,
and the epoch's line in ``metrics.jsonl``.

The official recipe: AdamW over the trainable tensors only, one linear warm-up epoch then
per-iteration cosine decay, ``plcc_loss + 0.3 · rank_loss``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from qclip_engine import QCLIP

from .data import VideoClips
from .datasets import loader
from .device import autocast
from .losses import qclip_loss


def lr_lambda(warmup_iters: int, total_iters: int):
    """The official schedule: linear warm-up, then cosine to 0, per iteration."""

    def factor(it: int) -> float:
        if warmup_iters > 0 and it <= warmup_iters:
            return it / warmup_iters
        progress = min(max((it - warmup_iters) / max(1, total_iters - warmup_iters), 0.0), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model: QCLIP, tcfg: dict) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.trainable_parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))


def make_scheduler(optimizer: torch.optim.Optimizer, tcfg: dict, train_videos: int) -> torch.optim.lr_scheduler.LambdaLR:
    steps_per_epoch = math.ceil(train_videos / int(tcfg["batch_size"]))
    warmup = int(float(tcfg["warmup_epochs"]) * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, int(tcfg["epochs"]) * steps_per_epoch))


@dataclass
class EpochResult:
    """What one pass over the training set leaves: its losses and its (prediction, MOS) pairs,
    from which the best epoch's calibration is taken."""

    losses: list[float] = field(default_factory=list)
    preds: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    failed: int = 0

    @property
    def loss(self) -> float | None:
        return float(np.mean(self.losses)) if self.losses else None


def train_epoch(
    model: QCLIP,
    dataset: VideoClips,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epoch: int,
    tcfg: dict,
    seed: int,
    device: torch.device,
) -> EpochResult:
    """One pass over ``dataset`` (0-based ``epoch``), shuffled by ``seed`` and the epoch, at
    ``tcfg["precision"]`` (``device.autocast``)."""
    model.train()
    dataset.set_epoch(epoch)
    batches = loader(dataset, int(tcfg["batch_size"]), seed * 1000 + epoch, int(tcfg["num_workers"]))
    result = EpochResult()
    for batch in tqdm(batches, desc=f"epoch {epoch + 1}/{int(tcfg['epochs'])}", unit="batch", leave=False):
        result.failed += len(batch["errors"])
        if "video" not in batch or len(batch["mos"]) < 2:
            continue  # the PLCC loss needs two videos
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, tcfg["precision"]):
            pred = model(model.normalize(batch["video"].to(device)))
        loss = qclip_loss(pred.float(), batch["mos"].to(device))
        loss.backward()
        optimizer.step()
        scheduler.step()
        result.losses.append(loss.item())
        result.preds.append(pred.detach().float().cpu().numpy())
        result.targets.append(batch["mos"].numpy())
    return result


def epoch_record(epoch: int, result: EpochResult, lr: float, val: dict, seconds: float) -> dict[str, Any]:
    """The epoch's line of ``metrics.jsonl`` (1-based ``epoch`` in the record)."""
    return {"epoch": epoch + 1, "loss": result.loss, "lr": lr, "failed_videos": result.failed, "val": val, "time_s": seconds}


def log_epoch(metrics_path: Path, record: dict, selection: str, epochs: int) -> None:
    """Append ``record`` to ``metrics.jsonl`` and print its summary on the selection set."""
    with metrics_path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    sel = record["val"][selection]
    print(
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}  {selection}: SROCC {sel['srocc']:.4f} "
        f"PLCC {sel['plcc']:.4f} KROCC {sel['krocc']:.4f} RMSE {sel['rmse']:.4f}  ({record['time_s']:.0f} s)"
    )
