"""The stream pipeline: a decoder thread turns frames into sampled windows; the caller's
thread batches them (:func:`qclip_engine.batching.next_batch`) through the backend."""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import defaults
from ..batching import Closed, next_batch
from ..errors import DecodeFailedError, TruncatedVideoError
from .records import WindowResult, error_window
from .sources import END_OF_MEDIA, MediaEnd, open_source
from .windowing import Window, Windower

LIVE_FPS_CAP = 60  # default frames kept per second of window (memory bound): 2 × 30 fps
_DONE = object()  # the decoder thread's last item


@dataclass
class _Sampled:
    window: Window
    video: object  # engine.SampledVideo


def stream_windows(
    engine,
    source,
    *,
    window_s: float = defaults.WINDOW_S,
    hop_s: float = defaults.HOP_S,
    threshold: float | None = None,
    max_window_frames: int | None = None,
    fps: float = 25.0,
    live: bool | None = None,
    timeout_s: float = defaults.STREAM_TIMEOUT_S,
    options: dict[str, str] | None = None,
) -> Iterator[WindowResult]:
    """Per-window results over ``source``, in window order (see :mod:`qclip_engine.stream`).

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
        max_window_frames = default_window_frames(engine, window_s)
    if max_window_frames < 1:
        raise ValueError(f"max_window_frames must be ≥ 1, got {max_window_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    # Frames made as the engine's model wants them (its preprocessing), as the engine decodes files.
    opener, name, is_live = open_source(source, tuple(engine.image_size), fps, timeout_s, options, engine.preprocessing)
    if live is None:
        live = is_live
    windower = Windower(window_s, hop_s, int(max_window_frames))
    return _run(engine, opener, name, windower, threshold, bool(live))


def default_window_frames(engine, window_s: float) -> int:
    """Frames a window holds at most by default: ``LIVE_FPS_CAP`` per second, within the engine's
    analysis bound and at least the frames the model takes."""
    return min(engine.max_analysis_frames, max(engine.num_frames, math.ceil(LIVE_FPS_CAP * window_s)))


def closed_windows(frames, windower: Windower, name: str, *, strict: bool = False,
                   stop: threading.Event | None = None) -> Iterator[Window]:
    """The windows ``frames`` (an opened source: ``sources.open_source``) close, in order, the last ones
    at its end (``Windower.finish``; a cut-short source's last window carries ``truncated``). Raises
    for bad media (``DecodeFailedError`` when no frame came; ``TruncatedVideoError`` for a cut-short
    source under ``strict``) — the stream loop and the monitor (``monitor/source.py``) share this.
    A set ``stop`` ends it at the next frame, with nothing more."""
    display_name = Path(name).name if "://" not in name else name
    end = MediaEnd(None)
    for raw, convert in frames:
        if stop is not None and stop.is_set():
            return
        if raw is END_OF_MEDIA:
            end = convert
            break
        yield from windower.add(raw, convert)
    if windower.last_t is None:
        raise DecodeFailedError(f"{display_name}: no frames", path=name)
    if end.truncation and strict:  # the strict policy: the open windows give way to the error
        raise TruncatedVideoError(f"{display_name}: {end.truncation}", path=name)
    last = windower.finish(end.frame_s)
    if end.truncation and last:  # scored on what is there, as a file cut short is
        last[-1].warnings = (last[-1].warnings or []) + [{"code": "truncated", "message": end.truncation}]
    yield from last


def sample_window(engine, window: Window, name: str):
    """``window``'s frames through the engine's sampler (``engine.sample_frames``): a ``SampledVideo``."""
    t0 = time.perf_counter()
    video = engine.sample_frames(window.frames, f"{name}#{window.index}", window.times)
    video.timing_ms["sample"] = (time.perf_counter() - t0) * 1e3
    return video


def _produce(engine, opener, name, windower: Windower, out: queue.Queue, stop: threading.Event) -> None:
    """Decoder thread: frames → windows → sampled windows (or a final error record) → ``out``."""

    def put(item) -> bool:
        while not stop.is_set():  # never block for good: the consumer may have gone
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    frames = None
    try:
        frames = opener()
        for w in closed_windows(frames, windower, name, strict=engine.strict, stop=stop):
            if stop.is_set() or not put(_Sampled(w, sample_window(engine, w, name))):
                return
    except Exception as exc:  # bad media (or a failing iterator) ends the stream with a record
        k, start, end, n = windower.current()
        put(error_window(k, start, end, n, exc))
    finally:
        if hasattr(frames, "close"):
            frames.close()  # closes the container now, not at garbage collection
        put(_DONE)


def window_result(window: Window, video, result, threshold: float | None, now: float) -> WindowResult:
    """A scored window's record: the engine's ``VideoResult`` for ``video`` (the window's sampled
    frames) with the window's bounds, picks and warnings; ``now``: perf_counter when it came back."""
    w = window
    if not result.ok:  # the engine's error for this window alone (e.g. non_finite_output): the stream goes on
        return WindowResult(index=w.index, start_s=w.start_s, end_s=w.end_s, frames_in_window=len(w.frames),
                            partial=w.partial, error=result.error, warnings=w.warnings, timing_ms=result.timing_ms)
    return WindowResult(
        index=w.index,
        start_s=w.start_s,
        end_s=w.end_s,
        score=result.score,
        mos=result.mos,
        levels=result.levels,
        frames_in_window=len(w.frames),
        partial=w.partial,
        alert=threshold is not None and result.score < threshold,
        frames=[int(w.numbers[i]) for i in video.indices],
        frame_times=[round(float(t), 6) for t in video.times],
        backend=result.backend,
        warnings=w.warnings,
        timing_ms=result.timing_ms | {"latency": (now - w.closed_at) * 1e3},
    )


def _score(engine, batch: list[_Sampled], threshold: float | None) -> list[WindowResult]:
    try:
        results = engine.run_batch([s.video for s in batch])
    except Exception as exc:  # the backend failed: each window of the batch says so
        return [error_window(s.window.index, s.window.start_s, s.window.end_s, len(s.window.frames), exc) for s in batch]
    now = time.perf_counter()
    return [window_result(s.window, s.video, r, threshold, now) for s, r in zip(batch, results)]


def _run(engine, opener, name, windower: Windower, threshold, live: bool) -> Iterator[WindowResult]:
    out: queue.Queue = queue.Queue(maxsize=2 * engine.batch)
    stop = threading.Event()
    worker = threading.Thread(target=_produce, args=(engine, opener, name, windower, out, stop),
                              name="qclip-stream-decode", daemon=True)
    closed = False

    def take(timeout: float | None):
        nonlocal closed
        if closed:  # a closed source keeps saying so
            raise Closed
        item = out.get(timeout=timeout)  # None: wait for ever; else queue.Empty when nothing came
        if item is _DONE:
            closed = True
            raise Closed
        return item

    # Live sources take only what is already waiting (latency first); files wait for company.
    max_wait_s = 0.0 if live else engine.batch_timeout_s
    worker.start()
    try:
        while batch := next_batch(take, max_items=engine.batch, max_wait_s=max_wait_s,
                                  counts=lambda item: isinstance(item, _Sampled), wait="gap"):
            sampled: list[_Sampled] = []
            for item in batch:
                if isinstance(item, _Sampled):
                    sampled.append(item)
                    continue
                if sampled:
                    yield from _score(engine, sampled, threshold)
                yield item  # an error record: the decoder stopped, the stream ends after it
                return
            if sampled:
                yield from _score(engine, sampled, threshold)
    finally:
        # The producer never blocks on the queue (it polls ``stop``), so it ends at its next
        # frame; one stuck in a network read is a daemon and is left to its read timeout.
        stop.set()
        worker.join(timeout=2.0)
