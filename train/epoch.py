"""One training epoch: the optimiser and its schedule, the pass over the training set,
and the epoch's line in ``metrics.jsonl``.

The official recipe: AdamW over the trainable tensors only, one linear warm-up epoch then
per-iteration cosine decay, ``plcc_loss + 0.3 · rank_loss``. The optimiser's groups and the loss
are the model family's (``param_groups``, ``training_output``, ``training_loss``: model/families.py):
for Q-CLIP the official ones, for CLIPVQA its released ones.
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

from . import distributed
from .data import VideoClips
from .datasets import train_loader
from .device import autocast
from .trunk_cache import batch_inputs


def lr_lambda(warmup_iters: int, total_iters: int):
    """The official schedule: linear warm-up, then cosine to 0, per iteration."""

    def factor(it: int) -> float:
        if warmup_iters > 0 and it <= warmup_iters:
            return it / warmup_iters
        progress = min(max((it - warmup_iters) / max(1, total_iters - warmup_iters), 0.0), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(model: torch.nn.Module, tcfg: dict) -> torch.optim.Optimizer:
    """AdamW over the family's groups at ``train.lr`` and ``train.weight_decay``."""
    return torch.optim.AdamW(model.param_groups(float(tcfg["lr"]), float(tcfg["weight_decay"])))


def make_scheduler(optimizer: torch.optim.Optimizer, tcfg: dict, train_videos: int) -> torch.optim.lr_scheduler.LambdaLR:
    steps_per_epoch = math.ceil(train_videos / int(tcfg["batch_size"]))
    warmup = int(float(tcfg["warmup_epochs"]) * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, int(tcfg["epochs"]) * steps_per_epoch))


@dataclass
class EpochResult:
    """What one pass over the training set leaves: its losses and gradient norms, step by
    step, and its (prediction, MOS) pairs, from which the best epoch's calibration is taken."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    preds: list[np.ndarray] = field(default_factory=list)
    targets: list[np.ndarray] = field(default_factory=list)
    failed: int = 0

    @property
    def loss(self) -> float | None:
        return float(np.mean(self.losses)) if self.losses else None


def grad_norm(parameters) -> float:
    """The L2 norm of all the gradients together (what the optimiser steps with)."""
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def train_epoch(
    net: torch.nn.Module,
    dataset: VideoClips,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epoch: int,
    tcfg: dict,
    seed: int,
    device: torch.device,
) -> EpochResult:
    """One pass over ``dataset`` (0-based ``epoch``) in the order ``seed`` and the epoch give
    (``datasets.train_loader``), at ``tcfg["precision"]`` (``device.autocast``).

    ``net`` is the model, or under torchrun its DDP wrapper (``distributed.wrap``): each process
    then runs its share of every global batch and computes the loss on the gathered global
    batch (``distributed.gather_batch``). A step whose global batch holds fewer than two
    videos is skipped by every process alike (the PLCC loss needs two).
    """
    model = distributed.unwrap(net)
    model.train()
    dataset.set_epoch(epoch)
    batches = train_loader(dataset, int(tcfg["batch_size"]), seed * 1000, epoch, int(tcfg["num_workers"]))
    result = EpochResult()
    desc = f"epoch {epoch + 1}/{int(tcfg['epochs'])}"
    for batch in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not distributed.is_main()):
        result.failed += len(batch["errors"])
        mos = batch.get("mos", torch.zeros(0))
        counts = distributed.sizes(len(mos), device)
        if sum(counts) < 2:
            continue  # the PLCC loss needs two videos
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, tcfg["precision"]):
            inputs = batch_inputs(model, batch, dataset, device)  # frames, or trunk tokens (trunk_cache.py)
            if inputs is None:
                # No video here this step (the end of the epoch, or failed decodes) while other
                # processes have some: a grey stand-in keeps this process in DDP's backward, and
                # slicing it away below leaves its gradient contribution exactly zero.
                grey = torch.full((1, dataset.num_frames, *dataset.image_size, 3), 128, dtype=torch.uint8)
                inputs = {"video": model.normalize(grey.to(device))}
            outputs = net(**inputs, output=model.training_output)
        outputs, target = distributed.gather_batch(outputs.float()[: len(mos)], mos.to(device), counts)
        loss, pred = model.training_loss(outputs, target)
        loss.backward()
        result.grad_norms.append(grad_norm(model.trainable_parameters()))
        optimizer.step()
        scheduler.step()
        result.losses.append(loss.item())
        result.preds.append(pred.detach().cpu().numpy())
        result.targets.append(target.cpu().numpy())
    result.failed = distributed.sum_over_ranks(result.failed)
    return result


def epoch_record(
    epoch: int, result: EpochResult, lr: float, val: dict, seconds: float, trunk_cache: dict | None = None
) -> dict[str, Any]:
    """The epoch's line of ``metrics.jsonl`` (1-based ``epoch`` in the record); ``steps`` holds
    each optimiser step's loss and gradient norm (after DDP's averaging under torchrun);
    ``trunk_cache``, with ``train.cache_trunk``, how many videos (training and validation) were
    read from it, built and rebuilt."""
    record = {"epoch": epoch + 1, "loss": result.loss, "lr": lr, "failed_videos": result.failed, "val": val,
              "time_s": seconds, "steps": {"loss": result.losses, "grad_norm": result.grad_norms}}
    if trunk_cache is not None:
        record["trunk_cache"] = trunk_cache
    return record


def log_epoch(metrics_path: Path, record: dict, selection: str, epochs: int) -> None:
    """Append ``record`` to ``metrics.jsonl`` and print its summary on the selection set."""
    with metrics_path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    sel = record["val"][selection]
    print(
        f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}  {selection}: SROCC {sel['srocc']:.4f} "
        f"PLCC {sel['plcc']:.4f} KROCC {sel['krocc']:.4f} RMSE {sel['rmse']:.4f}  ({record['time_s']:.0f} s)"
    )
