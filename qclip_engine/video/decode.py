"""CPU video decoding with PyAV: probe, streamed candidate frames, sparse decoding by seeking.

Frames come out as uint8 RGB ``[T, H, W, 3]``, with FFmpeg's threaded decoding, made model-size
by :func:`~qclip_engine.video.container.to_rgb` as ``preprocessing`` says
(``defaults.PREPROCESSINGS``): ``fast`` resizes with FFmpeg's swscale while converting from the
decoder's pixel format (one C call per frame, no Python pixel work); ``reference`` converts to
RGB at the native size, then resizes with PIL's bilinear filter, as the official Q-CLIP
transform does (measured effect: ``benchmarks/preprocess.py``); ``short_side_crop`` resizes the
short side that way and takes the centre crop (torchvision's Resize + CenterCrop), and
``mmcv_short_side_crop`` does so as the released CLIPVQA transform does (its rounding, bilinear
without antialiasing). Every function here takes
``preprocessing`` (default ``fast``); the engine, streams and training pass the model's.
Opening a file and reading its packets is :mod:`~qclip_engine.video.container`'s job.

Frame identity. Every decode starts from :func:`~qclip_engine.video.scan.scan`: frame ``i``
is the ``i``-th entry of the file's frame table, and decoded frames are matched to it by
their timestamp (or, for raw streams without timestamps, by count) — see ``video/scan.py``.
Candidate frames (the motion analysis of samplers that need motion,
``sampling.frame_indices``) are taken at a uniform stride of the table (uniform in frame
index, which for VFR is not uniform in time). Streams whose demuxer cannot seek are decoded start to end,
as ffmpeg reads them: sparse decoding falls back to a sequential pass.

Rotation. The whole display matrix (phones' portrait video, mirrored selfies) is applied as
ffmpeg's autorotate does: frames come out upright and unmirrored.

Memory. ``decode_candidates`` holds at most ``max_frames`` frames at the requested
size, whatever the length of the video; nothing else grows with length except the
frame table (16 bytes a frame).

Limits. Every function takes ``work`` (``video/limits.py``: the picture size, the frames a file
may declare or hold, the seconds an input may take, and a cancel event), default limits when
None; the scan and the decode of one input share it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from ..defaults import MAX_ANALYSIS_FRAMES, PREPROCESSING, PREPROCESSINGS
from ..errors import DecodeFailedError
from .container import (
    VIDEO_SUFFIXES,
    FrameReader,
    open_video,
    seekable,
    to_rgb,
    video_stream,
)
from .limits import DecodeLimits, Work
from .resize import INTERPOLATION
from .sampling import candidate_indices
from .scan import FrameTable, VideoInfo, open_scanned, probe, scan

__all__ = [
    "INTERPOLATION",
    "VIDEO_SUFFIXES",
    "DEFAULT_MAX_ANALYSIS_FRAMES",
    "VideoInfo",
    "FrameTable",
    "Candidates",
    "DecodeLimits",
    "Work",
    "open_video",
    "to_rgb",
    "probe",
    "scan",
    "iter_frames",
    "candidate_indices",
    "decode_candidates",
    "decode_frames",
]

DEFAULT_MAX_ANALYSIS_FRAMES = MAX_ANALYSIS_FRAMES
_SEEK_ATTEMPTS = 4


@dataclass
class Candidates:
    """The analysis frames of one video: at most ``max_frames``, uniform stride, in time order."""

    frames: np.ndarray  # uint8 [N, H, W, 3]
    indices: np.ndarray  # int64 [N]: frame-table index of each candidate
    times: np.ndarray  # float64 [N]: seconds from the first frame
    info: VideoInfo


def _configure_decoder(container: av.container.InputContainer, threads: int) -> av.video.stream.VideoStream:
    stream = video_stream(container)
    stream.thread_type = "AUTO"  # frame + slice threading
    stream.thread_count = threads  # 0: FFmpeg picks (one per core)
    return stream


# -- streamed decoding ----------------------------------------------------------------------
def iter_frames(
    path: str | Path,
    size: tuple[int, int] | None = None,
    *,
    wanted: np.ndarray | None = None,
    threads: int = 0,
    preprocessing: str = PREPROCESSING,
    work: Work | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode the whole file once, yielding ``(frame_index, rgb)`` for the ``wanted`` indices (all if None).

    Frames not wanted are decoded (the codec needs them) but never converted. Memory
    is one frame at a time.
    """
    work = _work(work, path)
    container, info, table = open_scanned(path, work)
    try:
        yield from _stream(container, table, size, _conversion(info, preprocessing), wanted, threads, str(path), work)
    finally:
        container.close()


def _work(work: Work | None, path) -> Work:
    return work if work is not None else Work(where=str(path))


def _conversion(info: VideoInfo, preprocessing: str) -> tuple[int, bool, str]:
    """``to_rgb``'s arguments after the size: (rotation, hflip, preprocessing)."""
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
    return info.rotation, info.hflip, preprocessing


def _stream(container, table: FrameTable, size, conv, wanted, threads, where,
            work: Work) -> Iterator[tuple[int, np.ndarray]]:
    """Decode from the container's current position (the start: callers hand a fresh container)."""
    stream = _configure_decoder(container, threads)
    keep = None if wanted is None else np.zeros(len(table.pts), dtype=bool)
    if keep is not None:
        keep[np.asarray(wanted, dtype=np.int64)] = True

    def kept():
        for n, frame in enumerate(FrameReader(container, stream, work=work)):
            index = _frame_index(table, frame, n)
            if index is not None and (keep is None or keep[index]):
                yield index, frame

    yield from _convert_ahead(kept(), size, conv)


def _convert_ahead(items, size, conv, depth: int = 4) -> Iterator[tuple[int, np.ndarray]]:
    """Convert frames in a worker thread while the decoder runs ahead (swscale and PIL's resize
    release the GIL).

    At most ``depth`` frames are in flight; order is kept.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qclip-swscale") as pool:
        pending: deque = deque()
        for index, frame in items:
            pending.append((index, pool.submit(to_rgb, frame, size, *conv)))
            if len(pending) >= depth:
                i, converted = pending.popleft()
                yield i, converted.result()
        while pending:
            i, converted = pending.popleft()
            yield i, converted.result()


def _frame_index(table: FrameTable, frame: av.VideoFrame, n: int) -> int | None:
    """The table index of ``frame``, the ``n``-th the decoder output: by timestamp, or by
    ``n`` where the file has none (the scan counted its packets the same way)."""
    stamp = frame.pts if frame.pts is not None else frame.dts
    if stamp is None:
        return n if table.counted and n < len(table.pts) else None
    i = int(np.searchsorted(table.pts, stamp))
    return i if i < len(table.pts) and table.pts[i] == stamp else None


def decode_candidates(
    path: str | Path,
    size: tuple[int, int],
    *,
    max_frames: int = DEFAULT_MAX_ANALYSIS_FRAMES,
    threads: int = 0,
    preprocessing: str = PREPROCESSING,
    work: Work | None = None,
) -> Candidates:
    """The analysis frames of a video in one streamed pass, at ``size`` (H, W), made by
    ``preprocessing`` (``to_rgb``). The model's frames are picked from these, so the engine and
    training decode them with the model's preprocessing (motion then sees the same pixels).

    Memory is bounded by ``max_frames × H × W × 3`` bytes whatever the video's length.
    """
    work = _work(work, path)
    container, info, table = open_scanned(path, work)
    try:
        wanted = candidate_indices(info.frame_count, max_frames)
        slot = np.full(info.frame_count, -1, dtype=np.int64)
        slot[wanted] = np.arange(len(wanted))
        frames = np.empty((len(wanted), *size, 3), dtype=np.uint8)
        got = np.zeros(len(wanted), dtype=bool)
        for index, rgb in _stream(container, table, size, _conversion(info, preprocessing), wanted, threads, str(path),
                                  work):
            frames[slot[index]] = rgb
            got[slot[index]] = True
    finally:
        container.close()
    if not got.any():
        raise DecodeFailedError(f"{Path(path).name}: no frame could be decoded", path=str(path))
    # Frames the decoder could not produce (corrupt packets) are left out, not invented.
    indices = wanted[got]
    return Candidates(frames=frames[got], indices=indices, times=table.times(indices), info=info)


# -- sparse decoding ------------------------------------------------------------------------
def decode_frames(
    path: str | Path,
    size: tuple[int, int] | None = None,
    indices: Iterable[int] | np.ndarray | None = None,
    *,
    seek: bool = True,
    threads: int = 0,
    preprocessing: str = PREPROCESSING,
    work: Work | None = None,
) -> np.ndarray:
    """Frames of a video as uint8 RGB ``[T, H, W, 3]``, resized to ``size`` (H, W) if given.

    ``indices=None`` decodes every frame (memory grows with length: for analysis of
    long videos use ``decode_candidates``). With ``indices`` (any order, repeats
    allowed) the result follows that order; ``seek=True`` jumps to the keyframe before
    each wanted frame instead of decoding everything in between, with pixels equal to
    a full decode's. ``preprocessing``: how a decoded frame reaches ``size`` (``to_rgb``).
    """
    work = _work(work, path)
    container, info, table = open_scanned(path, work)
    where = str(path)
    try:
        conv = _conversion(info, preprocessing)
        if indices is None:
            frames = [rgb for _, rgb in _stream(container, table, size, conv, None, threads, where, work)]
            if not frames:
                raise DecodeFailedError(f"{Path(path).name}: no frame could be decoded", path=where)
            return np.stack(frames)
        order = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        if order.size == 0:
            raise ValueError("indices is empty")
        if order.min() < 0 or order.max() >= info.frame_count:
            raise IndexError(f"frame indices must lie in [0, {info.frame_count - 1}], got {order.min()}..{order.max()}")
        targets = np.unique(order)
        found = None
        if seek and seekable(container) and not table.counted:
            try:
                found = _seek_decode(container, table, targets, size, conv, threads, work)
            except _NotSeekable:  # the demuxer refused to seek, or seeks miss: read it start to end, as ffmpeg does
                container.close()
                container = open_video(path, work=work)
                work.new_pass()
        if found is None:
            found = dict(_stream(container, table, size, conv, targets, threads, where, work))
    finally:
        container.close()
    missing = [int(i) for i in targets if i not in found]
    if missing:
        raise DecodeFailedError(f"{Path(path).name}: frames {missing[:10]} could not be decoded", path=where)
    return np.stack([found[int(i)] for i in order])


class _NotSeekable(Exception):
    """The demuxer refused a seek (raw streams: EPERM) or seeks keep missing; the caller decodes sequentially."""


def _seek(container, pts: int, stream) -> None:
    try:
        container.seek(pts, stream=stream, backward=True)
    except av.error.FFmpegError as exc:
        raise _NotSeekable(str(exc)) from exc


def _seek_decode(container, table: FrameTable, targets: np.ndarray, size, conv, threads,
                 work: Work) -> dict[int, np.ndarray]:
    """Decode ``targets`` (sorted) by seeking to the keyframe before each one that lies ahead.

    A seek lands on a keyframe chosen by the demuxer (by dts for MP4), which for files
    with B-frames can be one frame late; then we step back one keyframe and retry.
    Raises ``_NotSeekable`` when the demuxer cannot seek.
    """
    stream = _configure_decoder(container, threads)
    found: dict[int, np.ndarray] = {}
    frames: Iterator[av.VideoFrame] | None = None
    position = None  # pts of the last frame decoded
    keys = table.keyframe_pts
    for target in targets:
        target_pts = int(table.pts[target])
        k = max(int(np.searchsorted(keys, target_pts, side="right")) - 1, 0)
        for attempt in range(_SEEK_ATTEMPTS):
            seek_pts = int(keys[max(k - attempt, 0)])
            must_seek = frames is None or position is None or position >= target_pts or seek_pts > position
            if must_seek or attempt:
                _seek(container, seek_pts, stream)
                work.new_pass()  # a seek starts a new read: the frame limit counts per pass
                frames = FrameReader(container, stream, work=work)
                position = None
            hit = _decode_until(frames, table, target_pts, size, conv)
            if hit is not None:
                position, rgb = hit
                if rgb is not None:
                    found[int(target)] = rgb
                    break
            else:
                frames, position = None, None  # ran off the end
        else:
            # Seeking is not reliable in this file: the caller decodes it start to end (on a
            # reopened file: this decoder is open and cannot be reconfigured for threads).
            raise _NotSeekable(f"no frame at pts {target_pts} after {_SEEK_ATTEMPTS} seeks")
    return found


def _decode_until(frames, table, target_pts, size, conv):
    """Advance to ``target_pts``: ``(pts, rgb)`` on a hit, ``(pts, None)`` if we passed it, None at the end."""
    for frame in frames:
        stamp = frame.pts if frame.pts is not None else frame.dts
        if stamp is None:
            continue
        if stamp == target_pts:
            return stamp, to_rgb(frame, size, *conv)
        if stamp > target_pts:
            return stamp, None
    return None
