"""The shared batcher: one model thread scores the ready windows of every source together.

Source threads ``submit`` a sampled window with the callable that takes its result. The model
thread gathers batches with the engine's batching primitive
(:func:`qclip_engine.batching.next_batch`), latency first: it takes whatever windows are waiting,
up to ``engine.batch``, and never waits for a batch to fill (``max_wait_s`` 0). Windows are taken
in the order they became ready, whichever source they come from, so no source can starve
another; a slow or stuck source only has fewer windows in the queue. The backend is called from
this thread only (backends are not guaranteed thread-safe). A backend failure becomes an error
result for each window of its batch; a deliver callable that raises is logged and the thread
goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable

from ..batching import Closed, next_batch
from ..engine import QualityEngine, SampledVideo, VideoResult, error_result

log = logging.getLogger("qclip_engine.monitor")
_STOP = object()


class WindowBatcher:
    """Batches windows of all sources through ``engine``; ``on_batch(size, seconds)`` after each call."""

    def __init__(self, engine: QualityEngine, *, max_wait_s: float = 0.0,
                 on_batch: Callable[[int, float], None] | None = None):
        self.engine = engine
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self.queue: queue.Queue = queue.Queue()  # bounded per source by the sources (settings.max_pending)
        self.calls = 0  # backend calls
        self.windows = 0  # windows through them
        self.sizes: Counter = Counter()  # batch size → calls
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="qclip-monitor-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def queue_depth(self) -> int:
        return self.queue.qsize()

    def submit(self, video: SampledVideo, deliver: Callable[[VideoResult, float], None]) -> bool:
        """Queue ``video`` (False: refused, the batcher is stopped); ``deliver(result, now)`` is called
        from the model thread with its result (``now``: perf_counter when the batch came back)."""
        if self._closed:
            return False
        self.queue.put((video, deliver))
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        self._closed = True
        self.queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _take(self, timeout: float | None):
        item = self.queue.get(timeout=timeout)
        if item is _STOP:
            raise Closed
        return item

    def _main(self) -> None:
        while batch := next_batch(self._take, max_items=self.engine.batch, max_wait_s=self.max_wait_s, wait="first"):
            videos = [video for video, _ in batch]
            started = time.perf_counter()
            try:
                results = self.engine.run_batch(videos)
            except Exception as exc:  # the backend failed: each window of the batch says so
                log.exception("backend failed on a batch of %d windows", len(videos))
                results = [error_result(v.input, exc) for v in videos]
            now = time.perf_counter()
            self.calls += 1
            self.windows += len(videos)
            self.sizes[len(videos)] += 1
            if self.on_batch is not None:
                self.on_batch(len(videos), now - started)
            for (_, deliver), result in zip(batch, results):
                try:
                    deliver(result, now)
                except Exception:  # one source's bookkeeping never stops the others' scoring
                    log.exception("delivering a window result failed")
            if self._closed:
                return
