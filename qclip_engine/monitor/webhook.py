"""``Webhook``: POSTs monitor events (the alert events) as JSON to a URL, off the scoring path.

``send`` only puts the event on a bounded queue, so a slow, hanging or refusing receiver never
holds up a source or the batcher: when the queue is full its oldest event is dropped. One
daemon thread delivers the events in order, each with a bounded number of tries (connection
errors, timeouts and 5xx answers are retried with exponential backoff; a 4xx answer is the
receiver refusing this event, not retried, and a redirect is not followed). Outcomes are counted (``sent``, ``failed``,
``dropped``) and a failed event is logged once; nothing is raised to the caller.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import math
import threading
import urllib.error
import urllib.parse
import urllib.request

log = logging.getLogger("qclip_engine.monitor")


class Webhook:
    """Delivery of events to ``url`` (http or https), in the order sent.

    ``retries``: tries after the first for an event that failed in a way that may pass (a
    connection error, a timeout, a 5xx answer), ``backoff_s · 2^k`` seconds apart;
    ``timeout_s``: each try's connect and read timeout; ``max_queue``: events waiting at most.
    """

    def __init__(self, url: str, *, retries: int = 3, timeout_s: float = 2.0, backoff_s: float = 0.5,
                 max_queue: int = 1000):
        self.url = validate_url(url)
        if not (isinstance(retries, int) and retries >= 0):
            raise ValueError(f"webhook retries must be an integer ≥ 0, got {retries!r}")
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"webhook timeout_s must be > 0, got {timeout_s!r}")
        if not (backoff_s >= 0 and math.isfinite(backoff_s)):
            raise ValueError(f"webhook backoff_s must be ≥ 0, got {backoff_s!r}")
        if not (isinstance(max_queue, int) and max_queue >= 1):
            raise ValueError(f"webhook max_queue must be an integer ≥ 1, got {max_queue!r}")
        self.retries, self.timeout_s, self.backoff_s = retries, float(timeout_s), float(backoff_s)
        self.max_queue = max_queue
        self.sent = self.failed = self.dropped = 0
        self._where = _redacted(self.url)  # what logs show: no credentials, path or query (tokens live there)
        self._queue: collections.deque[bytes] = collections.deque()
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._overflowing = False
        self._thread = threading.Thread(target=self._run, name="qclip-monitor-webhook", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Events waiting to be delivered (not counting one being delivered)."""
        with self._cond:
            return len(self._queue)

    def send(self, event: dict) -> None:
        """Queue ``event`` for delivery; returns at once (the oldest waiting event is dropped if full)."""
        try:
            body = json.dumps(json_safe(event), default=str, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:  # e.g. a circular structure: not JSON
            with self._cond:
                self.failed += 1
            log.warning("webhook %s: event not sent, not encodable as JSON: %s", self._where, exc)
            return
        with self._cond:
            if self._closed.is_set():
                self.dropped += 1
                return
            if len(self._queue) >= self.max_queue:
                self._queue.popleft()
                self.dropped += 1
                if not self._overflowing:  # once per overflow, not once per event lost to it
                    log.warning("webhook %s: %d events waiting, dropping the oldest", self._where, self.max_queue)
                self._overflowing = True
            self._queue.append(body)
            self._cond.notify()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop delivering: events still waiting are given up (counted dropped); waits at most
        ``timeout_s`` for a try in progress (the thread is a daemon: it never holds up exit)."""
        with self._cond:
            self._closed.set()
            self.dropped += len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(max(0.0, timeout_s))

    def __enter__(self) -> Webhook:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed.is_set():
                    self._cond.wait()
                if self._closed.is_set():
                    return
                body = self._queue.popleft()
                if not self._queue:
                    self._overflowing = False
            try:
                ok, reason = self._deliver(body)
            except Exception as exc:  # never let one event end delivery of the others
                ok, reason = False, f"{type(exc).__name__}: {exc}"
            with self._cond:
                if ok:
                    self.sent += 1
                else:
                    self.failed += 1
            if not ok:
                log.warning("webhook %s: event not delivered: %s", self._where, reason)

    def _deliver(self, body: bytes) -> tuple[bool, str]:
        """One event's tries: (delivered, why not)."""
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                if self._closed.wait(self.backoff_s * 2 ** (attempt - 1)):
                    return False, f"{reason} (closed before try {attempt + 1})"
            request = urllib.request.Request(self.url, data=body, method="POST", headers={
                "Content-Type": "application/json", "User-Agent": "qclip-monitor"})
            try:
                with _OPENER.open(request, timeout=self.timeout_s) as answer:
                    answer.read()
                return True, ""
            except urllib.error.HTTPError as exc:
                reason = f"HTTP {exc.code}"
                exc.close()
                if exc.code < 500:  # refused (4xx) or sent elsewhere (3xx): trying again changes nothing
                    return False, reason
            except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, bad answer
                reason = _describe(exc)
        tries = self.retries + 1
        return False, f"{reason} after {tries} {'try' if tries == 1 else 'tries'}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, not a hop: urllib would follow a 301-303 with a GET and no body, and the
    event would count as sent though it never reached a receiver."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def validate_url(url) -> str:
    """``url`` if it is an http(s) URL with a host, else ``ValueError`` naming it."""
    ok = isinstance(url, str) and not any(c.isspace() or not c.isprintable() for c in url)
    if ok:
        try:
            parts = urllib.parse.urlsplit(url)
            # .port raises ValueError for a port that is not a number in range
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
        except ValueError:
            ok = False
    if not ok:
        raise ValueError(f"webhook url must be an http:// or https:// URL with a host, got {url!r}")
    return url


def _redacted(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def json_safe(value):
    """``value`` with NaN and infinities as None, NumPy scalars as Python ones and a lone surrogate
    (from a config's escape) spelled as an escape: strict UTF-8 JSON, which every receiver parses
    (the webhook's bodies, the HTTP API's answers and SSE payloads)."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return json_safe(value.item())  # a NumPy scalar (np.bool_, np.float32 ...): its Python value
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
