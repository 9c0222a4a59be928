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

Rotation. The display matrix (phones' portrait video) is applied: frames come out
upright, and ``VideoInfo.width/height`` are the displayed size.

Memory. ``decode_candidates`` holds at most ``max_frames`` frames at the requested
size, whatever the length of the video; nothing else grows with length except the
frame table (16 bytes a frame).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..defaults import MAX_ANALYSIS_FRAMES
from ..errors import DecodeFailedError, TruncatedVideoError
from .container import INTERPOLATION, VIDEO_SUFFIXES, FrameReader, display_rotation, open_video, to_rgb
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
    has_b_frames: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FrameTable:
    """Display-order timestamps of every frame, and which are keyframes (seek points)."""

    pts: np.ndarray  # int64 [N], sorted
    keyframe_pts: np.ndarray  # int64 [K], sorted
    time_base: Fraction

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
    stream = container.streams.video[0]
    pts, keys = [], []
    demux_error = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
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
    return info, FrameTable(table_pts, key_pts, time_base)


def _configure_decoder(container: av.container.InputContainer, threads: int) -> av.video.stream.VideoStream:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threading
    stream.thread_count = threads  # 0: FFmpeg picks (one per core)
    return stream


def _open_scanned(path) -> tuple[av.container.InputContainer, VideoInfo, FrameTable]:
    """Open, scan the frame table, read the display rotation off the first frame; return a fresh container.

    The container is reopened after the scan rather than seeked back to the start, so
    the decode pass sees the file exactly as a plain sequential decode would.
    """
    where = str(path)
    container = open_video(path)
    try:
        info, table = _scan(container, where)
        container.seek(0, backward=True)  # in AV_TIME_BASE units: the start of the file
        first = next(FrameReader(container, container.streams.video[0]), None)
        if first is None:
            raise DecodeFailedError(f"{Path(path).name}: no frame could be decoded", path=where)
        rotation = display_rotation(first)
    except av.error.FFmpegError as exc:
        raise DecodeFailedError(f"{Path(path).name}: {exc}", path=where) from exc
    finally:
        container.close()
    if rotation in (90, 270):
        info = VideoInfo(**{**info.to_dict(), "width": info.height, "height": info.width, "rotation": rotation})
    elif rotation:
        info = VideoInfo(**{**info.to_dict(), "rotation": rotation})
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
        yield from _stream(container, table, size, info.rotation, wanted, threads, str(path))
    finally:
        container.close()


def _stream(container, table: FrameTable, size, rotation, wanted, threads, where) -> Iterator[tuple[int, np.ndarray]]:
    stream = _configure_decoder(container, threads)
    keep = None if wanted is None else np.zeros(len(table.pts), dtype=bool)
    if keep is not None:
        keep[np.asarray(wanted, dtype=np.int64)] = True

    def kept():
        for frame in FrameReader(container, stream):
            index = _frame_index(table, frame)
            if index is not None and (keep is None or keep[index]):
                yield index, frame

    yield from _convert_ahead(kept(), size, rotation)


def _convert_ahead(items, size, rotation, depth: int = 4) -> Iterator[tuple[int, np.ndarray]]:
    """Convert frames in a worker thread while the decoder runs ahead (swscale releases the GIL).

    At most ``depth`` frames are in flight; order is kept.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qclip-swscale") as pool:
        pending: deque = deque()
        for index, frame in items:
            pending.append((index, pool.submit(to_rgb, frame, size, rotation)))
            if len(pending) >= depth:
                i, converted = pending.popleft()
                yield i, converted.result()
        while pending:
            i, converted = pending.popleft()
            yield i, converted.result()


def _frame_index(table: FrameTable, frame: av.VideoFrame) -> int | None:
    stamp = frame.pts if frame.pts is not None else frame.dts
    if stamp is None:
        return None
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
        for index, rgb in _stream(container, table, size, info.rotation, wanted, threads, str(path)):
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
    try:
        if indices is None:
            frames = [rgb for _, rgb in _stream(container, table, size, info.rotation, None, threads, where)]
            if not frames:
                raise DecodeFailedError(f"{Path(path).name}: no frame could be decoded", path=where)
            return np.stack(frames)
        order = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64)
        if order.size == 0:
            raise ValueError("indices is empty")
        if order.min() < 0 or order.max() >= info.frame_count:
            raise IndexError(f"frame indices must lie in [0, {info.frame_count - 1}], got {order.min()}..{order.max()}")
        targets = np.unique(order)
        if seek:
            found = _seek_decode(container, table, targets, size, info.rotation, threads, where)
        else:
            found = dict(_stream(container, table, size, info.rotation, targets, threads, where))
    finally:
        container.close()
    missing = [int(i) for i in targets if i not in found]
    if missing:
        raise DecodeFailedError(f"{Path(path).name}: frames {missing[:10]} could not be decoded", path=where)
    return np.stack([found[int(i)] for i in order])


def _seek_decode(container, table: FrameTable, targets: np.ndarray, size, rotation, threads, where) -> dict[int, np.ndarray]:
    """Decode ``targets`` (sorted) by seeking to the keyframe before each one that lies ahead.

    A seek lands on a keyframe chosen by the demuxer (by dts for MP4), which for files
    with B-frames can be one frame late; then we step back one keyframe and retry.
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
                container.seek(seek_pts, stream=stream, backward=True)
                frames = FrameReader(container, stream)
                position = None
            hit = _decode_until(frames, table, target_pts, size, rotation)
            if hit is not None:
                position, rgb = hit
                if rgb is not None:
                    found[int(target)] = rgb
                    break
            else:
                frames, position = None, None  # ran off the end
        else:
            # Seeking is not reliable in this file: decode it in full for what is left.
            rest = targets[targets >= target]
            container.seek(int(keys[0]), stream=stream, backward=True)
            found.update(_stream(container, table, size, rotation, rest, threads, where))
            return found
    return found


def _decode_until(frames, table, target_pts, size, rotation):
    """Advance to ``target_pts``: ``(pts, rgb)`` on a hit, ``(pts, None)`` if we passed it, None at the end."""
    for frame in frames:
        stamp = frame.pts if frame.pts is not None else frame.dts
        if stamp is None:
            continue
        if stamp == target_pts:
            return stamp, to_rgb(frame, size, rotation)
        if stamp > target_pts:
            return stamp, None
    return None
