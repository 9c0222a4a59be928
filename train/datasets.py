"""The datasets of a training run: records from the config's label files, the videos
checked up front (unusable ones listed in ``skipped.json``), and their loaders."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed
from .data import LabelledVideo, VideoClips, collate, read_labels, split_records

SKIPPED = "skipped.json"


@dataclass
class Datasets:
    train: VideoClips
    val: dict[str, VideoClips]  # in config order: the first one selects the best epoch

    @property
    def selection(self) -> str:
        return next(iter(self.val))


def labelled_records(spec: dict, data: dict, split_seed: int | None) -> list[LabelledVideo]:
    """The records of one ``data.train`` / ``data.val`` entry, split when it asks for it.

    ``split_seed`` (from ``--splits``) replaces the entry's own split seed.
    """
    records = read_labels(spec["labels"], spec.get("prefix", ""), data.get("data_root"))
    split = spec.get("split")
    if split:
        seed = split_seed if split_seed is not None else split.get("seed", 42)
        records = split_records(records, float(split.get("ratio", 0.8)), int(seed), split.get("role", "train"))
    return records


def build_datasets(config: dict, model: torch.nn.Module, *, split_seed: int | None = None, strict: bool = False) -> Datasets:
    """Training and validation sets sampled as ``model`` expects (size, frames, sampler)."""
    data = config["data"]
    common = dict(
        image_size=model.image_size,
        num_frames=model.config.num_frames,
        sampler=model.config.sampler,
        preprocessing=model.config.preprocessing,  # frames made as the artifact will be scored
        fragment_aligned=getattr(model.config, "aligned", None),  # fragments: frames sharing one training layout
        max_analysis_frames=data["max_analysis_frames"],
        strict=strict,
        cache=bool(data.get("cache")),
        seed=int(config["seed"]),
        progress=distributed.is_main(),
    )
    train = VideoClips(labelled_records(data["train"], data, split_seed), training=True, desc="train videos", **common)
    val = {
        name: VideoClips(labelled_records(spec, data, split_seed), training=False, desc=f"{name} videos", **common)
        for name, spec in data["val"].items()
    }
    distributed.check_same_data({name: [r.path for r in clips.records] for name, clips in ({"train": train} | val).items()})
    return Datasets(train, val)


def write_skipped(out: Path, datasets: Datasets) -> None:
    """``skipped.json`` (always written, empty lists included) and the first few on stderr."""
    sets = {"train": datasets.train} | datasets.val
    skipped = {name: [vars(s) for s in clips.skipped] for name, clips in sets.items()}
    total = sum(len(entries) for entries in skipped.values())
    if total:
        print(f"skipped {total} unusable video(s), listed in {out / SKIPPED}:", file=sys.stderr)
        for entries in skipped.values():
            for s in entries[:10]:
                print(f"  {s['code']}: {s['path']}", file=sys.stderr)
    (out / SKIPPED).write_text(json.dumps(skipped, indent=2) + "\n")


def loader(
    dataset, batch_size: int, shuffle_seed: int | None, num_workers: int, *, indices=None
) -> torch.utils.data.DataLoader:
    """Batches of ``dataset``; shuffled with ``shuffle_seed`` when given (reproducible epochs);
    ``indices`` (in order) instead of the whole set when given (a process's evaluation shard)."""
    generator = None
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None,
        sampler=indices,
        generator=generator,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=False,
    )


def eval_shard(n: int) -> range:
    """The items of an ``n``-video evaluation set this process scores: every ``world_size``-th,
    from its rank (all of them in a single process)."""
    return range(distributed.rank(), n, distributed.world_size())


class GlobalBatches(torch.utils.data.Sampler):
    """This process's share of each global batch of an epoch (every item in one process).

    The epoch's order is ``DistributedSampler``'s (a permutation seeded by ``seed + epoch``,
    :meth:`set_epoch`), the same whatever the number of processes W; global batch k is
    positions ``[kB, (k+1)B)`` of it and rank r holds the positions ≡ r (mod W) —
    ``DistributedSampler``'s stride — so the W shares of a step make up the one-process
    batch. ``DistributedSampler``'s padding (repeats that make the order a multiple of W) is
    left out, so that no video counts twice; every process yields ``ceil(n / B)`` batches, a
    process's share of the last one short or empty.
    """

    def __init__(self, dataset, batch_size: int, seed: int):
        world, rank = distributed.world_size(), distributed.rank()
        self.order = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        self.share = distributed.check_batch_size(batch_size)
        self.real = len(range(rank, len(dataset), world))  # this rank's positions before the padding
        self.steps = math.ceil(len(dataset) / batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        mine = list(self.order)[: self.real]
        for k in range(self.steps):
            yield mine[k * self.share : (k + 1) * self.share]


def train_loader(dataset, batch_size: int, seed: int, epoch: int, num_workers: int) -> torch.utils.data.DataLoader:
    """The epoch's training batches of this process (:class:`GlobalBatches`; ``batch_size`` is
    the global batch)."""
    batches = GlobalBatches(dataset, batch_size, seed)
    batches.set_epoch(epoch)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        generator=torch.Generator().manual_seed(seed + epoch),  # the workers' base seed, not torch's global RNG
        num_workers=num_workers,
        collate_fn=collate,
    )
