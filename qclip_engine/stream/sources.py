"""Opening a stream's source — a file, a URL or an iterable of frames — as timed frames.

A source opens to an iterator of ``(t, convert)``: the frame's time in seconds (None if
unknown) and a zero-argument callable giving its uint8 RGB pixels at model size, made by the
engine's preprocessing (``container.to_rgb``: swscale for ``fast``, PIL bilinear for ``reference``, PIL bilinear and a
centre crop for ``short_side_crop``, the released CLIPVQA transform for ``mmcv_short_side_crop``).
Conversion is deferred so frames the memory cap drops are never converted. The last item
is ``(END_OF_MEDIA, MediaEnd)``: the nominal frame duration, and whether the source was cut
short. Opening or iterating may raise ``VideoError``.
Files and URLs are read through :mod:`qclip_engine.video.container`, as ``video.decode``
reads files, so a window sees exactly the pixels a file decode gives.

Cut short. A file is judged by the file rules (``video/scan.py``'s truncation signs, as far as
one pass over the frames sees them: a read error, fewer frames than an MP4/AVI declares, frames
ending before a Matroska/WebM declared duration, an MP4 box running past the end of the file); a
URL by its declared frame count. The frames up to the cut are delivered; what to make of the cut
(a warning, or the ``truncated`` error under ``strict``) is the stream loop's call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from ..defaults import PREPROCESSING, PREPROCESSINGS
from ..errors import DecodeFailedError, NotAVideoError, TruncatedVideoError, UnsupportedCodecError, VideoError, VideoNotFoundError
from ..video.container import FrameReader, check_opened, display_orientation, open_video, to_rgb, video_stream
from ..video.limits import DecodeLimits, Work
from ..video.resize import resize_rgb
# The file rules of truncation, one copy (video/scan.py: what the file path flags as cut short).
from ..video.scan import declared_duration_s, truncation_signs

Frames = Iterator[tuple[float | None, Callable[[], np.ndarray]]]
END_OF_MEDIA = object()  # a source's last item: ``(END_OF_MEDIA, MediaEnd)``
MAX_BAD_PACKETS = 25  # corrupt packets in a row skipped before a stream gives up
_LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp")
# A stream runs as long as its source does: only the picture size is bounded (decoder memory).
STREAM_LIMITS = DecodeLimits(max_frames=None, max_seconds=None)


@dataclass(frozen=True)
class MediaEnd:
    """What a source says at its end (the second half of its ``END_OF_MEDIA`` item)."""

    frame_s: float | None  # the nominal frame duration: where a one-frame stream ends
    truncation: str | None = None  # why the source looks cut short (the module docstring), or None


def open_source(source, size, fps, timeout_s, options, preprocessing: str = PREPROCESSING, *,
                any_format: bool = True) -> tuple[Callable[[], Frames], str, bool]:
    """``(opener, name, live)`` for ``source``; ``opener()`` opens it (in the decoder thread).
    Frames reach ``size`` by ``preprocessing`` (``container.to_rgb`` / ``resize_rgb``).
    ``any_format``: a file may be any format FFmpeg reads (the operator chose it), else only a
    single-file one (``container.SINGLE_FILE_FORMATS``: a file a client named, as the monitor's API)."""
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
    if isinstance(source, (str, Path)):
        text = str(source)
        scheme = text.split("://", 1)[0].lower() if "://" in text else ""
        if scheme == "file":
            text = text[len("file://"):]
            scheme = ""
        if not scheme:
            return (lambda: _file_frames(text, size, preprocessing, any_format)), text, False
        return (lambda: _url_frames(text, scheme, size, timeout_s, options, preprocessing)), text, True
    if isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise ValueError(f"an array source must be frames [N, H, W, 3], got shape {source.shape}")
        return (lambda: _iter_frames(iter(source), size, fps, preprocessing)), "<frames>", False
    if isinstance(source, Iterable):
        in_memory = isinstance(source, (list, tuple))
        return (lambda: _iter_frames(iter(source), size, fps, preprocessing)), "<frames>", not in_memory
    raise TypeError(f"source must be a path, a URL or an iterable of frames, got {type(source).__name__}")


def _file_frames(path: str, size, preprocessing: str, any_format: bool = True) -> Frames:
    # typed errors: not_found, empty_file, not_a_video, truncated, ...; any format when the operator
    # chose the source (a local playlist is a stream too)
    container = open_video(path, work=Work(STREAM_LIMITS, where=path), any_format=any_format)
    return _container_frames(container, path, size, preprocessing, live=False)


def _url_options(scheme: str, timeout_s: float, extra: dict | None) -> dict[str, str]:
    us = str(int(timeout_s * 1e6))
    opts = {"rw_timeout": us}  # any protocol: give up on a read/write silent this long (µs)
    if scheme in ("rtsp", "rtsps"):
        opts |= {"rtsp_transport": "tcp", "timeout": us}  # socket timeout (FFmpeg ≥ 5; was stimeout)
    elif scheme in ("http", "https"):  # plain files and HLS playlists / segments
        opts |= {"timeout": us, "reconnect": "1", "reconnect_streamed": "1", "reconnect_delay_max": "2"}
    elif scheme in ("rtmp", "rtmps", "tcp", "srt", "udp"):
        opts |= {"timeout": us} if scheme != "udp" else {}
    return opts | {k: str(v) for k, v in (extra or {}).items()}


def _url_frames(url: str, scheme: str, size, timeout_s: float, extra: dict | None, preprocessing: str) -> Frames:
    started = time.monotonic()
    try:
        container = av.open(
            url,
            mode="r",
            container_options=_url_options(scheme, timeout_s, extra),
            timeout=(timeout_s, timeout_s),
            metadata_errors="ignore",
        )
    except (av.error.HTTPNotFoundError, av.error.FileNotFoundError) as exc:
        raise VideoNotFoundError(f"{url}: not found ({exc.strerror or exc})", path=url) from exc
    except av.error.InvalidDataError as exc:
        if time.monotonic() - started >= timeout_s:
            # An open that ran out its time was not answered: FFmpeg's RTSP client reports the read
            # it gave up (PyAV's timeout, "Immediate exit requested") as invalid data.
            raise VideoError(f"{url}: no answer within {timeout_s:g} s (timed out)", path=url, code="unreachable") from exc
        raise NotAVideoError(f"{url}: not a stream FFmpeg recognises ({exc.strerror or exc})", path=url) from exc
    except (av.error.ExitError, av.error.TimeoutError) as exc:  # PyAV's timeout aborts as "Immediate exit requested"
        raise VideoError(f"{url}: no answer within {timeout_s:g} s (timed out)", path=url, code="unreachable") from exc
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(f"{url}: cannot open ({getattr(exc, 'strerror', None) or exc})", path=url, code="unreachable") from exc
    if video_stream(container) is None:
        container.close()
        raise NotAVideoError(f"{url}: no video stream", path=url)
    if video_stream(container).codec_context is None:
        container.close()
        raise UnsupportedCodecError(f"{url}: no decoder for this video codec", path=url)
    try:  # the picture size, as a file stream's open checks it (picture_too_large; the decoder's backstop)
        check_opened(container, video_stream(container), Work(STREAM_LIMITS, where=url))
    except BaseException:
        container.close()
        raise
    return _container_frames(container, url, size, preprocessing, live=scheme in _LIVE_SCHEMES or url.lower().split("?")[0].endswith(".m3u8"),
                             timeout_s=timeout_s)


def _container_frames(container, where: str, size, preprocessing: str, *, live: bool,
                      timeout_s: float | None = None) -> Frames:
    """Frames of an open container's video stream (the one ffmpeg would pick), timed by pts;
    closes the container."""
    name = where if "://" in where else Path(where).name
    try:
        stream = video_stream(container)
        # Frame threading holds back one frame per thread: fine for files, not for live latency.
        stream.thread_type = "SLICE" if live else "AUTO"
        stream.thread_count = 0
        nominal_dt = 1.0 / float(stream.average_rate or stream.guessed_rate or 25)
        reader = FrameReader(container, stream, max_bad_packets=MAX_BAD_PACKETS, where=where)
        orientation = None  # (rotation, hflip), read once off the first frame, as decode does
        latest = None  # the latest frame time, seconds (as the file's own pts say)
        for frame in reader:
            if orientation is None:
                orientation = display_orientation(frame)
            t = None if frame.time is None else float(frame.time)
            if t is not None and (latest is None or t > latest):
                latest = t
            yield t, (lambda f=frame, o=orientation: to_rgb(f, size, *o, preprocessing))
        is_url = "://" in where
        if reader.demux_error is not None and is_url:  # a file's read error is a cut (below)
            raise _mid_stream_error(reader.demux_error, name, where, timeout_s) from reader.demux_error
        truncation = _cut_short(container, stream, reader, where, latest, nominal_dt, is_url)
        if orientation is None:
            if truncation:
                raise TruncatedVideoError(f"{name}: no frame could be decoded; {truncation}", path=where)
            raise DecodeFailedError(f"{name}: no frame could be decoded", path=where)
        yield END_OF_MEDIA, MediaEnd(nominal_dt, truncation)
    finally:
        container.close()


def _cut_short(container, stream, reader: FrameReader, where: str, latest: float | None, frame_s: float,
               is_url: bool) -> str | None:
    """Why the source looks cut short, or None (the module docstring's rules)."""
    declared_frames = stream.frames or None
    if is_url:  # no file to measure: only what the stream declares
        if declared_frames and reader.packets < declared_frames:
            return f"the stream ends after {reader.packets} of its {declared_frames} declared frames"
        return None
    # The file rules without the last packet (a cut-off last frame is decoded or dropped like any
    # corrupt packet; MPEG-TS and Y4M units are a scan's checks of the whole file).
    return truncation_signs(container, stream, where, None, reader.demux_error, reader.packets, declared_frames,
                            declared_duration_s(container, stream), decoded_end=(latest or 0.0) + frame_s, frame_s=frame_s)


def _mid_stream_error(exc: av.error.FFmpegError, name: str, where: str, timeout_s: float | None = None) -> VideoError:
    """A URL's read error: ``unreachable`` for a stall or a dropped connection, else what FFmpeg says."""
    if isinstance(exc, (av.error.TimeoutError, av.error.ExitError)) and timeout_s is not None:
        # PyAV's read timeout aborts the read, which FFmpeg reports as "Immediate exit requested"
        return VideoError(f"{name}: no data for {timeout_s:g} s (timed out)", path=where, code="unreachable")
    if isinstance(exc, (av.error.TimeoutError, av.error.ExitError, av.error.ConnectionResetError,
                        av.error.ConnectionAbortedError, av.error.BrokenPipeError)):
        return VideoError(f"{name}: the stream stopped ({exc.strerror or exc})", path=where, code="unreachable")
    if isinstance(exc, av.error.EOFError):
        return TruncatedVideoError(f"{name}: the stream ends early ({exc.strerror or exc})", path=where)
    return DecodeFailedError(f"{name}: {exc.strerror or exc}", path=where)


def _iter_frames(items: Iterator, size, fps: float, preprocessing: str) -> Frames:
    h, w = size
    for i, item in enumerate(items):
        if isinstance(item, tuple):
            if len(item) != 2:
                raise VideoError(f"frame {i}: expected (timestamp_s, frame), got a tuple of {len(item)}", code="invalid_frame")
            t, frame = item
            try:
                t = float(t)
            except (TypeError, ValueError):
                raise VideoError(f"frame {i}: timestamp {t!r} is not a number", code="invalid_frame") from None
        elif isinstance(item, av.VideoFrame):
            t, frame = (item.time if item.time is not None else i / fps), item
        else:
            t, frame = i / fps, item
        if isinstance(frame, av.VideoFrame):
            yield t, (lambda f=frame: to_rgb(f, size, *display_orientation(f), preprocessing))
            continue
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
            raise VideoError(f"frame {i}: expected uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}", code="invalid_frame")
        if frame.shape[:2] == (h, w):
            yield t, (lambda f=frame: np.ascontiguousarray(f))
        else:
            yield t, (lambda f=frame: resize_rgb(f, size, preprocessing))
    yield END_OF_MEDIA, MediaEnd(1.0 / fps)
