"""CPU video decoding with PyAV: probe, streamed candidate frames, sparse decoding by seeking.

Frames come out as uint8 RGB ``[T, H, W, 3]``, resized by FFmpeg's swscale while they
are converted from the decoder's pixel format (one C call per frame, no Python pixel
work, :func:`~qclip_engine.video.container.to_rgb`), with FFmpeg's threaded decoding.
Opening a file and reading its packets is :mod:`~qclip_engine.video.container`'s job.

Frame identity. A file is first *scanned*: its video packets are demuxed (no
decoding) into a frame table of presentation timestamps in display order. Frame ``i``
is the ``i``-th entry of that table, and decoded frames are matched to it by their
timestamp, never by counting — so a B-frame reorder, a dropped corrupt packet or a
variable frame rate (VFR) cannot shift indices. VFR files are handled by timestamp: a
frame's time is its own pts, not ``i / fps``; candidate frames are taken at a uniform
stride of the table (uniform in frame index, which for VFR is not uniform in time);
``VideoInfo.vfr`` flags such files.

Frames without timestamps (raw elementary streams: ``.h264``, ``.hevc``) are counted
instead: the scan numbers the packets, the decoder's output is numbered in the same way.
Such streams (and any whose demuxer cannot seek) are decoded start to end, as ffmpeg reads
them: the file is reopened rather than seeked back, and sparse decoding falls back to a
sequential pass.

Rotation. The whole display matrix (phones' portrait video, mirrored selfies) is applied as
ffmpeg's autorotate does: frames come out upright, ``VideoInfo.width/height`` are the
displayed size, ``VideoInfo.rotation``/``hflip`` say what was applied.

Memory. ``decode_candidates`` holds at most ``max_frames`` frames at the requested
size, whatever the length of the video; nothing else grows with length except the
frame table (16 bytes a frame).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import KW_ONLY, asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..defaults import MAX_ANALYSIS_FRAMES
from ..errors import DecodeFailedError, TruncatedVideoError
from .container import (
    INTERPOLATION,
    VIDEO_SUFFIXES,
    FrameReader,
    display_orientation,
    open_video,
    seekable,
    to_rgb,
    video_stream,
)
from .sampling import candidate_indices

__all__ = [
    "INTERPOLATION",
    "VIDEO_SUFFIXES",
    "DEFAULT_MAX_ANALYSIS_FRAMES",
    "VideoInfo",
    "FrameTable",
    "Candidates",
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


@dataclass(frozen=True)
class VideoInfo:
    path: str
    container: str
    codec: str
    width: int  # displayed size, rotation applied
    height: int
    fps: float  # average: frames / duration
    frame_count: int
    duration: float  # seconds from the first frame's start to the last frame's end
    vfr: bool
    rotation: int  # degrees counter-clockwise applied for display: 0, 90, 180 or 270
    _: KW_ONLY  # hflip has a default (older records, callers) yet stays next to rotation
    hflip: bool = False  # mirrored left-right (before the rotation) by the display matrix
    has_b_frames: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FrameTable:
    """Display-order timestamps of every frame, and which are keyframes (seek points)."""

    pts: np.ndarray  # int64 [N], sorted
    keyframe_pts: np.ndarray  # int64 [K], sorted
    time_base: Fraction
    counted: bool = False  # no timestamps in the file: pts are frame numbers (decode order = display order)

    def times(self, indices: Iterable[int] | np.ndarray | None = None) -> np.ndarray:
        pts = self.pts if indices is None else self.pts[np.asarray(indices, dtype=np.int64)]
        return (pts - self.pts[0]).astype(np.float64) * float(self.time_base)


@dataclass
class Candidates:
    """The analysis frames of one video: at most ``max_frames``, uniform stride, in time order."""

    frames: np.ndarray  # uint8 [N, H, W, 3]
    indices: np.ndarray  # int64 [N]: frame-table index of each candidate
    times: np.ndarray  # float64 [N]: seconds from the first frame
    info: VideoInfo


# -- scanning -----------------------------------------------------------------------------
def _scan(container: av.container.InputContainer, where: str) -> tuple[VideoInfo, FrameTable]:
    stream = video_stream(container)
    pts, keys = [], []
    demux_error = None
    stamped = False
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            stamped = stamped or stamp is not None
            if stamp is None:
                stamp = pts[-1] + 1 if pts else 0
            pts.append(stamp)
            if packet.is_keyframe:
                keys.append(stamp)
    except av.error.FFmpegError as exc:
        demux_error = exc
    name = Path(where).name
    announced = stream.frames or 0
    if not pts:
        raise DecodeFailedError(f"{name}: no video packets could be read ({demux_error or 'empty stream'})", path=where)
    if demux_error is not None or (announced and len(pts) < announced):
        raise TruncatedVideoError(
            f"{name}: the file ends after {len(pts)} of {announced or 'its'} frames"
            + (f" ({demux_error})" if demux_error else ""),
            path=where,
        )
    table_pts = np.unique(np.asarray(pts, dtype=np.int64))  # display order
    key_pts = np.unique(np.asarray(keys or pts[:1], dtype=np.int64))
    time_base = stream.time_base or Fraction(1, 90000)
    counted = not stamped
    if counted:  # frame numbers: one tick a frame at the stream's rate
        rate = stream.average_rate or stream.guessed_rate or 25
        time_base = Fraction(1) / Fraction(rate)
    deltas = np.diff(table_pts)
    if deltas.size:
        frame_step = float(np.median(deltas))
        vfr = bool(np.any(np.abs(deltas - frame_step) > max(1.0, 0.01 * frame_step)))
    else:
        frame_step = 1.0 / float(stream.average_rate or 25) / float(time_base)
        vfr = False
    duration = float((table_pts[-1] - table_pts[0] + frame_step) * time_base)
    ctx = stream.codec_context
    width, height = ctx.width, ctx.height
    info = VideoInfo(
        path=where,
        container=container.format.name,
        codec=ctx.name,
        width=width,
        height=height,
        fps=len(table_pts) / duration if duration > 0 else float(stream.average_rate or 0),
        frame_count=len(table_pts),
        duration=duration,
        vfr=vfr,
        rotation=0,
        has_b_frames=bool(ctx.has_b_frames),
    )
    return info, FrameTable(table_pts, key_pts, time_base, counted)


def _configure_decoder(container: av.container.InputContainer, threads: int) -> av.video.stream.VideoStream:
    stream = video_stream(container)
    stream.thread_type = "AUTO"  # frame + slice threading
    stream.thread_count = threads  # 0: FFmpeg picks (one per core)
    return stream


def _open_scanned(path) -> tuple[av.container.InputContainer, VideoInfo, FrameTable]:
    """Open, scan the frame table, read the display matrix off the first frame; return a fresh container.

    The file is reopened after the scan (and again for the decode) rather than seeked
    back to the start: raw elementary streams cannot seek, and the decode pass sees the
    file exactly as a plain sequential decode would.
    """
    where = str(path)
    container = open_video(path)
    try:
        info, table = _scan(container, where)
        container.close()
        container = open_video(path)
        first = next(FrameReader(container, video_stream(container)), None)
        if first is None:
            raise DecodeFailedError(f"{Path(path).name}: no frame could be decoded", path=where)
        rotation, hflip = display_orientation(first)
    except av.error.FFmpegError as exc:
        raise DecodeFailedError(f"{Path(path).name}: {exc}", path=where) from exc
    finally:
        container.close()
    if rotation in (90, 270):
        info = VideoInfo(**{**info.to_dict(), "width": info.height, "height": info.width, "rotation": rotation})
    elif rotation:
        info = VideoInfo(**{**info.to_dict(), "rotation": rotation})
    if hflip:
        info = VideoInfo(**{**info.to_dict(), "hflip": True})
    return open_video(path), info, table


def probe(path: str | Path) -> VideoInfo:
    """Codec, displayed size, fps, frame count, duration, VFR flag and rotation of a video file.

    Reads the packets once (no decoding beyond the first frame). Raises a ``VideoError``
    subclass with the error code for unusable files.
    """
    container, info, _ = _open_scanned(path)
    container.close()
    return info


def scan(path: str | Path) -> tuple[VideoInfo, FrameTable]:
    """``probe`` plus the frame table (every frame's timestamp), from the same single read."""
    container, info, table = _open_scanned(path)
    container.close()
    return info, table


# -- streamed decoding ----------------------------------------------------------------------
def iter_frames(
    path: str | Path,
    size: tuple[int, int] | None = None,
    *,
    wanted: np.ndarray | None = None,
    threads: int = 0,
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode the whole file once, yielding ``(frame_index, rgb)`` for the ``wanted`` indices (all if None).

    Frames not wanted are decoded (the codec needs them) but never converted. Memory
    is one frame at a time.
    """
    container, info, table = _open_scanned(path)
    try:
        yield from _stream(container, table, size, _orient(info), wanted, threads, str(path))
    finally:
        container.close()


def _orient(info: VideoInfo) -> tuple[int, bool]:
    """What ``to_rgb`` applies after its resize: (rotation, hflip)."""
    return info.rotation, info.hflip


def _stream(container, table: FrameTable, size, orient, wanted, threads, where) -> Iterator[tuple[int, np.ndarray]]:
    """Decode from the container's current position (the start: callers hand a fresh container)."""
    stream = _configure_decoder(container, threads)
    keep = None if wanted is None else np.zeros(len(table.pts), dtype=bool)
    if keep is not None:
        keep[np.asarray(wanted, dtype=np.int64)] = True

    def kept():
        for n, frame in enumerate(FrameReader(container, stream)):
            index = _frame_index(table, frame, n)
            if index is not None and (keep is None or keep[index]):
                yield index, frame

    yield from _convert_ahead(kept(), size, orient)


def _convert_ahead(items, size, orient, depth: int = 4) -> Iterator[tuple[int, np.ndarray]]:
    """Convert frames in a worker thread while the decoder runs ahead (swscale releases the GIL).

    At most ``depth`` frames are in flight; order is kept.
    """
    rotation, hflip = orient
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qclip-swscale") as pool:
        pending: deque = deque()
        for index, frame in items:
            pending.append((index, pool.submit(to_rgb, frame, size, rotation, hflip)))
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
) -> Candidates:
    """The analysis frames of a video in one streamed pass, at ``size`` (H, W).

    Memory is bounded by ``max_frames × H × W × 3`` bytes whatever the video's length.
    """
    container, info, table = _open_scanned(path)
    try:
        wanted = candidate_indices(info.frame_count, max_frames)
        slot = np.full(info.frame_count, -1, dtype=np.int64)
        slot[wanted] = np.arange(len(wanted))
        frames = np.empty((len(wanted), *size, 3), dtype=np.uint8)
        got = np.zeros(len(wanted), dtype=bool)
        for index, rgb in _stream(container, table, size, _orient(info), wanted, threads, str(path)):
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
) -> np.ndarray:
    """Frames of a video as uint8 RGB ``[T, H, W, 3]``, resized to ``size`` (H, W) if given.

    ``indices=None`` decodes every frame (memory grows with length: for analysis of
    long videos use ``decode_candidates``). With ``indices`` (any order, repeats
    allowed) the result follows that order; ``seek=True`` jumps to the keyframe before
    each wanted frame instead of decoding everything in between, with pixels equal to
    a full decode's.
    """
    container, info, table = _open_scanned(path)
    where = str(path)
    orient = _orient(info)
    try:
        if indices is None:
            frames = [rgb for _, rgb in _stream(container, table, size, orient, None, threads, where)]
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
                found = _seek_decode(container, table, targets, size, orient, threads, where)
            except _NotSeekable:  # the demuxer refused to seek, or seeks miss: read it start to end, as ffmpeg does
                container.close()
                container = open_video(path)
        if found is None:
            found = dict(_stream(container, table, size, orient, targets, threads, where))
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


def _seek_decode(container, table: FrameTable, targets: np.ndarray, size, orient, threads, where) -> dict[int, np.ndarray]:
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
                frames = FrameReader(container, stream)
                position = None
            hit = _decode_until(frames, table, target_pts, size, orient)
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


def _decode_until(frames, table, target_pts, size, orient):
    """Advance to ``target_pts``: ``(pts, rgb)`` on a hit, ``(pts, None)`` if we passed it, None at the end."""
    for frame in frames:
        stamp = frame.pts if frame.pts is not None else frame.dts
        if stamp is None:
            continue
        if stamp == target_pts:
            return stamp, to_rgb(frame, size, *orient)
        if stamp > target_pts:
            return stamp, None
    return None
