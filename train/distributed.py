"""Data-parallel training under ``torchrun``: the process group, the DDP wrapper and the
collectives a run needs.

``torchrun --nproc_per_node=N -m train.run …`` starts N processes with ``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init` joins
them (``env://``; NCCL on CUDA, gloo on the CPU). Without those variables, or with
``WORLD_SIZE=1``, nothing here starts a group and every helper is the single-process
identity, so a plain ``python -m train.run`` runs exactly as it does without torchrun.

What stays equal to the single-process run:

* ``train.batch_size`` is the GLOBAL batch: each process takes ``batch_size / world_size``
  of every step (``datasets.train_loader``) and :func:`gather_batch` all-gathers the
  predictions and labels with ``torch.distributed.nn.functional.all_gather``, whose backward
  carries gradients back to the process that made each prediction, so every process computes
  the batch-statistic losses (``losses.py``: PLCC standardises over the batch, the rank loss
  is pairwise) on the whole global batch.
* Gradient scale: the loss reaches the parameters only through the predictions,
  ``∂L/∂θ = Σ_i ∂L/∂p_i · ∂p_i/∂θ``, and each ``p_i`` is made by one process. Every process
  computes the same ``L`` on the gathered batch and back-propagates it; the all-gather's
  backward sums the W processes' (equal) gradients for each slice onto the process that
  made it (a reduce-scatter, ``SUM``), so process r receives ``W · ∂L/∂p_i`` for its own
  ``p_i`` and holds ``g_r = W · Σ_{i∈r} ∂L/∂p_i · ∂p_i/∂θ``. DDP averages:
  ``(1/W) Σ_r g_r = ∂L/∂θ``, the one-process gradient, with no factor to add
  (``tests/test_train_ddp.py`` checks every step's gradient norm against a one-process run;
  a loss scaled by W there doubles it at W = 2).
* DDP covers the trainable tensors only: :func:`wrap` tells DDP to ignore every frozen
  parameter and every buffer, so the backbone is neither broadcast at construction nor
  all-reduced (every process builds it identically from the same weights or ``init_seed``).
* Trained BatchNorm layers (DVLTA-VQA's): :func:`wrap` makes them ``SyncBatchNorm`` on CUDA, so
  they normalise with the statistics of the global batch and every process keeps the same running
  statistics; on the CPU (gloo), where SyncBatchNorm does not run, such a model is refused with
  several processes (``ConfigError``).
"""

from __future__ import annotations

import hashlib
import os
import warnings

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError, DatasetError


def active() -> bool:
    """Whether this process is in an initialised process group (:func:`init` starts one only
    for several processes)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, the one process that writes files and prints progress (the only one without a group)."""
    return rank() == 0


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init(device_name: str) -> bool:
    """Join torchrun's process group when :func:`launched` (a no-op otherwise, or when already
    joined): NCCL when training runs on CUDA, gloo on the CPU; each process takes GPU
    ``LOCAL_RANK``. Returns whether this call started the group (the caller then ends it)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return False
    cuda = device_name == "cuda" or device_name.startswith("cuda:") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """This process's device: on CUDA under a group, GPU ``LOCAL_RANK`` (the one :func:`init` chose)."""
    if active() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def check_batch_size(batch_size: int) -> int:
    """The per-process share of the global ``train.batch_size``; a :class:`ConfigError` when the
    processes cannot split it evenly."""
    world = world_size()
    if batch_size < 1 or batch_size % world:
        raise ConfigError(
            f"train.batch_size ({batch_size}) is the global batch and must be divisible by the number "
            f"of processes ({world}); each process takes batch_size / {world}"
        )
    return batch_size // world


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DDP over its trainable tensors only (the model itself without a group).

    Every frozen parameter and every buffer is on DDP's ignore list: DDP neither broadcasts
    them at construction nor all-reduces them (its reducer takes only tensors that require
    grad), and with no buffer left to sync its forward runs no collective.
    """
    if not active():
        return model
    if norms := trained_batch_norms(model):
        if device.type != "cuda":
            raise ConfigError(
                f"{len(norms)} trained BatchNorm layers ({norms[0]}, …) would each normalise one process's share "
                f"of the batch and keep their own statistics; across processes they run as SyncBatchNorm, which "
                f"needs CUDA: train this model in one process on the CPU")
        # batch statistics over the whole global batch, so every process keeps the same running statistics
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place below the root: same parameters
    ignored = [name for name, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad]
    ignored += [name for name, _ in model.named_buffers(remove_duplicate=False)]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def trained_batch_norms(model: torch.nn.Module) -> list[str]:
    """The BatchNorm layers of ``model`` that train (DVLTA-VQA's adapter and Temporal Context Module)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in m.parameters())]


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    return net.module if isinstance(net, DistributedDataParallel) else net


def sizes(count: int, device: torch.device) -> list[int]:
    """How many videos each process holds for this step (``[count]`` alone without a group)."""
    if not active():
        return [count]
    mine = torch.tensor([count], dtype=torch.int64, device=device)
    every = [torch.zeros_like(mine) for _ in range(world_size())]
    dist.all_gather(every, mine)
    return [int(t.item()) for t in every]


def gather_batch(pred: torch.Tensor, target: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch's model outputs (``[count]`` or ``[count, k]``, differentiable) and labels,
    in the one-process order.

    ``counts`` (from :func:`sizes`) may differ between processes (the last batch of an epoch,
    videos that failed to decode): each process pads its ``[count, k + 1]`` (outputs, label)
    rows to the largest count, all-gathers them, and keeps each process's real rows. Rank r's
    j-th row held position ``j·W + r`` of the global batch (``datasets.GlobalBatches``), so
    the rows are put back in that order (exactly the one-process batch when no video failed).
    """
    if not active():
        return pred, target
    columns = pred[:, None] if pred.ndim == 1 else pred.flatten(1)  # [count, k]; count may be 0
    rows = torch.cat([columns, target.to(pred).reshape(-1, 1)], dim=1)
    rows = torch.cat([rows, rows.new_zeros(max(counts) - rows.shape[0], rows.shape[1])])
    with warnings.catch_warnings():
        # Deprecated in favour of a private module (torch.distributed._functional_collectives)
        # that the torch versions pyproject.toml allows do not all have; same semantics.
        warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
        parts = torch.distributed.nn.functional.all_gather(rows)
    every = torch.cat([part[:n] for part, n in zip(parts, counts)])
    position = torch.cat([torch.arange(n) * len(counts) + r for r, n in enumerate(counts)])
    every = every[torch.argsort(position).to(every.device)]
    return every[:, :-1].reshape(-1, *pred.shape[1:]), every[:, -1].detach()


def sum_over_ranks(value: int) -> int:
    """``value`` summed over the processes (a count, e.g. of failed videos)."""
    if not active():
        return value
    out: list = [None] * world_size()
    dist.all_gather_object(out, value)
    return int(sum(out))


def gather_predictions(
    preds: np.ndarray, targets: np.ndarray, indices: np.ndarray, failed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Every process's share of an evaluation, put back in dataset order (by item index), and
    the failures summed: what one process scoring the whole set returns."""
    if not active():
        return preds, targets, failed
    out: list = [None] * world_size()
    dist.all_gather_object(out, (preds, targets, indices, failed))
    preds, targets, indices = (np.concatenate([part[i] for part in out]) for i in range(3))
    order = np.argsort(indices, kind="stable")
    return preds[order], targets[order], sum(part[3] for part in out)


def from_main(produce):
    """``produce()`` run by rank 0 alone and its (picklable) result handed to every process
    (e.g. a checkpoint: every process resumes from the same state, and the other nodes of a
    multi-node run need not see rank 0's disk)."""
    if not active():
        return produce()
    box = [produce() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_same_data(names: dict[str, list[str]]) -> None:
    """A :class:`DatasetError` unless every process kept the same videos in each set (a video
    missing on one node would otherwise give the processes different shards)."""
    if not active():
        return
    mine = {name: (len(paths), hashlib.sha256("\n".join(paths).encode()).hexdigest()) for name, paths in names.items()}
    out: list = [None] * world_size()
    dist.all_gather_object(out, mine)
    for r, theirs in enumerate(out):
        for name, (count, digest) in mine.items():
            if theirs[name][1] != digest:
                raise DatasetError(
                    f"processes {r} and {rank()} kept different videos of the {name} set ({theirs[name][0]} and "
                    f"{count} usable): every node must read the same videos (see skipped.json)"
                )
