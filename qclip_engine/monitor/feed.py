"""The monitor's feed: every window record and event, fanned out to subscribers (the CLI's JSONL
writer, the HTTP API's Server-Sent Events, an embedding pipeline).

A subscriber holds a bounded buffer: one that falls behind loses its oldest items (counted in
``dropped``) and never slows the monitor, whose scoring thread publishes.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterator


class Subscription:
    """Items published after ``Feed.subscribe``, oldest first; ``get`` waits, iteration ends at ``close``."""

    def __init__(self, feed: "Feed", maxsize: int):
        if maxsize < 1:
            raise ValueError(f"maxsize must be ≥ 1, got {maxsize}")
        self._feed = feed
        self._items: deque = deque(maxlen=maxsize)
        self._ready = threading.Condition()
        self.dropped = 0  # items lost because this subscriber fell behind
        self.closed = False

    def put(self, item: dict) -> None:
        with self._ready:
            if self.closed:
                return
            if len(self._items) == self._items.maxlen:
                self.dropped += 1  # the deque drops its oldest
            self._items.append(item)
            self._ready.notify()

    def get(self, timeout: float | None = None) -> dict | None:
        """The next item, or None when none came within ``timeout`` or the subscription is closed."""
        with self._ready:
            if not self._items and not self.closed:
                self._ready.wait(timeout)
            return self._items.popleft() if self._items else None

    def __iter__(self) -> Iterator[dict]:
        while True:
            item = self.get(0.5)
            if item is not None:
                yield item
            elif self.closed:
                return

    def close(self) -> None:
        with self._ready:
            self.closed = True
            self._ready.notify_all()
        self._feed._forget(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Feed:
    """Publish once, deliver to every subscriber (thread-safe); items get a running ``id``."""

    def __init__(self):
        self._subscribers: list[Subscription] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.closed = False

    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        sub = Subscription(self, maxsize)
        with self._lock:
            if self.closed:
                sub.closed = True
            else:
                self._subscribers.append(sub)
        return sub

    def publish(self, item: dict) -> dict:
        with self._lock:
            item["id"] = next(self._ids)
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub.put(item)
        return item

    def close(self) -> None:
        with self._lock:
            self.closed = True
            subscribers, self._subscribers = self._subscribers, []
        for sub in subscribers:
            sub.close()

    def _forget(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)
