"""Scanning a video: its frame table (frame identity) and its ``VideoInfo``, before any decode.

Frame identity. A file's video packets are demuxed (no decoding) into a frame table of
presentation timestamps in display order. Frame ``i`` is the ``i``-th entry of that table,
and decoded frames are matched to it by their timestamp, never by counting — so a B-frame
reorder, a dropped corrupt packet or a variable frame rate (VFR) cannot shift indices. A
frame's time is its own pts, not ``i / fps``; ``VideoInfo.vfr`` flags VFR files.

Frames without timestamps (raw elementary streams: ``.h264``, ``.hevc``) are counted
instead: the scan numbers the packets, the decoder's output is numbered the same way
(``FrameTable.counted``). The file is reopened after the scan rather than seeked back: such
streams cannot seek.

The display matrix is read off the first decoded frame, decoded during the same pass:
``VideoInfo.width/height`` are the displayed size, ``rotation``/``hflip`` say what decoding
applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import KW_ONLY, asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import DecodeFailedError, TruncatedVideoError
from .container import display_orientation, open_video, video_stream

__all__ = ["VideoInfo", "FrameTable", "open_scanned", "probe", "scan"]


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


def _scan(container: av.container.InputContainer, where: str) -> tuple[VideoInfo, FrameTable]:
    """One pass over the packets: the frame table, and the first decodable frame's display
    matrix (decoded on the way, so the file need not be opened again for it)."""
    stream = video_stream(container)
    pts, keys = [], []
    demux_error = None
    stamped = False
    orientation = None
    try:
        for packet in container.demux(stream):
            if orientation is None:
                orientation = _first_orientation(packet)
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
    if orientation is None:
        raise DecodeFailedError(f"{name}: no frame could be decoded", path=where)
    rotation, hflip = orientation
    turned = {"width": height, "height": width} if rotation in (90, 270) else {}
    info = replace(info, rotation=rotation, hflip=hflip, **turned)
    return info, FrameTable(table_pts, key_pts, time_base, counted)


def _first_orientation(packet) -> tuple[int, bool] | None:
    """The display matrix of the first frame ``packet`` (with those before it) decodes to, if any;
    a packet that fails to decode is skipped, as ffmpeg does (the empty end packet flushes)."""
    try:
        frames = packet.decode()
    except av.error.FFmpegError:
        return None
    return display_orientation(frames[0]) if frames else None


def open_scanned(path) -> tuple[av.container.InputContainer, VideoInfo, FrameTable]:
    """Open and scan (frame table, display matrix); return a fresh container for the decode.

    The file is reopened after the scan rather than seeked back to the start: raw elementary
    streams cannot seek, and the decode pass sees the file exactly as a plain sequential
    decode would.
    """
    where = str(path)
    container = open_video(path)
    try:
        info, table = _scan(container, where)
    except av.error.FFmpegError as exc:
        raise DecodeFailedError(f"{Path(path).name}: {exc}", path=where) from exc
    finally:
        container.close()
    return open_video(path), info, table


def probe(path: str | Path) -> VideoInfo:
    """Codec, displayed size, fps, frame count, duration, VFR flag and rotation of a video file.

    Reads the packets once (no decoding beyond the first frame). Raises a ``VideoError``
    subclass with the error code for unusable files.
    """
    container, info, _ = open_scanned(path)
    container.close()
    return info


def scan(path: str | Path) -> tuple[VideoInfo, FrameTable]:
    """``probe`` plus the frame table (every frame's timestamp), from the same single read."""
    container, info, table = open_scanned(path)
    container.close()
    return info, table
