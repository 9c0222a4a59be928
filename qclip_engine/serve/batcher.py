"""The batcher: one model thread turns the videos of concurrent requests into backend calls.

Handlers put ``(video, future, enqueued, slot)`` on a bounded thread-safe queue and await the
(concurrent) future; the model thread gathers batches with
:func:`qclip_engine.batching.next_batch` — the batching primitive of the engine and the stream
too: up to ``max_batch`` videos, or fewer once ``max_wait_s`` has passed since the first — runs
``engine.run_batch`` on them and sets each future's result.

Why a thread rather than an asyncio task: the backend is only ever called from this one
thread, the warm-up included (backends are not guaranteed thread-safe, and GPU runtimes keep
state per thread), and a blocking ``take`` lets it use the shared batching primitive as is.

A request that timed out cancels its future (``asyncio.wait_for`` cancels the wrapping asyncio
future, which cancels the concurrent one while it is still pending): the model thread skips
it (``set_running_or_notify_cancel`` is false), and such videos do not count towards a full
batch. A queued video's slot is released when the thread takes it off the queue.

Stop: a flag, and a sentinel to wake a ``take`` blocked on the empty queue; ``take`` then
raises ``batching.Closed`` for ever, and whoever still waits gets ``ServiceStopping``. If the
thread dies of a bug, ``running`` turns false (/readyz answers 503) and the requests still
waiting are answered with a ``RuntimeError`` (500) rather than left to time out. A backend
failure is not that: each request of the failed batch gets the error record (500).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

from ..batching import Closed, next_batch
from ..engine import QualityEngine, SampledVideo, VideoResult, error_result
from .admission import Slot
from .errors import ApiError, ServiceStopping
from .metrics import ServiceMetrics

log = logging.getLogger("qclip_engine.serve")

_STOP = object()  # queued by stop(): wakes the model thread


@dataclass
class _Queued:
    video: SampledVideo
    future: Future  # of the VideoResult; the handler awaits it through asyncio.wrap_future
    enqueued: float  # time.perf_counter() when queued
    slot: Slot


class _NoSlot:
    """The slot of a video that belongs to no request (a monitored window): nothing to hold."""

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass


_NO_SLOT = _NoSlot()


def _counts(item: _Queued) -> bool:
    return not item.future.cancelled()  # a timed-out request's video does not fill a batch


def _fail(item: _Queued, exc: BaseException) -> None:
    """Answer ``item`` with ``exc`` unless it is answered or cancelled already."""
    if not item.future.done() and (item.future.running() or item.future.set_running_or_notify_cancel()):
        item.future.set_exception(exc)


class Batcher:
    """Batches of up to ``max_batch`` videos, run by one model thread; ``capacity`` videos may wait."""

    def __init__(self, engine: QualityEngine, metrics: ServiceMetrics, *, max_batch: int, max_wait_s: float,
                 capacity: int):
        self.engine = engine
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue: queue.Queue = queue.Queue(maxsize=capacity)
        self.batch_seconds = 0.0  # moving average of one backend call, for Retry-After
        self.failure: str | None = None  # why the model thread died, if it did
        self._closed = False
        self._lock = threading.Lock()  # nothing is queued once closed (submit vs stop and the thread's death)
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    def start(self, warm_up: list[SampledVideo]) -> Future:
        """Start the model thread; its first backend call is ``warm_up``, whose results the returned
        future carries. Batches follow only if that call succeeded."""
        warmed: Future = Future()
        self._thread = threading.Thread(target=self._main, args=(warm_up, warmed), name="qclip-model")
        self._thread.start()
        return warmed

    async def submit(self, video: SampledVideo, slot: Slot) -> VideoResult:
        """``video``'s result, from the batch it joins (call from the event loop)."""
        future: Future = Future()
        slot.hold()  # the queued video keeps the slot until the model thread takes it
        try:
            with self._lock:
                if self._closed:
                    raise self._closed_error()
                self.queue.put_nowait(_Queued(video, future, time.perf_counter(), slot))
        except queue.Full:  # admission keeps this from happening; answer rather than hang
            slot.release()
            raise ApiError(503, "overloaded", "the batch queue is full; retry later", {"Retry-After": "1"}) from None
        except BaseException:
            slot.release()
            raise
        return await asyncio.wrap_future(future)  # a timeout cancels it, and the model thread skips the video

    def submit_from_thread(self, video: SampledVideo) -> Future:
        """Queue a video from any thread, holding no request slot — a monitored stream's window when
        the monitor shares this model thread (``monitor/shared.py``); its future. Raises
        ``queue.Full`` when the queue is full and ``ServiceStopping`` once stopped."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self.queue.put_nowait(_Queued(video, future, time.perf_counter(), _NO_SLOT))
        return future

    def stop(self) -> None:
        """No more batches; videos still queued are answered ``ServiceStopping``. Does not wait
        for a backend call in progress (its requests get their results when it ends)."""
        self._close()
        with contextlib.suppress(queue.Full):  # full: the thread is not blocked, and sees the flag
            self.queue.put_nowait(_STOP)

    # -- the model thread ------------------------------------------------------------------------
    def _main(self, warm_up: list[SampledVideo], warmed: Future) -> None:
        if not warmed.set_running_or_notify_cancel():  # the service stopped before the thread began
            return
        try:
            results = self.engine.run_batch(warm_up)
        except BaseException as exc:
            warmed.set_exception(exc)
            return
        warmed.set_result(results)
        batch: list[_Queued] = []
        try:
            while batch := next_batch(self._take, max_items=self.max_batch, max_wait_s=self.max_wait_s,
                                      counts=_counts, wait="first"):  # bounded latency per request
                self._run(batch)
        except BaseException as exc:  # a bug here, not a backend failure (those are answered per request)
            log.exception("the model thread stopped")  # /readyz answers 503 from here on
            self.failure = f"{type(exc).__name__}: {exc}"
            self._close()
            for item in batch:
                _fail(item, self._closed_error())

    def _take(self, timeout: float | None) -> _Queued:
        """``next_batch``'s source: ``queue.Empty`` when nothing came in time, ``Closed`` once stopped."""
        if self._closed:
            raise Closed
        item = self.queue.get(timeout=timeout)
        if item is _STOP:
            raise Closed
        return item

    def _run(self, batch: list[_Queued]) -> None:
        live = []
        for item in batch:
            item.slot.release()  # off the queue: the video no longer holds its request's slot
            if item.future.set_running_or_notify_cancel():  # false: the request timed out while queued
                live.append(item)
        if not live:
            return
        if self._closed:  # stopped while the batch gathered
            for item in live:
                item.future.set_exception(self._closed_error())
            return
        started = time.perf_counter()
        for item in live:
            wait = started - item.enqueued
            item.video.timing_ms["queue"] = wait * 1e3
            self.metrics.queue_wait.observe(wait)
        try:
            results = self.engine.run_batch([item.video for item in live])
        except Exception as exc:  # the backend failed: each request of the batch says so
            log.exception("backend failed on a batch of %d", len(live))
            results = [error_result(item.video.input, exc) for item in live]
        elapsed = time.perf_counter() - started
        self.batch_seconds = elapsed if not self.batch_seconds else 0.8 * self.batch_seconds + 0.2 * elapsed
        self.metrics.model_latency.observe(elapsed)
        self.metrics.batch_size.observe(len(live))
        self.metrics.videos_scored.inc(sum(r.ok for r in results))
        for item, result in zip(live, results):
            item.future.set_result(result)

    # -- closing ---------------------------------------------------------------------------------
    def _close(self) -> None:
        with self._lock:
            self._closed = True
        while True:  # whoever still waits is answered, not left hanging
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP:
                item.slot.release()
                _fail(item, self._closed_error())

    def _closed_error(self) -> Exception:
        if self.failure is not None:
            return RuntimeError(f"the model thread stopped: {self.failure}")
        return ServiceStopping("the service is shutting down")
