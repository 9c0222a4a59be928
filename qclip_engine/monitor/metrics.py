"""Prometheus metrics of the live monitor (``qclip_monitor_*``), in a registry of its own (a
monitor may share a process with ``qclip-serve`` or another monitor, as tests do).

Per source (label ``source``): the last score and MOS, windows scored, window errors by code,
the source's state (one series per state, 1 for the current one), alerts raised and active by
rule, reconnects, dropped frames, and the window latency (window close to score). Shared: the
backend's batch sizes and call times, and the windows waiting for a batch. ``remove_source``
drops every series of a source, so a removed source leaves no stale values behind.
"""

from __future__ import annotations

import math
import threading
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# The source states of the monitor's state events (the shared interface spec: monitor/monitor.py).
STATES = ("connecting", "live", "stalled", "reconnecting", "failed", "stopped")
# Window close to score: a live window waits at most a batch or two, a loaded box a few seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BACKEND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class MonitorMetrics:
    """The ``qclip_monitor_*`` metrics; the monitor calls the ``on_*`` methods from its threads."""

    def __init__(self, max_batch: int):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be ≥ 1, got {max_batch}")
        max_batch = int(max_batch)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        src = ["source"]
        self.last_score = Gauge("qclip_monitor_last_score", "Score of the source's latest scored window", src,
                                registry=r)
        self.last_mos = Gauge("qclip_monitor_last_mos", "MOS of the source's latest scored window", src, registry=r)
        self.windows_scored = Counter("qclip_monitor_windows_scored", "Windows scored", src, registry=r)
        self.window_errors = Counter("qclip_monitor_window_errors", "Windows that ended in an error record, by code",
                                     ["source", "code"], registry=r)
        self.state = Gauge("qclip_monitor_source_state", "1 for the source's current state, 0 for the others",
                           ["source", "state"], registry=r)
        self.alerts_raised = Counter("qclip_monitor_alerts_raised", "Alerts raised, by rule", ["source", "rule"],
                                     registry=r)
        self.alerts_active = Gauge("qclip_monitor_alerts_active", "1 while the rule's alert is raised",
                                   ["source", "rule"], registry=r)
        self.reconnects = Counter("qclip_monitor_reconnects", "Reconnections to the source", src, registry=r)
        self.dropped_frames = Counter("qclip_monitor_dropped_frames",
                                      "Frames missing from windows (expected at the source's rate, not received)",
                                      src, registry=r)
        self.window_latency = Histogram("qclip_monitor_window_latency_seconds", "Window close to its score", src,
                                        buckets=LATENCY_BUCKETS, registry=r)
        # Powers of two up to the batch, and the batch itself: every possible size has its bucket edge
        # (as serve/metrics.py's qclip_batch_size).
        sizes = sorted({2**k for k in range(max_batch.bit_length()) if 2**k <= max_batch} | {max_batch})
        self.batch_size = Histogram("qclip_monitor_batch_size", "Windows per backend call", buckets=sizes,
                                    registry=r)
        self.backend_seconds = Histogram("qclip_monitor_backend_call_seconds", "One backend call over a batch",
                                         buckets=BACKEND_BUCKETS, registry=r)
        self.backend_calls = Counter("qclip_monitor_backend_calls", "Backend calls", registry=r)
        self.windows_queued = Gauge("qclip_monitor_windows_queued", "Sampled windows waiting for a batch",
                                    registry=r)
        # The label values used per source, so remove_source can drop each series by name whatever
        # prometheus_client's version (remove_by_labels is recent).
        self._lock = threading.Lock()
        self._codes: dict[str, set[str]] = {}
        self._rules: dict[str, set[str]] = {}

    # -- per source ------------------------------------------------------------------------------

    def on_window(self, source: str, record: dict, dropped: int | None = None) -> None:
        """A window record (the feed's ``window`` item or ``WindowResult.to_record()``); ``dropped``:
        the frames dropped since the previous window's end (windows overlap, so a record's own
        ``health.dropped_frames`` would count a drop once per window holding it); None: the record's."""
        error = record.get("error")
        if error:
            code = str(error.get("code") or "internal_error") if isinstance(error, dict) else "internal_error"
            with self._lock:
                self._codes.setdefault(source, set()).add(code)
            self.window_errors.labels(source, code).inc()
        else:
            self.windows_scored.labels(source).inc()
            if _finite(record.get("score")):
                self.last_score.labels(source).set(record["score"])
            if _finite(record.get("mos")):
                self.last_mos.labels(source).set(record["mos"])
        latency_ms = (record.get("timing_ms") or {}).get("latency")
        if _finite(latency_ms) and latency_ms >= 0:
            self.window_latency.labels(source).observe(latency_ms / 1000.0)
        if dropped is None:
            dropped = (record.get("health") or {}).get("dropped_frames")
        if _finite(dropped) and dropped > 0:
            self.dropped_frames.labels(source).inc(dropped)

    def on_state(self, source: str, state: str) -> None:
        for s in STATES:
            self.state.labels(source, s).set(1.0 if s == state else 0.0)

    def on_alert(self, source: str, rule: str, raised: bool) -> None:
        with self._lock:
            self._rules.setdefault(source, set()).add(rule)
        if raised:
            self.alerts_raised.labels(source, rule).inc()
        self.alerts_active.labels(source, rule).set(1.0 if raised else 0.0)

    def on_reconnect(self, source: str) -> None:
        self.reconnects.labels(source).inc()

    def remove_source(self, source: str) -> None:
        """Drop every series labelled with ``source`` (a source never seen: nothing to do)."""
        with self._lock:
            codes = self._codes.pop(source, set())
            rules = self._rules.pop(source, set())
        for metric in (self.last_score, self.last_mos, self.windows_scored, self.reconnects, self.dropped_frames,
                       self.window_latency):
            _remove(metric, source)
        for code in codes:
            _remove(self.window_errors, source, code)
        for rule in rules:
            _remove(self.alerts_raised, source, rule)
            _remove(self.alerts_active, source, rule)
        for state in STATES:
            _remove(self.state, source, state)

    # -- shared ----------------------------------------------------------------------------------

    def on_batch(self, size: int, seconds: float) -> None:
        """One backend call over ``size`` windows taking ``seconds``."""
        self.backend_calls.inc()
        self.batch_size.observe(size)
        if _finite(seconds) and seconds >= 0:
            self.backend_seconds.observe(seconds)

    def set_queue_depth_function(self, fn: Callable[[], float]) -> None:
        """``fn()``: the windows waiting for a batch, read at each scrape (a failing ``fn`` reads as
        NaN, so a scrape never fails with it)."""

        def depth() -> float:
            try:
                return float(fn())
            except Exception:
                return float("nan")

        self.windows_queued.set_function(depth)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _remove(metric, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except (KeyError, ValueError):  # not there (old prometheus_client versions raise KeyError)
        pass
