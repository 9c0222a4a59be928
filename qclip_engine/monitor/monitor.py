"""``Monitor``: one engine watching many live sources, their windows scored together.

Threads: one per source (``monitor/source.py``: read, window, sample), one model thread
(``monitor/batcher.py``: every source's ready windows in shared backend calls), a ticker (stall
checks and time-based alert rules, every ``TICK_S``) and, with a webhook, its sender
(``monitor/webhook.py``). Everything the monitor says goes through ``publish`` to the feed
(``monitor/feed.py``), the metrics (``monitor/metrics.py``) and, for alerts, the webhook.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from .alerts import AlertRule
from .batcher import WindowBatcher
from .feed import Feed, Subscription
from .metrics import MonitorMetrics
from .settings import MonitorError, MonitorSettings, SourceSpec, check_api_source
from .source import SourceWorker
from .webhook import Webhook

log = logging.getLogger("qclip_engine.monitor")

TICK_S = 0.25
ALERT_HISTORY = 100  # alert events kept per source for its snapshot


class Monitor:
    """Watches sources with one ``engine`` (``qclip_engine.QualityEngine``); see the package docstring.

    ``add``/``remove`` work before and after ``start``; ``subscribe`` (or ``records``) gives the
    feed; ``snapshot``/``snapshot_one`` the state. Use as a context manager, or ``start``/``stop``.
    """

    def __init__(self, engine, settings: MonitorSettings | None = None, rules: list[AlertRule] | tuple = (), *,
                 metrics: MonitorMetrics | None = None, batcher: WindowBatcher | None = None):
        """``batcher``: the model thread to score through (one shared with an upload service in
        the same process, ``monitor/shared.py``); None: one of the monitor's own."""
        self.engine = engine
        self.settings = settings or MonitorSettings()
        self.rules = list(rules)
        self.metrics = metrics or MonitorMetrics(engine.batch)
        self.feed = Feed()
        self.batcher = batcher or WindowBatcher(engine)
        self.batcher.on_batch = self.metrics.on_batch
        self.metrics.set_queue_depth_function(self.batcher.queue_depth)
        self.webhook = Webhook(self.settings.webhook) if self.settings.webhook else None
        self._sources: dict[str, SourceWorker] = {}
        self._alert_history: dict[str, deque] = {}
        self._lock = threading.Lock()
        self._started = False
        self._stopping = threading.Event()
        self.closing = threading.Event()  # set when its HTTP server exits: the SSE streams end (monitor/http.py)
        self._ticker = threading.Thread(target=self._tick, name="qclip-monitor-ticker", daemon=True)

    # -- life -------------------------------------------------------------------------------------
    def start(self) -> "Monitor":
        with self._lock:
            if self._started:
                return self
            self._started = True
            workers = list(self._sources.values())
        self.batcher.start()
        self._ticker.start()
        for worker in workers:
            worker.start()
        return self

    def stop(self) -> None:
        """Stops every source and the model thread; subscribers' iterations end."""
        self._stopping.set()
        self.closing.set()
        with self._lock:
            workers = list(self._sources.values())
        for worker in workers:
            worker.stop()
        self.batcher.stop()
        if self.webhook is not None:
            self.webhook.close()
        self.feed.close()

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- sources ----------------------------------------------------------------------------------
    def add(self, spec: SourceSpec | dict, *, from_api: bool = False) -> dict:
        """Start watching ``spec``; its snapshot. ``from_api``: a client's request, whose file
        sources must lie in ``settings.allow_dirs``, are read as single-file formats only, and its
        FFmpeg options are limited to ``settings.API_OPTIONS``. Raises ``MonitorError``: ``invalid_source``,
        ``file_not_allowed`` (403), ``duplicate_name`` (409), ``too_many_sources`` (429),
        ``stopping`` (503)."""
        spec = SourceSpec.from_dict(spec)
        if from_api:
            check_api_source(spec, self.settings.allow_dirs)
        with self._lock:
            if self._stopping.is_set():
                raise MonitorError("stopping", "the monitor is shutting down", 503)
            if spec.name in self._sources:
                raise MonitorError("duplicate_name", f"a source named {spec.name!r} is already watched", 409)
            if len(self._sources) >= self.settings.max_sources:
                raise MonitorError("too_many_sources", f"at most {self.settings.max_sources} sources (settings.max_sources)", 429)
            worker = SourceWorker(spec, self, trusted=not from_api)
            self._sources[spec.name] = worker
            self._alert_history[spec.name] = deque(maxlen=ALERT_HISTORY)
            started = self._started
        self.publish({"type": "source_added", "source": spec.name, "url": spec.public_url})
        self.metrics.on_state(spec.name, worker.state)
        if started:
            worker.start()
        return worker.snapshot()

    def remove(self, name: str) -> None:
        """Stop watching ``name`` (``unknown_source``, 404, if it is not watched)."""
        with self._lock:  # the name is free again only once its history and series are gone
            worker = self._sources.pop(name, None)
            if worker is None:
                raise MonitorError("unknown_source", f"no source named {name!r}", 404)
            worker.stop()
            self._alert_history.pop(name, None)
            self.metrics.remove_source(name)
        self.publish({"type": "source_removed", "source": name, "url": worker.spec.public_url})

    def silence(self, name: str, seconds: float) -> float:
        """Alerts of ``name`` are still tracked and published (marked ``silenced``) but not sent to
        the webhook for ``seconds``; the unix time it ends."""
        worker = self._worker(name)
        with worker.lock:
            worker.silenced_until = time.time() + float(seconds)
            return worker.silenced_until

    def source_names(self) -> list[str]:
        with self._lock:
            return list(self._sources)

    def snapshot(self) -> list[dict]:
        with self._lock:
            workers = list(self._sources.values())
        return [worker.snapshot() for worker in workers]

    def snapshot_one(self, name: str) -> dict:
        worker = self._worker(name)
        with worker.lock:
            history = list(worker.history)
        return worker.snapshot() | {"history": history, "alert_history": list(self._alert_history.get(name, ()))}

    def _worker(self, name: str) -> SourceWorker:
        with self._lock:
            worker = self._sources.get(name)
        if worker is None:
            raise MonitorError("unknown_source", f"no source named {name!r}", 404)
        return worker

    # -- the feed -----------------------------------------------------------------------------------
    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        return self.feed.subscribe(maxsize)

    def records(self, maxsize: int = 10_000):
        """Every item published from now on (window records and events) until ``stop``."""
        with self.subscribe(maxsize) as sub:
            yield from sub

    def publish(self, item: dict) -> dict:
        item.setdefault("time", time.time())
        return self.feed.publish(item)

    def alert(self, worker: SourceWorker, event: dict) -> None:
        """An alert event of ``worker``'s rules: counted, kept in its history, published, and sent to
        the webhook unless the source is silenced."""
        silenced = time.time() < worker.silenced_until
        item = self.publish({"type": "alert", "source": worker.name} | event | {"silenced": silenced})
        history = self._alert_history.get(worker.name)
        if history is not None:
            history.append(item)
        self.metrics.on_alert(worker.name, event["rule"], event["status"] == "raised")
        if self.webhook is not None and not silenced:
            self.webhook.send(item)

    # -- the ticker ----------------------------------------------------------------------------------
    def _tick(self) -> None:
        while not self._stopping.wait(TICK_S):
            now = time.monotonic()
            with self._lock:
                workers = list(self._sources.values())
            for worker in workers:
                try:
                    worker.tick(now)
                except Exception:
                    log.exception("the ticker failed on source %s", worker.name)
