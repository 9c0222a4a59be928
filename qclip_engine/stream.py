"""Sliding-window scoring of a file, a live URL or a frame iterator.

``stream_windows(engine, source)`` decodes ``source`` once, front to back, and scores
overlapping windows of it as they close: window ``k`` covers media time
``[k·hop_s, k·hop_s + window_s)`` seconds from the first frame. Each window's frames go
through the engine's sampler (``engine.sample_frames``, the same motion + sampler as whole
files) and then its backend; several ready windows share one backend call.

Sources
    * a file path (or ``file://`` URL): opened like :mod:`qclip_engine.video.decode` opens
      files, frames converted with the same swscale call (:func:`decode.to_rgb`), so a
      window sees exactly the pixels the file path decodes; display rotation applied.
    * a URL (``rtsp://``, ``http(s)://`` incl. HLS ``.m3u8``, ``rtmp://``, ``udp://``, ``srt://`` …):
      opened by PyAV with open/read timeouts (``timeout_s``) and protocol options
      (RTSP over TCP, HTTP reconnects); ``options=`` adds or overrides them.
    * an iterable of frames: uint8 RGB ``[H, W, 3]`` arrays (timed ``index / fps``), or
      ``(timestamp_s, frame)`` tuples (timestamps taken as given, relative to the first),
      or ``av.VideoFrame`` objects. Frames not at the model's size are resized by swscale
      with the decoder's interpolation.

Time. For PyAV sources a frame's time is its own pts (``frame.time``) minus the first
frame's, so variable-frame-rate media are windowed by real time, not by frame count. A
timestamp that jumps backwards by more than a window (a live source restarting its clock)
re-bases the timeline so that windows keep moving forward; a forward jump leaves the
windows in between empty, and empty windows are skipped (their index is not reused:
``start_s = index · hop_s`` always holds).

Memory. Only the frames of the current window are held, at model size, and at most
``max_window_frames`` of them: frames are kept on a time grid of ``window_s /
max_window_frames`` seconds (all of them unless the rate exceeds ``max_window_frames /
window_s`` fps), so memory does not grow with stream length or frame rate. Between the
decoder thread and the backend at most ``2 × batch`` sampled windows wait.

End of stream. The windows still open are emitted up to the first one that reaches the
end of the media (the last frame's time plus one frame); one that reaches past it is
marked ``partial``. So windows cover the whole stream.

Errors never escape for bad media: a source that cannot be opened gives one error
record (index 0), a decode failure in the middle gives an error record for the window
being filled and ends the stream; the windows already closed are still scored and come
first. Codes are the decode codes (``not_found``, ``empty_file``, ``not_a_video``,
``audio_only``, ``unsupported_codec``, ``truncated``, ``decode_failed``) plus
``unreachable`` (a URL that refused, timed out or failed at the network level),
``invalid_frame`` (an iterator item that is not an RGB uint8 frame) and
``internal_error`` (anything else, e.g. the backend or the iterator itself raising).

Batching. For files (and in-memory frame sequences) a batch waits up to
``engine.batch_timeout_s`` for the next window to fill up to ``engine.batch``; for live
sources (URLs, frame iterators) a window is scored as soon as it closes, together with
whichever other windows are already waiting — latency first.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from .errors import (
    DecodeFailedError,
    NotAVideoError,
    QCLIPError,
    TruncatedVideoError,
    UnsupportedCodecError,
    VideoError,
    VideoNotFoundError,
)
from .video import decode

DEFAULT_TIMEOUT_S = 10.0
LIVE_FPS_CAP = 60  # default frames kept per second of window (memory bound): 2 × 30 fps
_MAX_CONSECUTIVE_DECODE_ERRORS = 25
_EPS = 1e-9  # seconds: window bounds are computed, not accumulated, but k·hop is still a float
_LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "srt", "tcp")


@dataclass
class WindowResult:
    """One window's outcome: a score, or an error record (never both)."""

    index: int
    start_s: float
    end_s: float
    score: float | None = None
    mos: float | None = None
    levels: dict[str, float] | None = None
    frames_in_window: int = 0  # frames the sampler chose from (after the memory cap)
    partial: bool = False  # the media ended before end_s
    alert: bool = False  # score < threshold (only when a threshold is given)
    error: dict | None = None  # {"code", "message"}
    frames: list[int] | None = None  # source frame numbers (from 0) the model saw
    frame_times: list[float] | None = None  # their times, seconds from the first frame
    timing_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_record(self) -> dict:
        record = {
            "index": self.index,
            "start_s": round(self.start_s, 6),
            "end_s": round(self.end_s, 6),
            "frames_in_window": self.frames_in_window,
            "partial": self.partial,
            "alert": self.alert,
        }
        if not self.ok:
            return record | {"error": self.error, "timing_ms": self.timing_ms}
        for key in ("score", "mos", "levels", "frames", "frame_times"):
            value = getattr(self, key)
            if value is not None:
                record[key] = value
        record["timing_ms"] = self.timing_ms
        return record


# -- the entry point -----------------------------------------------------------------------
def stream_windows(
    engine,
    source,
    *,
    window_s: float = 2.0,
    hop_s: float = 1.0,
    threshold: float | None = None,
    max_window_frames: int | None = None,
    fps: float = 25.0,
    live: bool | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    options: dict[str, str] | None = None,
) -> Iterator[WindowResult]:
    """Per-window results over ``source``, in window order (see the module docstring).

    ``fps``: the rate of a plain-array frame iterator; ``live``: score each window as soon
    as it closes (default: True for URLs and frame iterators, False for files and
    in-memory sequences); ``timeout_s``: network open/read timeout; ``options``: extra
    FFmpeg options for opening a URL.
    """
    window_s, hop_s = float(window_s), float(hop_s)
    if not (window_s > 0 and math.isfinite(window_s)):
        raise ValueError(f"window_s must be > 0, got {window_s}")
    if not (hop_s > 0 and math.isfinite(hop_s)):
        raise ValueError(f"hop_s must be > 0, got {hop_s}")
    if max_window_frames is None:
        max_window_frames = min(engine.max_analysis_frames, max(engine.num_frames, math.ceil(LIVE_FPS_CAP * window_s)))
    if max_window_frames < 1:
        raise ValueError(f"max_window_frames must be ≥ 1, got {max_window_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    opener, name, is_live = _source(source, tuple(engine.image_size), fps, timeout_s, options)
    if live is None:
        live = is_live
    return _run(engine, opener, name, window_s, hop_s, threshold, int(max_window_frames), bool(live))


# -- sources ---------------------------------------------------------------------------------
# A source is a callable that opens it and returns an iterator of ``(t, convert)``: the
# frame's time in seconds (None if unknown) and a zero-argument callable giving its uint8
# RGB pixels at model size. Conversion is deferred so frames the memory cap drops are never
# converted. It may raise ``VideoError`` (when opening, or while iterating).
Frames = Iterator[tuple[float | None, Callable[[], np.ndarray]]]
_END_OF_MEDIA = object()  # a source's last item: ``(_END_OF_MEDIA, nominal frame duration)``


def _source(source, size, fps, timeout_s, options) -> tuple[Callable[[], Frames], str, bool]:
    if isinstance(source, (str, Path)):
        text = str(source)
        scheme = text.split("://", 1)[0].lower() if "://" in text else ""
        if scheme == "file":
            text = text[len("file://"):]
            scheme = ""
        if not scheme:
            return (lambda: _file_frames(text, size)), text, False
        return (lambda: _url_frames(text, scheme, size, timeout_s, options)), text, True
    if isinstance(source, np.ndarray):
        if source.ndim != 4:
            raise ValueError(f"an array source must be frames [N, H, W, 3], got shape {source.shape}")
        return (lambda: _iter_frames(iter(source), size, fps)), "<frames>", False
    if isinstance(source, Iterable):
        in_memory = isinstance(source, (list, tuple))
        return (lambda: _iter_frames(iter(source), size, fps)), "<frames>", not in_memory
    raise TypeError(f"source must be a path, a URL or an iterable of frames, got {type(source).__name__}")


def _file_frames(path: str, size) -> Frames:
    container = decode._open(path)  # typed errors: not_found, empty_file, not_a_video, truncated, ...
    return _container_frames(container, path, size, live=False)


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


def _url_frames(url: str, scheme: str, size, timeout_s: float, extra: dict | None) -> Frames:
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
        raise NotAVideoError(f"{url}: not a stream FFmpeg recognises ({exc.strerror or exc})", path=url) from exc
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(f"{url}: cannot open ({getattr(exc, 'strerror', None) or exc})", path=url, code="unreachable") from exc
    if not container.streams.video:
        container.close()
        raise NotAVideoError(f"{url}: no video stream", path=url)
    if container.streams.video[0].codec_context is None:
        container.close()
        raise UnsupportedCodecError(f"{url}: no decoder for this video codec", path=url)
    return _container_frames(container, url, size, live=scheme in _LIVE_SCHEMES or url.lower().split("?")[0].endswith(".m3u8"))


def _container_frames(container, where: str, size, *, live: bool) -> Frames:
    """Frames of an open container's first video stream, timed by pts; closes the container."""
    name = where if "://" in where else Path(where).name
    try:
        stream = container.streams.video[0]
        # Frame threading holds back one frame per thread: fine for files, not for live latency.
        stream.thread_type = "SLICE" if live else "AUTO"
        stream.thread_count = 0
        nominal_dt = 1.0 / float(stream.average_rate or stream.guessed_rate or 25)
        announced = stream.frames or 0
        packets = container.demux(stream)
        rotation = None
        n_packets = failures = 0
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                raise _mid_stream_error(exc, name, where) from exc
            if packet.size:
                n_packets += 1
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:  # a corrupt packet is skipped, as ffmpeg (and decode) do
                failures += 1
                if failures > _MAX_CONSECUTIVE_DECODE_ERRORS:
                    raise DecodeFailedError(f"{name}: {failures} packets in a row failed to decode ({exc})", path=where) from exc
                continue
            failures = 0
            for frame in decoded:
                if rotation is None:
                    rotation = decode._display_rotation(frame)
                t = frame.time
                yield (None if t is None else float(t)), (lambda f=frame, r=rotation: decode.to_rgb(f, size, r))
        if announced and n_packets < announced:
            raise TruncatedVideoError(f"{name}: the stream ends after {n_packets} of {announced} frames", path=where)
        if rotation is None:
            raise DecodeFailedError(f"{name}: no frame could be decoded", path=where)
        yield _END_OF_MEDIA, nominal_dt  # tells the windower the nominal frame duration
    finally:
        container.close()


def _mid_stream_error(exc: av.error.FFmpegError, name: str, where: str) -> VideoError:
    if isinstance(exc, (av.error.TimeoutError, av.error.ExitError, av.error.ConnectionResetError,
                        av.error.ConnectionAbortedError, av.error.BrokenPipeError)):
        return VideoError(f"{name}: the stream stopped ({exc.strerror or exc})", path=where, code="unreachable")
    if isinstance(exc, av.error.EOFError) or "://" not in where:
        return TruncatedVideoError(f"{name}: the stream ends early ({exc.strerror or exc})", path=where)
    return DecodeFailedError(f"{name}: {exc.strerror or exc}", path=where)


def _iter_frames(items: Iterator, size, fps: float) -> Frames:
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
            yield t, (lambda f=frame: decode.to_rgb(f, size, decode._display_rotation(f)))
            continue
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or 0 in frame.shape:
            raise VideoError(f"frame {i}: expected uint8 RGB [H, W, 3], got {frame.dtype} {frame.shape}", code="invalid_frame")
        if frame.shape[:2] == (h, w):
            yield t, (lambda f=frame: np.ascontiguousarray(f))
        else:
            yield t, (lambda f=frame: resize_rgb(f, size))
    yield _END_OF_MEDIA, 1.0 / fps


def resize_rgb(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` → ``size`` (H, W) with swscale and the decoder's interpolation."""
    h, w = size
    av_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return av_frame.reformat(width=w, height=h, format="rgb24", interpolation=decode.INTERPOLATION).to_ndarray()


# -- windows -----------------------------------------------------------------------------------
@dataclass
class _Window:
    index: int
    start_s: float
    end_s: float
    frames: np.ndarray  # uint8 [N, H, W, 3]
    numbers: np.ndarray  # source frame numbers
    times: np.ndarray
    partial: bool
    closed_at: float  # perf_counter when the window closed


class _Windower:
    """Holds the frames of the open windows; says which windows a new frame closes."""

    def __init__(self, window_s: float, hop_s: float, max_frames: int):
        self.window_s, self.hop_s, self.max_frames = window_s, hop_s, max_frames
        self.grid = window_s / max_frames  # keep at most one frame per grid step
        self.k = 0
        self.held: deque = deque()  # (number, t, rgb), times ≥ the open window's start
        self.last_slot = None
        self.origin = None  # the first frame's raw time
        self.offset = 0.0  # added after a backwards clock jump
        self.last_t = None
        self.dt = None  # the last positive frame-to-frame step

    def bounds(self, k: int) -> tuple[float, float]:
        return k * self.hop_s, k * self.hop_s + self.window_s

    def time_of(self, raw: float | None) -> float:
        """A frame's raw time → seconds on the window timeline (first frame 0)."""
        if raw is None:  # no timestamp: one frame after the last
            return 0.0 if self.last_t is None else self.last_t + (self.dt or 0.0)
        if self.origin is None:
            self.origin = raw
        t = raw - self.origin + self.offset
        if self.last_t is not None and t < self.last_t - max(self.window_s, self.hop_s, 1.0):
            # The clock restarted (a live source reconnecting, a wrapped pts): continue from here.
            self.offset += self.last_t + (self.dt or 0.0) - t
            t = self.last_t + (self.dt or 0.0)
        return t

    def observe(self, t: float) -> None:
        if self.last_t is not None and t > self.last_t + _EPS:
            self.dt = t - self.last_t
        self.last_t = t if self.last_t is None else max(self.last_t, t)

    def close_before(self, t: float) -> list[_Window]:
        """The windows that a frame at ``t`` closes (it lies at or past their end)."""
        closed = []
        while t >= self.bounds(self.k)[1] - _EPS:
            window = self._take(partial=False)
            if window is not None:
                closed.append(window)
            self._advance(self.k + 1)
            if not self.held:  # skip the empty windows of a gap in one step
                skip_to = math.floor((t - self.window_s) / self.hop_s + _EPS) + 1
                if skip_to > self.k:
                    self._advance(skip_to)
        return closed

    def wants(self, t: float) -> bool:
        """Whether a frame at ``t`` (after ``close_before(t)``) is kept: in the open window, on a new grid step."""
        if t < self.bounds(self.k)[0] - _EPS:
            return False
        slot = math.floor(t / self.grid + 1e-3)
        return self.last_slot is None or slot > self.last_slot

    def push(self, number: int, t: float, rgb: np.ndarray) -> None:
        self.last_slot = math.floor(t / self.grid + 1e-3)
        self.held.append((number, t, rgb))

    def finish(self) -> list[_Window]:
        """End of media: the open windows up to the first that reaches the media's end."""
        if self.last_t is None:
            return []
        media_end = self.last_t + (self.dt or 0.0)
        tol = 0.25 * (self.dt or 0.0) + 1e-6
        closed = []
        while self.held:
            end = self.bounds(self.k)[1]
            window = self._take(partial=end > media_end + tol)
            if window is not None:
                closed.append(window)
            if end >= media_end - tol:
                break
            self._advance(self.k + 1)
        return closed

    def current(self) -> tuple[int, float, float, int]:
        start, end = self.bounds(self.k)
        return self.k, start, end, sum(start - _EPS <= t < end - _EPS for _, t, _ in self.held)

    def _take(self, partial: bool) -> _Window | None:
        start, end = self.bounds(self.k)
        inside = sorted((item for item in self.held if start - _EPS <= item[1] < end - _EPS), key=lambda x: x[1])
        if not inside:
            return None
        if len(inside) > self.max_frames:  # grid alignment can let one or two extra in
            keep = decode.candidate_indices(len(inside), self.max_frames)
            inside = [inside[i] for i in keep]
        return _Window(
            index=self.k,
            start_s=start,
            end_s=end,
            frames=np.stack([rgb for _, _, rgb in inside]),
            numbers=np.array([n for n, _, _ in inside], dtype=np.int64),
            times=np.array([t for _, t, _ in inside], dtype=np.float64),
            partial=partial,
            closed_at=time.perf_counter(),
        )

    def _advance(self, k: int) -> None:
        self.k = k
        start = self.bounds(k)[0]
        while self.held and self.held[0][1] < start - _EPS:
            self.held.popleft()
        if self.held and any(t < start - _EPS for _, t, _ in self.held):  # out-of-order stragglers
            self.held = deque(item for item in self.held if item[1] >= start - _EPS)


def _error_window(index, start, end, n, exc: BaseException) -> WindowResult:
    if isinstance(exc, QCLIPError):
        error = {"code": exc.code, "message": exc.message}
    else:
        error = {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
    return WindowResult(index=index, start_s=start, end_s=end, frames_in_window=n, error=error)


# -- the pipeline: a decoder thread, the backend here ---------------------------------------------
_DONE = object()


@dataclass
class _Sampled:
    window: _Window
    video: object  # engine.SampledVideo


def _produce(engine, opener, name, windower: _Windower, out: queue.Queue, stop: threading.Event) -> None:
    """Decoder thread: frames → windows → sampled windows (or a final error record) → ``out``."""

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def emit(windows: list[_Window]) -> bool:
        for w in windows:
            t0 = time.perf_counter()
            video = engine.sample_frames(w.frames, f"{name}#{w.index}", w.times)
            video.timing_ms["sample"] = (time.perf_counter() - t0) * 1e3
            if not put(_Sampled(w, video)):
                return False
        return True

    frames = None
    try:
        frames = opener()
        number = 0
        for raw, convert in frames:
            if stop.is_set():
                return
            if raw is _END_OF_MEDIA:
                if convert:  # the nominal frame duration, for a one-frame stream's end
                    windower.dt = windower.dt or float(convert)
                break
            t = windower.time_of(raw)
            windower.observe(t)
            if not emit(windower.close_before(t)):
                return
            if windower.wants(t):
                windower.push(number, t, convert())
            number += 1
        if windower.last_t is None:
            raise DecodeFailedError(f"{Path(name).name if '://' not in name else name}: no frames", path=name)
        emit(windower.finish())
    except Exception as exc:  # bad media (or a failing iterator) ends the stream with a record
        k, start, end, n = windower.current()
        put(_error_window(k, start, end, n, exc))
    finally:
        if hasattr(frames, "close"):
            frames.close()  # closes the container now, not at garbage collection
        put(_DONE)


def _run(engine, opener, name, window_s, hop_s, threshold, max_frames, live) -> Iterator[WindowResult]:
    out: queue.Queue = queue.Queue(maxsize=2 * engine.batch)
    stop = threading.Event()
    windower = _Windower(window_s, hop_s, max_frames)
    worker = threading.Thread(target=_produce, args=(engine, opener, name, windower, out, stop),
                              name="qclip-stream-decode", daemon=True)

    def score(batch: list[_Sampled]) -> list[WindowResult]:
        try:
            results = engine.run_batch([s.video for s in batch])
        except Exception as exc:  # the backend failed: each window of the batch says so
            return [_error_window(s.window.index, s.window.start_s, s.window.end_s, len(s.window.frames), exc) for s in batch]
        scored = []
        now = time.perf_counter()
        for s, r in zip(batch, results):
            w = s.window
            scored.append(WindowResult(
                index=w.index,
                start_s=w.start_s,
                end_s=w.end_s,
                score=r.score,
                mos=r.mos,
                levels=r.levels,
                frames_in_window=len(w.frames),
                partial=w.partial,
                alert=threshold is not None and r.score < threshold,
                frames=[int(w.numbers[i]) for i in s.video.indices],
                frame_times=[round(float(t), 6) for t in s.video.times],
                timing_ms=r.timing_ms | {"latency": (now - w.closed_at) * 1e3},
            ))
        return scored

    worker.start()
    try:
        batch: list[_Sampled] = []
        while True:
            if not batch:
                item = out.get()
            else:
                try:
                    item = out.get_nowait() if live else out.get(timeout=engine.batch_timeout_s)
                except queue.Empty:
                    yield from score(batch)
                    batch = []
                    continue
            if isinstance(item, _Sampled):
                batch.append(item)
                if len(batch) >= engine.batch:
                    yield from score(batch)
                    batch = []
                continue
            if batch:
                yield from score(batch)
                batch = []
            if item is _DONE:
                return
            yield item  # an error record: the stream ends after it
    finally:
        # The producer never blocks on the queue (it polls ``stop``), so it ends at its next
        # frame; one stuck in a network read is a daemon and is left to its read timeout.
        stop.set()
        worker.join(timeout=2.0)


# -- plotting ----------------------------------------------------------------------------------------
def plot_timeline(records: Iterable[dict | WindowResult], path: str | Path, threshold: float | None = None,
                  title: str | None = None) -> Path:
    """A PNG of the score of each window over media time: windows below ``threshold`` shaded, errors marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [r.to_record() if isinstance(r, WindowResult) else dict(r) for r in records]
    ok = [r for r in rows if r.get("score") is not None]
    bad = [r for r in rows if r.get("error")]
    fig, ax = plt.subplots(figsize=(10, 3.6), dpi=100)
    try:
        if ok:
            mid = [(r["start_s"] + r["end_s"]) / 2 for r in ok]
            ax.plot(mid, [r["score"] for r in ok], "-o", ms=3, lw=1.2, color="tab:blue", label="window score")
        alerts = [r for r in ok if r.get("alert") or (threshold is not None and r["score"] < threshold)]
        for i, r in enumerate(alerts):
            ax.axvspan(r["start_s"], r["end_s"], color="tab:red", alpha=0.12, lw=0, label="alert" if i == 0 else None)
        if alerts:
            ax.plot([(r["start_s"] + r["end_s"]) / 2 for r in alerts], [r["score"] for r in alerts], "o", ms=4, color="tab:red")
        if threshold is not None:
            ax.axhline(threshold, color="tab:red", ls="--", lw=1, label=f"threshold {threshold:g}")
        for i, r in enumerate(bad):
            ax.axvline(r.get("start_s", 0.0), color="black", ls=":", lw=1,
                       label=f"error: {r['error'].get('code')}" if i == 0 else None)
        ax.set_xlabel("media time (s)")
        ax.set_ylabel("score")
        ax.set_title(title or "quality per window")
        ax.grid(alpha=0.3)
        if ok or bad or threshold is not None:
            ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
