"""Scanning a video: its frame table (frame identity) and its ``VideoInfo``, before any decode.

Frame identity. A file's video packets are demuxed (no decoding) into a frame table of
presentation timestamps in display order. Frame ``i`` is the ``i``-th entry of that table,
and decoded frames are matched to it by their timestamp, never by counting — so a B-frame
reorder, a dropped corrupt packet or a variable frame rate (VFR) cannot shift indices. A
frame's time is its own pts, not ``i / fps``; ``VideoInfo.vfr`` flags VFR files.

Frames an edit list hides are not frames. An MP4 cut by stream copy (``ffmpeg -ss T -i in.mp4
-c copy``) keeps the GOP's pre-roll packets before the cut and an edit list that hides them:
FFmpeg's demuxer flags those packets discard (``Packet.is_discard``) and its decoder drops
their frames, so ffmpeg presents fewer frames than the file holds. The table holds only the
presented frames; hidden keyframes stay seek points (``keyframe_pts``: the frames after them
need them), and hidden packets still count as the file's samples for truncation (an MP4
declares every sample it holds, hidden or not). ``FrameTable.hidden`` counts them.

Frames without timestamps (raw elementary streams: ``.h264``, ``.hevc``) are counted
instead: the scan numbers the packets, the decoder's output is numbered the same way
(``FrameTable.counted``). The file is reopened after the scan rather than seeked back: such
streams cannot seek.

The display matrix is read off the first decoded frame, decoded during the same pass:
``VideoInfo.width/height`` are the displayed size, ``rotation``/``hflip`` say what decoding
applies.

Frame rate. Gaps between frames are measured in the median frame step: gaps that are whole
multiples of it are dropped frames of a constant-rate file (``dropped_frames`` counts them);
any other gap makes the file VFR (``vfr``).

Truncation. A file cut short is scored on what is there, and ``VideoInfo.truncation`` says
what was decoded against what the file declares (``declared_frames``/``declared_duration``);
``require_complete`` turns it into the ``truncated`` error (``qclip-score --strict``, training).
The signs, from the same pass: fewer packets than the declared frame count (MP4, AVI); an
end short of the declared duration (Matroska/WebM); a last packet the demuxer marks corrupt
(MP4, fragmented or not: its data runs past the end of the file) or a last top-level box that
does (MP4: a fragmented file cut inside a fragment's header); a read error; and, for the
two formats with fixed-size units, bytes left over after the last whole frame (Y4M) or a
size that is not a whole number of transport packets (MPEG-TS). Nothing left to decode is
the ``truncated`` error outright.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import KW_ONLY, asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import DecodeFailedError, TruncatedVideoError
from .container import display_orientation, open_video, video_stream
from .iso_bmff import iso_bmff_cut
from .limits import Work

# Formats whose headers state a duration (Matroska: Segment Duration and ffmpeg's per-track
# DURATION tag). Elsewhere FFmpeg estimates durations from the data it finds (a fragmented
# MP4's duration grows with its fragments); MP4 states its frame count instead.
_DECLARES_DURATION = ("matroska",)
_TS_PACKET_SIZES = (188, 192, 204)  # MPEG-TS, M2TS (timecode prefix), TS with Reed-Solomon
# A container-wide duration covers the other streams too (audio may end later): only a
# shortfall past this is called truncation when the video track does not state its own.
_CONTAINER_DURATION_SLACK_S = 0.5

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
    dropped_frames: int = 0  # frames missing from a constant-rate file (gaps of whole frame steps)
    declared_frames: int | None = None  # what the container states, when it does
    declared_duration: float | None = None  # seconds
    truncation: str | None = None  # why the file looks cut short (decoded against declared), or None

    def to_dict(self) -> dict:
        return asdict(self)

    def require_complete(self) -> None:
        """Raise the ``truncated`` error if the file looks cut short (the strict policy)."""
        if self.truncation:
            raise TruncatedVideoError(f"{Path(self.path).name}: {self.truncation}", path=self.path)


@dataclass(frozen=True)
class FrameTable:
    """Display-order timestamps of every frame, and which are keyframes (seek points)."""

    pts: np.ndarray  # int64 [N], sorted
    keyframe_pts: np.ndarray  # int64 [K], sorted
    time_base: Fraction
    counted: bool = False  # no timestamps in the file: pts are frame numbers (decode order = display order)
    hidden: int = 0  # packets an edit list hides (demuxed and decoded, never presented)

    def times(self, indices: Iterable[int] | np.ndarray | None = None) -> np.ndarray:
        pts = self.pts if indices is None else self.pts[np.asarray(indices, dtype=np.int64)]
        return (pts - self.pts[0]).astype(np.float64) * float(self.time_base)


def _scan(container: av.container.InputContainer, where: str, work: Work) -> tuple[VideoInfo, FrameTable]:
    """One pass over the packets: the frame table, the truncation signs, and the first
    decodable frame's display matrix (decoded on the way, so the file need not be opened
    again for it). ``work`` counts the packets (its frame limit, time and cancellation)."""
    stream = video_stream(container)
    work.new_pass()
    pts, keys = [], []
    samples = 0  # every non-empty packet, hidden ones too: what the container declares
    demux_error = None
    stamped = False
    orientation = None
    last = None  # the last non-empty packet
    try:
        for packet in container.demux(stream):
            if orientation is None:
                orientation = _first_orientation(packet)
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            work.packet()
            last = packet
            samples += 1
            stamp = packet.pts if packet.pts is not None else packet.dts
            stamped = stamped or stamp is not None
            if stamp is None:
                stamp = pts[-1] + 1 if pts else 0
            if packet.is_keyframe:
                keys.append(stamp)
            if not packet.is_discard:  # hidden by an edit list: the decoder drops its frame
                pts.append(stamp)
    except av.error.FFmpegError as exc:
        demux_error = exc
    name = Path(where).name
    declared_frames = stream.frames or None
    declared_duration = declared_duration_s(container, stream)
    if not pts and samples and demux_error is None:
        raise DecodeFailedError(f"{name}: no frame is presented (an edit list hides all {samples})", path=where)
    if not pts:
        cut = iso_bmff_cut(Path(where)) if container.format.name.startswith("mov") else None
        if declared_frames or declared_duration or demux_error is not None or cut:
            raise TruncatedVideoError(f"{name}: no frame of the {_declared(declared_frames, declared_duration)} "
                                      f"could be read ({demux_error or cut or 'the media data is missing'})", path=where)
        raise DecodeFailedError(f"{name}: no video packets could be read (empty stream)", path=where)
    table_pts = np.unique(np.asarray(pts, dtype=np.int64))  # display order
    key_pts = np.unique(np.asarray(keys or pts[:1], dtype=np.int64))
    time_base = stream.time_base or Fraction(1, 90000)
    counted = not stamped
    if counted:  # frame numbers: one tick a frame at the stream's rate
        rate = stream.average_rate or stream.guessed_rate or 25
        time_base = Fraction(1) / Fraction(rate)
    frame_step, vfr, dropped = _frame_rate(table_pts, stream, time_base)
    duration = float((table_pts[-1] - table_pts[0] + frame_step) * time_base)
    truncation = truncation_signs(
        container, stream, where, last, demux_error, samples, declared_frames, declared_duration,
        decoded_end=float((table_pts[-1] + frame_step) * time_base), frame_s=float(frame_step * time_base),
    )
    if orientation is None:
        if truncation:
            raise TruncatedVideoError(f"{name}: no frame could be decoded; {truncation}", path=where)
        raise DecodeFailedError(f"{name}: no frame could be decoded", path=where)
    rotation, hflip = orientation
    ctx = stream.codec_context
    width, height = (ctx.height, ctx.width) if rotation in (90, 270) else (ctx.width, ctx.height)
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
        rotation=rotation,
        hflip=hflip,
        has_b_frames=bool(ctx.has_b_frames),
        dropped_frames=dropped,
        declared_frames=declared_frames,
        declared_duration=declared_duration,
        truncation=truncation,
    )
    return info, FrameTable(table_pts, key_pts, time_base, counted, hidden=samples - len(pts))


def _frame_rate(table_pts: np.ndarray, stream, time_base: Fraction) -> tuple[float, bool, int]:
    """``(frame step in ticks, vfr, dropped frames)``: a gap of a whole number k of median steps
    is k − 1 dropped frames of a constant-rate file; any other gap means a variable rate."""
    deltas = np.diff(table_pts).astype(np.float64)
    if not deltas.size:
        return 1.0 / float(stream.average_rate or 25) / float(time_base), False, 0
    step = float(np.median(deltas))
    multiples = np.maximum(np.rint(deltas / step), 1.0)
    # Timestamps rounded to the time base (Matroska's milliseconds) are off by up to a tick
    # each, so k steps may be off by k ticks.
    whole = np.abs(deltas - multiples * step) <= np.maximum(multiples, 0.01 * deltas)
    vfr = not bool(np.all(whole))
    dropped = 0 if vfr else int(np.sum(multiples - 1))
    return step, vfr, dropped


def declared_duration_s(container, stream) -> float | None:
    """The video's duration as the container's header states it (seconds), or None."""
    if not container.format.name.startswith(_DECLARES_DURATION):
        return None
    tag = stream.metadata.get("DURATION")  # Matroska, as ffmpeg writes it: HH:MM:SS.nnnnnnnnn
    if tag:
        try:
            h, m, sec = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec)
        except ValueError:
            pass
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration else None


def _declared(frames: int | None, duration: float | None) -> str:
    if frames:
        return f"{frames} declared frames"
    return f"declared {duration:.3f} s" if duration else "file"


def truncation_signs(container, stream, where, last, demux_error, packets, declared_frames, declared_duration,
                     *, decoded_end: float, frame_s: float) -> str | None:
    """Why the file looks cut short, saying what was decoded against what was declared; or None."""
    if demux_error is not None:
        return f"reading stopped after {packets} frames ({demux_error})"
    if declared_frames and packets < declared_frames:
        return f"the file ends after {packets} of its {declared_frames} declared frames"
    if last is not None and last.is_corrupt:
        return f"the last of {packets} frames is cut off (its data runs past the end of the file)"
    if declared_duration and not declared_frames:
        own = "DURATION" in stream.metadata or bool(stream.duration)
        others = len(container.streams) > 1
        slack = 0.5 * frame_s + (0.0 if own or not others else _CONTAINER_DURATION_SLACK_S)
        if decoded_end < declared_duration - slack:
            return f"the frames end at {decoded_end:.3f} s of a declared {declared_duration:.3f} s ({packets} frames)"
    fmt = container.format.name
    if fmt.startswith("mov"):
        cut = iso_bmff_cut(Path(where))
        if cut:
            return f"{cut} (after {packets} frames)"
    if last is not None and (fmt == "yuv4mpegpipe" or fmt == "mpegts"):
        size = Path(where).stat().st_size
        if fmt == "yuv4mpegpipe" and last.pos >= 0 and size > last.pos + last.size:
            return f"{size - last.pos - last.size} bytes of a cut frame follow the last of {packets} whole frames"
        unit = _ts_packet_size(Path(where)) if fmt == "mpegts" else None
        if unit and size % unit:
            return f"the file ends {size % unit} bytes into a {unit}-byte transport packet (after {packets} frames)"
    return None


def _ts_packet_size(path: Path) -> int | None:
    """The transport packet size of an MPEG-TS file (188; 192 for M2TS's timecode prefix; 204 with
    Reed-Solomon bytes), read off the sync bytes (0x47) of its first packets; None if unclear."""
    with path.open("rb") as f:
        head = f.read(4 * 204 + 4)
    for unit in _TS_PACKET_SIZES:
        start = 4 if unit == 192 else 0
        if len(head) > start + 3 * unit and all(head[start + i * unit] == 0x47 for i in range(4)):
            return unit
    return None


def _first_orientation(packet) -> tuple[int, bool] | None:
    """The display matrix of the first frame ``packet`` (with those before it) decodes to, if any;
    a packet that fails to decode is skipped, as ffmpeg does (the empty end packet flushes)."""
    try:
        frames = packet.decode()
    except av.error.FFmpegError:
        return None
    return display_orientation(frames[0]) if frames else None


def open_scanned(path, work: Work | None = None) -> tuple[av.container.InputContainer, VideoInfo, FrameTable]:
    """Open and scan (frame table, display matrix); return a fresh container for the decode.

    The file is reopened after the scan rather than seeked back to the start: raw elementary
    streams cannot seek, and the decode pass sees the file exactly as a plain sequential
    decode would. ``work``: the input's limits and meter (``video/limits.py``; default limits
    when None), for the scan and the decode that follows.
    """
    where = str(path)
    work = work if work is not None else Work(where=where)
    container = open_video(path, work=work)
    try:
        info, table = _scan(container, where, work)
    except av.error.FFmpegError as exc:
        raise DecodeFailedError(f"{Path(path).name}: {exc}", path=where) from exc
    finally:
        container.close()
    container = open_video(path, work=work)
    work.new_pass()
    return container, info, table


def probe(path: str | Path, work: Work | None = None) -> VideoInfo:
    """Codec, displayed size, fps, frame count, duration, VFR flag and rotation of a video file.

    Reads the packets once (no decoding beyond the first frame). Raises a ``VideoError``
    subclass with the error code for unusable files (``work``: as :func:`open_scanned`).
    """
    container, info, _ = open_scanned(path, work)
    container.close()
    return info


def scan(path: str | Path, work: Work | None = None) -> tuple[VideoInfo, FrameTable]:
    """``probe`` plus the frame table (every frame's timestamp), from the same single read."""
    container, info, table = open_scanned(path, work)
    container.close()
    return info, table
