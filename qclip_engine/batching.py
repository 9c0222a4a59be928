"""Collect up to N items or wait T: the one batching primitive of the engine, the stream and the service.

A batch starts with the first item (waited for as long as it takes) and closes when
``max_items`` counted items are in, or when the wait runs out; items already waiting are
always taken at once, so a full batch never waits. What the wait counts from is the one
choice a caller makes:

* ``wait="first"`` — ``max_wait_s`` after the batch's first item: a lone item waits at most
  that long for company (bounded latency: the service, like Triton's ``max_queue_delay`` and
  Ray Serve's ``batch_wait_timeout_s``);
* ``wait="gap"`` — ``max_wait_s`` after the latest item: a batch keeps growing while items
  keep coming (fuller batches: batch scoring and file streams, whose decoders run ahead).

The three callers live in the thread world — decode futures (the engine), a queue filled
by a decoder thread (the stream), a queue filled by request handlers and drained by the
model thread (the service) — so one blocking function serves them all; the service's
asyncio handlers hand their videos to its model thread through a thread-safe queue.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, TypeVar

T = TypeVar("T")

# What a ``take`` raises when nothing came within its timeout.
NOTHING_YET = (queue.Empty, TimeoutError, FutureTimeout)


class Closed(Exception):
    """Raised by a ``take`` when its source has no more items."""


def next_batch(
    take: Callable[[float | None], T],
    *,
    max_items: int,
    max_wait_s: float,
    counts: Callable[[T], bool] = lambda item: True,
    wait: str = "first",
) -> list[T]:
    """The next batch from ``take``; ``[]`` once the source is closed and drained.

    ``take(timeout)`` returns the next item, raises one of ``NOTHING_YET`` when none came
    within ``timeout`` seconds (``None``: wait for ever) and ``Closed`` when there are no more.
    Only items for which ``counts(item)`` is true count towards ``max_items``; the others
    (error records travelling in order with the videos) ride along. ``wait``: see the module.
    """
    if max_items < 1:
        raise ValueError(f"max_items must be ≥ 1, got {max_items}")
    if wait not in ("first", "gap"):
        raise ValueError(f"wait must be 'first' or 'gap', got {wait!r}")
    try:
        first = take(None)
    except Closed:
        return []
    batch, counted = [first], int(bool(counts(first)))
    deadline = time.monotonic() + max_wait_s
    while counted < max_items:
        try:
            item = take(max(0.0, deadline - time.monotonic()))
        except NOTHING_YET:
            break
        except Closed:
            break
        batch.append(item)
        counted += bool(counts(item))
        if wait == "gap":
            deadline = time.monotonic() + max_wait_s
    return batch
