"""Labelled videos for training: label files, splits, and a dataset of sampled frames.

Label files come in two forms, told apart per line:

* the official Q-CLIP lines ``filename,duration,fps,label`` (4 columns, no header);
* CSV ``path,mos`` (2 columns; a ``path,mos`` header line is skipped).

``${DATA_ROOT}`` (and any other ``$VAR``) in paths expands from the configuration's
``data_root`` or the environment. A video that is missing or broken is counted and
listed, and training goes on without it (``strict=True`` makes it an error).
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from qclip_engine.defaults import PREPROCESSING, PREPROCESSINGS
from qclip_engine.errors import DecodeFailedError, VideoError
from qclip_engine.video import decode
from qclip_engine.video.resize import check_preprocessing_size, fragments_and_crop, packed_half
from qclip_engine.video.fragments import fragment_clip
from qclip_engine.video.frame_mse import frame_mse
from qclip_engine.video.sampling import check_sampler, frame_indices

from .errors import DatasetError

RANDOM_LAYOUTS = ("fragments", "fragments_and_crop")  # preprocessings whose training draws fragment layouts
LAYOUT_STREAM = 1  # the seed's fourth word for a training fragment layout (frame choice uses the first three)


@dataclass(frozen=True)
class LabelledVideo:
    path: str
    mos: float


def expand(text: str, data_root: str | None = None) -> str:
    """``${DATA_ROOT}`` → ``data_root`` (else the environment); other ``$VARS`` and ``~`` too."""
    if data_root is not None:
        text = re.sub(r"\$\{DATA_ROOT\}|\$DATA_ROOT\b", lambda _: str(data_root), text)
    if "DATA_ROOT" in text and "DATA_ROOT" not in os.environ:
        raise DatasetError(f"{text!r} uses ${{DATA_ROOT}}: set data.data_root in the config or the DATA_ROOT variable")
    return os.path.expanduser(os.path.expandvars(text))


def read_labels(label_file: str | Path, prefix: str = "", data_root: str | None = None) -> list[LabelledVideo]:
    """Records of a label file; paths are joined to ``prefix`` unless absolute."""
    label_path = Path(expand(str(label_file), data_root))
    base = expand(prefix, data_root) if prefix else ""
    records = []
    for line_no, line in enumerate(label_path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[1].lower() in ("mos", "label", "score") and not records:
            continue  # CSV header
        if len(fields) not in (2, 4):
            raise DatasetError(
                f"{label_path}:{line_no}: expected 'filename,duration,fps,label' or 'path,mos', got {len(fields)} fields"
            )
        try:
            mos = float(fields[-1])
        except ValueError:
            raise DatasetError(f"{label_path}:{line_no}: label {fields[-1]!r} is not a number") from None
        if not np.isfinite(mos):
            raise DatasetError(f"{label_path}:{line_no}: label {fields[-1]!r} is not finite")
        name = expand(fields[0], data_root)
        records.append(LabelledVideo(os.path.join(base, name) if base else name, mos))
    if not records:
        raise DatasetError(f"{label_path} holds no labelled videos")
    return records


def split_records(records: list[LabelledVideo], ratio: float, seed: int, role: str) -> list[LabelledVideo]:
    """The official split: shuffle with ``random.Random(seed)``, first ``int(n·ratio)`` are train."""
    if role not in ("train", "val", "test"):
        raise DatasetError(f"split role must be train, val or test, got {role!r}")
    if not 0 < ratio < 1:
        raise DatasetError(f"split ratio must lie in (0, 1), got {ratio}")
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    cut = int(len(shuffled) * ratio)
    return shuffled[:cut] if role == "train" else shuffled[cut:]


@dataclass
class Skipped:
    path: str
    code: str
    message: str


class VideoClips(torch.utils.data.Dataset):
    """Sampled uint8 frames ``[K, H, W, 3]`` and the MOS of each usable video.

    Every file is probed up front: unusable ones — a file cut short included, as its label
    is for the whole video — are listed in ``skipped`` and left out (or, with ``strict``, raise). Frame choice is seeded per (seed, epoch, item),
    so a run and its resumed twin see the same frames, as do a one-process run and a
    data-parallel one (whichever process or worker loads the item), and chosen as the engine chooses them
    (``sampling.frame_indices``): a motion-free sampler picks among all the video's frames and
    only its picks are decoded (by seeking); the others pick among the motion-analysis
    candidates. ``cache`` keeps in memory, after the first decode, each video's candidate
    frames and motion (samplers that need motion) or the frames decoded so far, at most
    ``max_analysis_frames`` of them (the others): small datasets.
    """

    def __init__(
        self,
        records: list[LabelledVideo],
        *,
        image_size: tuple[int, int],
        num_frames: int,
        sampler: str,
        training: bool,
        seed: int = 0,
        max_analysis_frames: int = decode.DEFAULT_MAX_ANALYSIS_FRAMES,
        strict: bool = False,
        cache: bool = False,
        desc: str = "checking videos",
        preprocessing: str = PREPROCESSING,
        progress: bool = True,
        fragment_aligned: int | None = None,
    ):
        if preprocessing not in PREPROCESSINGS:
            raise DatasetError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
        try:
            check_preprocessing_size(preprocessing, tuple(image_size))
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        self.preprocessing = preprocessing  # how frames reach model size: the model's (video/decode.py)
        # Training on fragments draws a random layout per run of this many frames (video/fragments.py);
        # evaluation takes the centred one, as the engine does.
        self.fragment_aligned = fragment_aligned
        self.image_size = tuple(image_size)
        self.num_frames = num_frames
        self.sampler = sampler
        self._sampler = check_sampler(sampler, num_frames)
        self.training = training
        self.seed = seed
        self.epoch = 0
        self.max_analysis_frames = max_analysis_frames
        self.cache = {} if cache else None
        self.trunk_cache = None  # a train/trunk_cache.py TrunkCache: items become trunk tokens where it holds them
        self.skipped: list[Skipped] = []
        self.records: list[LabelledVideo] = []
        self.frame_counts: list[int] = []  # per usable record: the N its frame indices range over
        for record in tqdm(records, desc=desc, unit="video", leave=False, disable=not progress):
            try:
                info = decode.probe(record.path)
                info.require_complete()
            except VideoError as exc:
                if strict:
                    raise
                self.skipped.append(Skipped(record.path, exc.code, exc.message))
                continue
            self.records.append(record)
            self.frame_counts.append(info.frame_count)
        if not self.records:
            raise DatasetError(f"no usable video among {len(records)} ({len(self.skipped)} skipped)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def _candidates(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices, frames and motion of the video's analysis candidates (samplers that need motion)."""
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        cands = decode.decode_candidates(self.records[index].path, self.image_size, max_frames=self.max_analysis_frames,
                                         preprocessing=self.preprocessing)
        entry = (cands.indices, cands.frames, frame_mse(cands.frames))
        if self.cache is not None:
            self.cache[index] = entry
        return entry

    def _picked(self, index: int, picked: np.ndarray) -> np.ndarray:
        """Frames ``picked`` of the video, decoded by seeking (motion-free samplers); with ``cache``,
        frames already decoded are reused and new ones kept while the video holds fewer than
        ``max_analysis_frames``."""
        path = self.records[index].path
        if self.training and self.preprocessing in RANDOM_LAYOUTS:  # native frames, a fresh layout each epoch (no cache)
            return self._random_fragments(index, picked)
        if self.cache is None:
            return decode.decode_frames(path, self.image_size, indices=picked, preprocessing=self.preprocessing)
        held = self.cache.setdefault(index, {})
        missing = np.unique([i for i in picked.tolist() if i not in held]).astype(np.int64)
        new = dict(zip(missing.tolist(), decode.decode_frames(path, self.image_size, indices=missing,
                                                              preprocessing=self.preprocessing))) if missing.size else {}
        frames = np.stack([held[i] if i in held else new[i] for i in picked.tolist()])
        for i, frame in new.items():
            if len(held) >= self.max_analysis_frames:
                break
            held[i] = frame.copy()  # not a view that would keep the whole decoded array alive
        return frames

    def _random_fragments(self, index: int, picked: np.ndarray) -> np.ndarray:
        """The fragments of frames ``picked`` with a layout drawn per run of ``fragment_aligned``
        frames (video/fragments.py), seeded per (seed, epoch, item). Each run is decoded at native
        size on its own, so at most one run's native frames are held at once."""
        path = self.records[index].path
        aligned = self.fragment_aligned or len(picked)
        rng = np.random.default_rng((self.seed, self.epoch, index, LAYOUT_STREAM))
        runs = []
        for start in range(0, len(picked), aligned):
            try:
                native = decode.decode_frames(path, None, indices=picked[start:start + aligned],
                                              preprocessing=self.preprocessing)
            except ValueError as exc:  # frames of one run, which share a layout, of different sizes
                raise DecodeFailedError(f"{Path(path).name}: the picture size changes within a run of {aligned} "
                                        f"frames that share one fragment layout ({exc})", path=str(path)) from None
            if self.preprocessing == "fragments":
                runs.append(fragment_clip(native, self.image_size, rng=rng, aligned=len(native)))
            else:  # fragments_and_crop: the drawn fragments on the left, each frame's crop on the right
                cut = fragment_clip(native, packed_half(self.image_size), rng=rng, aligned=len(native))
                runs.append(np.stack([fragments_and_crop(f, self.image_size, c) for f, c in zip(native, cut)]))
        return np.concatenate(runs)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        n, seed = self.frame_counts[index], (self.seed, self.epoch, index)
        extra = {}
        try:
            if self._sampler.needs_motion:
                cand, frames, motion = self._candidates(index)
                picked = frame_indices(n, self._sampler, self.num_frames, motion, candidates=cand, seed=seed,
                                       training=self.training)
                video = frames[np.searchsorted(cand, picked)]  # candidates are sorted and distinct
            else:
                picked = self.picked_indices(index)
                if self.trunk_cache is not None:
                    tokens, state = self.trunk_cache.read(record.path, picked)
                    if tokens is not None:
                        return {"tokens": tokens, "mos": record.mos, "index": index, "cache": state}
                    extra = {"picked": picked, "cache": "built" if state == "missing" else "rebuilt"}
                video = self._picked(index, picked)
        except VideoError as exc:  # passed the probe but failed to decode: skip, do not stop
            return {"error": Skipped(record.path, exc.code, exc.message), "index": index}
        return {"video": torch.from_numpy(np.ascontiguousarray(video)), "mos": record.mos, "index": index, **extra}

    def picked_indices(self, index: int) -> np.ndarray:
        """The frames a motion-free sampler picks for item ``index`` this epoch (no decoding)."""
        seed = (self.seed, self.epoch, index)
        return frame_indices(self.frame_counts[index], self._sampler, self.num_frames, seed=seed, training=self.training)


def collate(items: list[dict]) -> dict:
    """Stack the usable items; keep the failures so the loop can count them. With the trunk
    cache, the items read from it stack as ``tokens`` and the others as ``video``, each with its
    positions in the batch (``tokens_at`` / ``video_at``), so the batch keeps the loader's order."""
    good = [it for it in items if "error" not in it]
    batch = {"errors": [it["error"] for it in items if "error" in it]}
    if not good:
        return batch
    batch["mos"] = torch.tensor([it["mos"] for it in good], dtype=torch.float32)
    batch["index"] = torch.tensor([it["index"] for it in good])
    for kind in ("video", "tokens"):
        at = [i for i, it in enumerate(good) if kind in it]
        if at:
            batch[kind] = torch.stack([good[i][kind] for i in at])
            batch[f"{kind}_at"] = at
    if "cache" in good[0]:
        batch["cache"] = [it["cache"] for it in good]
        batch["picked"] = [good[i]["picked"] for i in batch.get("video_at", [])]
        batch["video_index"] = [good[i]["index"] for i in batch.get("video_at", [])]
    return batch
