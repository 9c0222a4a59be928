"""One watched source: its thread reads, windows and samples it; the shared batcher scores it.

Per connection the thread opens the source as ``stream_windows`` does (``stream/sources.py``:
``open_source``; frames at model size by the engine's preprocessing), windows it with the same
rules (``stream/windowing.py``: ``Windower``; ``stream/loop.py``: ``closed_windows``,
``sample_window``) and hands each sampled window to the batcher, so a source's records are the
ones ``stream_windows`` gives for it alone. Every frame also goes to the health tracker
(``monitor/health.py``), whose summary rides on the window's record.

States: ``connecting`` (first attempt) → ``live`` (a frame arrived) → ``stalled`` (no frame for
``stall_s``; the monitor's ticker decides) → ``live`` again with the next frame; a connection that
ends or fails → ``reconnecting``, retried after ``backoff_s · 2^(n−1)`` seconds (capped at
``backoff_max_s``); ``failed`` after ``fail_after`` failed attempts in a row (still retried at the
cap; the next frame makes it live); ``stopped`` when the source is removed, or when a file played
once (``on_end: stop``) ends. A reconnection goes on with the next window index after the last
one, its timeline starting one hop boundary past the last frame (``Windower(first_index=…)``); a
clock restart or a resolution change inside a connection is the windowing's and the frame
conversion's business, as in ``stream_windows``.

Bounded memory: the open window's frames (at most ``max_window_frames``), at most
``max_pending`` sampled windows waiting for the model, and ``history`` compact records. A live
source whose windows wait past ``max_pending`` (the model fell behind) skips windows rather than
falling behind real time; its next record says how many (``windows_skipped`` warning). A file
that is not paced waits instead.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import asdict

from ..errors import error_record
from ..stream.loop import closed_windows, default_window_frames, sample_window, window_result
from ..stream.sources import END_OF_MEDIA, open_source
from ..stream.windowing import Windower
from .alerts import SourceAlerts, merge_rules
from .health import HealthTracker
from .settings import SourceSpec

log = logging.getLogger("qclip_engine.monitor")

STATES = ("connecting", "live", "stalled", "reconnecting", "failed", "stopped")
ITERATOR_FPS = 25.0
SOURCE_NICE = 5  # how much lower than the model thread a source's thread runs (see _lower_priority)  # only for sources without timestamps (never a URL or a file)
_EPS = 1e-9


def _lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority (Linux: a thread's own nice value; its decoder's threads,
    started from it, inherit it). The model thread keeps the process's priority, so under load the
    windows waiting for it are scored first and the decoders catch up from their buffers, rather
    than one model thread waiting behind every source's decoder for its time slices."""
    if nice and hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
        except OSError:  # not allowed here: the threads share the CPU as equals
            pass


class SourceWorker:
    """The thread and the bookkeeping of one source; ``monitor`` gives the engine, the batcher,
    the settings and ``publish``."""

    def __init__(self, spec: SourceSpec, monitor, *, trusted: bool = True):
        """``trusted``: from a config or Python (a file of any format FFmpeg reads); False for a
        client of the HTTP API (a file of a single-file format only)."""
        self.spec = spec
        self.trusted = trusted
        self.name = spec.name
        self.monitor = monitor
        self.settings = monitor.settings
        self.state = "connecting"
        self.since = time.time()
        self.reason: str | None = None
        self.error: dict | None = None
        self.added = time.time()
        self.windows = 0  # windows scored
        self.window_errors = 0
        self.reconnects = 0  # connections re-established after a drop
        self.failures = 0  # failed attempts in a row
        self.skipped = 0  # windows skipped because the model fell behind (all time)
        self._skipped_unreported = 0
        self.dropped_frames = 0
        self.last: dict | None = None
        self.history: deque = deque(maxlen=self.settings.history)
        self.rules = merge_rules(monitor.rules, list(spec.alerts))  # the rules in effect: global, then its own
        self.alerts = SourceAlerts(self.rules)
        self.silenced_until = 0.0
        self.last_frame_at: float | None = None  # monotonic
        self.removed = False
        self.stop_event = threading.Event()
        self.lock = threading.RLock()  # state, alerts, counters: the source, model and ticker threads
        self._pending = 0
        self._pending_changed = threading.Condition(self.lock)
        self._connected_once = False
        self._next_index = 0
        self._counted_until = 0.0  # the timeline up to which dropped frames are counted
        self.thread = threading.Thread(target=self._run, name=f"qclip-monitor-{spec.name}", daemon=True)

    # -- control (any thread) -------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Removed: nothing more is scored or published for it (its thread ends at its next frame,
        or at its read timeout if it is blocked in a read)."""
        with self.lock:
            self.stop_event.set()
            self.set_state("stopped", "removed")
            self.removed = True
            self._pending_changed.notify_all()

    def tick(self, now: float) -> None:
        """The ticker's check: stalled after ``stall_s`` without a frame; time-based alert rules."""
        with self.lock:
            if self.removed:
                return
            if self.state == "live" and self.last_frame_at is not None and now - self.last_frame_at >= self.settings.stall_s:
                self.set_state("stalled", f"no frame for {self.settings.stall_s:g} s")
            self._alert_events(self.alerts.tick(now))

    # -- state and events ---------------------------------------------------------------------
    def set_state(self, state: str, reason: str | None = None, error: dict | None = None) -> None:
        if error is not None and self.spec.public_url != self.spec.url:  # FFmpeg's messages name the URL
            error = error | {"message": str(error.get("message", "")).replace(self.spec.url, self.spec.public_url)}
        with self.lock:
            if self.removed or (state == self.state and error == self.error):
                return
            previous, self.state, self.since, self.reason, self.error = self.state, state, time.time(), reason, error
            self.monitor.publish({"type": "state", "source": self.name, "state": state, "previous": previous,
                                  "reason": reason, "error": error})
            self.monitor.metrics.on_state(self.name, state)
            self._alert_events(self.alerts.on_state(state, time.monotonic()))

    def _alert_events(self, events: list[dict]) -> None:
        for event in events:
            self.monitor.alert(self, event)

    # -- the source thread -----------------------------------------------------------------------
    def _run(self) -> None:
        _lower_priority(SOURCE_NICE)
        try:
            while not self.stop_event.is_set():
                ended = self._connection()
                if self.stop_event.is_set():
                    return
                if ended:
                    if not self.spec.reconnects:
                        self._drain(self.settings.timeout_s)  # its last records come before "stopped"
                        self.set_state("stopped", "the media ended")
                        return
                    self.set_state("reconnecting", "the media ended")
                delay = min(self.settings.backoff_max_s, self.settings.backoff_s * 2 ** max(0, self.failures - 1))
                if self.stop_event.wait(delay):
                    return
        except Exception as exc:  # a bug in the bookkeeping: say so on the source, never crash silently
            log.exception("source %s stopped", self.name)
            self.set_state("failed", "internal error", error_record(exc))

    def _connection(self) -> bool:
        """One connection: True when the media ended by itself, False when it failed."""
        engine, settings = self.monitor.engine, self.settings
        tracker = HealthTracker(settings.health)

        def on_frame(t: float, rgb) -> None:
            tracker.frame(t)
            if rgb is not None:
                self._health_events(tracker.pixels(t, rgb))

        windower = Windower(settings.window_s, settings.hop_s, default_window_frames(engine, settings.window_s),
                            first_index=self._next_index, on_frame=on_frame)
        frames, failure, got_frames, name = None, None, [False], self.spec.url
        try:
            target = self.spec.frames() if self.spec.frames is not None else (
                self.spec.file_path if self.spec.is_file else self.spec.url)
            opener, name, _ = open_source(target,
                                          tuple(engine.image_size), ITERATOR_FPS, settings.timeout_s,
                                          self.spec.options, engine.preprocessing, any_format=self.trusted)
            frames = opener()
            for window in closed_windows(self._watch(frames, got_frames), windower, name, stop=self.stop_event):
                self._submit(window, self._health(tracker, window), name)
        except Exception as exc:  # the connection failed or dropped: scored so far, reconnected later
            failure = error_record(exc)
        finally:
            if hasattr(frames, "close"):
                frames.close()
        if self.stop_event.is_set():
            return False
        if windower.last_t is not None:
            try:
                if failure is not None:  # the windows still open hold real frames: scored, partial past the drop
                    for window in windower.finish(None):
                        self._submit(window, self._health(tracker, window), name)
                end = windower.last_t + (windower.dt or 0.0)
                self._health_events(tracker.finish(end))
                self._next_index = max(windower.k + 1, math.ceil(end / settings.hop_s - _EPS))
            except Exception as exc:  # never the thread's end: the source is retried like any failure
                log.exception("source %s: closing its windows failed", self.name)
                failure = failure or error_record(exc)
        if failure is None and got_frames[0]:
            return True
        with self.lock:
            self.failures = 0 if got_frames[0] else self.failures + 1
            if failure is None:
                failure = {"code": "decode_failed", "message": "the source ended without a frame"}
            if self.failures >= settings.fail_after:
                self.set_state("failed", f"{self.failures} attempts in a row failed", failure)
            else:
                self.set_state("reconnecting", "the connection dropped" if got_frames[0] else "the attempt failed", failure)
            if got_frames[0]:
                self.failures = 1  # the first retry waits backoff_s
        return False

    def _health(self, tracker: HealthTracker, window) -> tuple[dict, int]:
        """The window's health summary, and the frames dropped in the part of it no earlier window
        covered (the source's running count: overlapping windows would count a drop twice)."""
        since = max(window.start_s, self._counted_until)
        new_drops = tracker.window(since, window.end_s)["dropped_frames"] if window.end_s > since else 0
        self._counted_until = max(self._counted_until, window.end_s)
        return tracker.window(window.start_s, window.end_s), new_drops

    def _drain(self, timeout_s: float) -> None:
        """Wait until the windows handed to the batcher have come back (or ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            while self._pending > 0 and not self.removed and time.monotonic() < deadline:
                self._pending_changed.wait(0.05)

    def _watch(self, frames, got_frames: list):
        """The frames, paced at their own rate for a file played in real time, each one noted as it
        arrives (the stall check, the live state)."""
        first_raw = start = None
        for raw, convert in frames:
            if raw is not END_OF_MEDIA:
                if self.spec.paced and raw is not None:
                    now = time.monotonic()
                    if first_raw is None or raw < first_raw:
                        first_raw, start = raw, now
                    delay = start + (raw - first_raw) - now
                    if delay > 0 and self.stop_event.wait(delay):
                        return
                got_frames[0] = True
                self._frame_arrived()
            yield raw, convert

    def _frame_arrived(self) -> None:
        self.last_frame_at = time.monotonic()
        if self.state == "live":
            return
        with self.lock:
            if self.removed:
                return
            if self.state in ("reconnecting", "failed") and self._connected_once:
                self.reconnects += 1
                self.monitor.metrics.on_reconnect(self.name)
            self._connected_once = True
            self.failures = 0
            self.set_state("live")

    def _health_events(self, spans: list[dict]) -> None:
        for span in spans:
            with self.lock:
                if self.removed:
                    return
                self.monitor.publish({"type": "health", "source": self.name} | span)
                self._alert_events(self.alerts.on_health(span))

    def _submit(self, window, health: tuple[dict, int], name: str) -> None:
        with self.lock:
            while self._pending >= self.settings.max_pending and not self.removed:
                if self.spec.paced or not self.spec.is_file:  # live: keep real time, skip this window
                    self.skipped += 1
                    self._skipped_unreported += 1
                    return
                self._pending_changed.wait(0.1)  # a file read as fast as it decodes: wait for the model
            if self.removed:
                return
            self._pending += 1
        try:
            video = sample_window(self.monitor.engine, window, name)
            queued = self.monitor.batcher.submit(video, lambda result, now: self._deliver(window, video, result, now,
                                                                                           health))
        except BaseException:
            self._not_pending()
            raise
        if not queued:  # the model thread's queue refused it (full, or stopping): skipped, as a lagging window
            self._not_pending()
            with self.lock:
                self.skipped += 1
                self._skipped_unreported += 1

    def _not_pending(self) -> None:
        with self.lock:
            self._pending -= 1
            self._pending_changed.notify_all()

    # -- the model thread -----------------------------------------------------------------------
    def _deliver(self, window, video, result, now: float, health: tuple[dict, int]) -> None:
        health, new_drops = health
        with self.lock:
            self._pending -= 1
            self._pending_changed.notify_all()
            if self.removed:
                return
            record = window_result(window, video, result, self.settings.threshold, now).to_record()
            if self._skipped_unreported:
                record["warnings"] = (record.get("warnings") or []) + [{
                    "code": "windows_skipped",
                    "message": f"{self._skipped_unreported} windows skipped before this one: the model fell behind"}]
                self._skipped_unreported = 0
            item = {"type": "window", "source": self.name} | record | {"health": health}
            if "error" in record:
                self.window_errors += 1
            else:
                self.windows += 1
            self.dropped_frames += new_drops
            self.last = item
            self.history.append({k: item.get(k) for k in ("index", "start_s", "end_s", "score", "mos", "levels", "error")})
            self.monitor.publish(item)
            self.history[-1]["time"] = item["time"]
            self.monitor.metrics.on_window(self.name, item, dropped=new_drops)
            self._alert_events(self.alerts.on_window(item))

    # -- views ----------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        with self.lock:
            return {
                "name": self.name,
                "url": self.spec.public_url,
                "state": self.state,
                "since": self.since,
                "reason": self.reason,
                "error": self.error,
                "last": self.last,
                "windows": self.windows,
                "errors": self.window_errors,
                "reconnects": self.reconnects,
                "skipped_windows": self.skipped,
                "dropped_frames": self.dropped_frames,
                "alerts": list(self.alerts.active),
                "silenced_until": self.silenced_until or None,
                "added": self.added,
                "settings": self.spec.public() | {"rules": [asdict(rule) for rule in self.rules]},
            }
