"""The frozen-trunk cache (``train.cache_trunk: DIR``): the visual tower's tokens entering the
first adapted block, computed once per video and read back instead of decoding and running
the trunk again.

Adapters act only after the last K blocks (``QCLIP.trunk_depth`` = L − K blocks come before
them) and the backbone is frozen, so with a sampler that picks the same frames every epoch
the tokens ``QCLIP.encode_trunk`` makes depend on the video alone; training from them
(``QCLIP.forward(trunk_tokens=…)``) runs exactly the rest of ``encode_frames``. Samplers whose
training picks change between epochs (``Sampler.draws``: ``mixed``, ``random``,
``uniform_random_start``) are refused, and so are those that must decode a video to choose
its frames (``needs_motion``): the cache would save nothing for them.

Layout: ``DIR/<key>/<2 hex>/<sha256 of the video's path>.safetensors``, one file per video
(sharded over 256 folders), the tokens ``[F, T, W]`` in ``train.cache_trunk_dtype`` (float16 by
default; float32 keeps them bit-exact) with their video's size, modification time and frame
indices as metadata. ``key`` hashes what the tokens depend on besides the video: the
backbone's weights (``artifact.backbone_fingerprint``), its name, RoPE order, image size,
preprocessing, trunk depth, the dtype, and how they were computed (``train.precision``, the
device type, the torch / timm / open_clip versions), so another setting gets its own folder. An entry
whose video changed, whose frame indices differ or which cannot be read is *stale*: it is
rebuilt when its video next comes by. Entries are built lazily during the first epoch (each
batch's missing videos are decoded, run through the trunk once, written, and used), written
atomically, each by the one process that trains on that video.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import open_clip
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qclip_engine import QCLIP
from qclip_engine.artifact import backbone_fingerprint
from qclip_engine.video.sampling import check_sampler

from . import distributed
from .errors import ConfigError

FORMAT = 1
DTYPES = {"float16": torch.float16, "float32": torch.float32}
STATES = ("hit", "built", "rebuilt")  # what each video of an epoch found: read, made new, made again


def check_sampler_cacheable(name: str) -> None:
    """ConfigError unless sampler ``name`` gives a video the same frames every epoch without decoding it."""
    sampler = check_sampler(name)
    if sampler.draws or sampler.needs_motion:
        why = "draws new frames every epoch" if sampler.draws else "decodes every video to choose its frames"
        raise ConfigError(
            f"train.cache_trunk needs a sampler that picks the same frames every epoch without decoding: "
            f"'uniform' (the official setting); model.sampler {name!r} {why}"
        )


def trunk_shape(model: QCLIP) -> tuple[int, int]:
    """(tokens, width) of one frame's trunk output (any device, ``meta`` included)."""
    tower = model.visual_tower
    device = next(model.parameters()).device
    x, _ = tower.embed(torch.zeros((1, 3, *model.image_size), device=device))
    tokens = x.shape[1] if getattr(tower, "batch_first", True) else x.shape[0]
    return int(tokens), int(tower.width)


def bytes_per_video(model: QCLIP, dtype: str = "float16") -> int:
    """Disk one video's entry takes: frames × tokens × width × bytes per element (+ a small header)."""
    return model.config.num_frames * math.prod(trunk_shape(model)) * DTYPES[dtype].itemsize


def _video_identity(path: str) -> dict[str, str]:
    resolved = os.path.realpath(path)
    st = os.stat(resolved)
    return {"video": resolved, "size": str(st.st_size), "mtime_ns": str(st.st_mtime_ns)}


class TrunkCache:
    """One cache folder for one model setting (see the module docstring)."""

    def __init__(self, directory: str | Path, model: QCLIP, dtype: str = "float16", precision: str = "fp32"):
        if dtype not in DTYPES:
            raise ConfigError(f"train.cache_trunk_dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        check_sampler_cacheable(model.config.sampler)
        self.dtype_name, self.dtype = dtype, DTYPES[dtype]
        self.tokens, self.width = trunk_shape(model)
        self.num_frames = model.config.num_frames
        self.bytes_per_video = bytes_per_video(model, dtype)
        identity = {
            "format": FORMAT,
            "backbone": model.config.backbone,
            "fingerprint": backbone_fingerprint(model),
            "rope": model.config.rope,
            "image_size": list(model.image_size),
            "preprocessing": model.config.preprocessing,
            "trunk_depth": model.trunk_depth,
            "dtype": dtype,
            # how the tokens are computed: a bf16 run's entries are not an fp32 run's
            "precision": precision,
            "device": next(model.parameters()).device.type,
            "versions": [torch.__version__, timm.__version__, open_clip.__version__],
        }
        self.key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        self.identity = identity
        self.root = Path(directory).expanduser() / self.key[:16]
        self.counts: Counter = Counter()

    def entry_path(self, video: str) -> Path:
        digest = hashlib.sha256(os.path.realpath(video).encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.safetensors"

    def _expected(self, video: str, picked: np.ndarray) -> dict[str, str]:
        return _video_identity(video) | {"key": self.key, "frames": ",".join(str(int(i)) for i in picked)}

    def read(self, video: str, picked: np.ndarray, *, load: bool = True) -> tuple[torch.Tensor | None, str]:
        """The video's tokens ``[F, T, W]`` and ``"hit"``; or None and ``"missing"`` / ``"stale"``
        (another video at that path, other frames, another setting, an unreadable file).
        ``load=False`` checks the entry without reading its tokens (None on a hit too)."""
        path = self.entry_path(video)
        if not path.is_file():
            return None, "missing"
        try:
            with safe_open(str(path), framework="pt") as f:
                shape = tuple(f.get_slice("tokens").get_shape())
                if f.metadata() != self._expected(video, picked) or shape != (len(picked), self.tokens, self.width):
                    return None, "stale"
                tokens = f.get_tensor("tokens") if load else None
        except Exception:  # a truncated or foreign file: safetensors raises its own types
            return None, "stale"
        if tokens is not None and tokens.dtype != self.dtype:
            return None, "stale"
        return tokens, "hit"

    def write(self, video: str, picked: np.ndarray, tokens: torch.Tensor) -> None:
        """Store one video's tokens (atomically: a reader sees the old entry or the new one)."""
        path = self.entry_path(video)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            save_file({"tokens": tokens.detach().to("cpu", self.dtype).contiguous()}, tmp, metadata=self._expected(video, picked))
            os.replace(tmp, path)
        except OSError as exc:  # a full or read-only disk mid-run: stop with a code, leave no partial file
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise ConfigError(f"train.cache_trunk could not write {path}: {exc}") from exc

    def plan(self, datasets: dict) -> dict:
        """What the run will find and need: entries present / to build per set, the disk the
        missing ones take, the free disk. ConfigError when they do not fit or the folder cannot be made."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"train.cache_trunk: cannot use {self.root}: {exc}") from exc
        states: Counter = Counter()
        for clips in datasets.values():
            for index, record in enumerate(clips.records):
                states[self.read(record.path, clips.picked_indices(index), load=False)[1]] += 1
        to_build = states["missing"] + states["stale"]
        need, free = to_build * self.bytes_per_video, shutil.disk_usage(self.root).free
        plan = {"dir": str(self.root), "videos": sum(states.values()), "present": states["hit"], "missing": states["missing"],
                "stale": states["stale"], "bytes_per_video": self.bytes_per_video, "bytes_to_write": need, "bytes_free": free}
        if need > free:
            raise ConfigError(f"train.cache_trunk needs {need / 1e9:.2f} GB more in {self.root}, which has {free / 1e9:.2f} GB free")
        return plan


def describe(plan: dict, cache: TrunkCache) -> str:
    mb = plan["bytes_per_video"] / 1e6
    return (
        f"trunk cache {plan['dir']}: {plan['videos']} videos × {cache.num_frames} frames × {cache.tokens} tokens × "
        f"{cache.width} × {cache.dtype.itemsize} B = {mb:.2f} MB per video; {plan['present']} present, "
        f"{plan['missing']} to build, {plan['stale']} stale to rebuild; {plan['bytes_to_write'] / 1e9:.2f} GB to write, "
        f"{plan['bytes_free'] / 1e9:.1f} GB free"
    )


def open_cache(tcfg: dict, model: QCLIP) -> TrunkCache | None:
    """The run's cache (``train.cache_trunk``, ``train.cache_trunk_dtype``), or None without one;
    ConfigError for a sampler it cannot serve, before any video is read."""
    directory = tcfg.get("cache_trunk")
    if not directory:
        return None
    if not isinstance(model, QCLIP):  # the split at the first adapted block is Q-CLIP's: a frozen trunk
        raise ConfigError(f"train.cache_trunk serves qclip models (a frozen trunk before the adapters); "
                          f"a {type(model).__name__} has no such split")
    return TrunkCache(directory, model, str(tcfg.get("cache_trunk_dtype", "float16")), str(tcfg.get("precision", "fp32")))


def attach(cache: TrunkCache | None, datasets: dict) -> dict | None:
    """Plan the cache over ``datasets`` (name → ``VideoClips``), say on rank 0 what it holds and
    needs, and give it to every dataset; returns the plan (None without a cache)."""
    if cache is None:
        return None
    plan = cache.plan(datasets)
    if distributed.is_main():
        print(describe(plan, cache), file=sys.stderr)
    for clips in datasets.values():
        clips.trunk_cache = cache
    return plan


def batch_inputs(model: QCLIP, batch: dict, dataset, device: torch.device) -> dict[str, torch.Tensor] | None:
    """The model's keyword inputs for a batch of ``dataset``: normalised ``video``, or with the
    trunk cache the ``trunk_tokens`` of every item in batch order — read from the cache, or
    computed for the batch's missing videos (without gradient, in the caller's autocast),
    written, and rounded to the cache's dtype as a later read will give them. None when the
    batch holds no usable video."""
    cache = getattr(dataset, "trunk_cache", None)
    if cache is None:
        return {"video": model.normalize(batch["video"].to(device))} if "video" in batch else None
    if "mos" not in batch:
        return None
    parts: dict[int, torch.Tensor] = {}
    if "tokens" in batch:
        parts |= dict(zip(batch["tokens_at"], batch["tokens"].to(device)))
    if "video" in batch:
        with torch.no_grad():
            video = model.normalize(batch["video"].to(device))
            made = model.encode_trunk(video.flatten(0, 1)).to(cache.dtype)
        made = made.view(*video.shape[:2], *made.shape[1:])
        for at, index, picked, tokens in zip(batch["video_at"], batch["video_index"], batch["picked"], made):
            cache.write(dataset.records[index].path, picked, tokens)
            parts[at] = tokens
    cache.counts.update(batch["cache"])
    tokens = torch.stack([parts[at] for at in range(len(parts))])
    return {"trunk_tokens": tokens.to(model.level_weights.dtype)}


def epoch_counts(cache: TrunkCache | None) -> dict[str, int] | None:
    """The videos that hit, were built or were rebuilt, over every process since the last call
    (then reset); None without a cache."""
    if cache is None:
        return None
    counts = {state: distributed.sum_over_ranks(cache.counts[state]) for state in STATES}
    cache.counts.clear()
    return counts
