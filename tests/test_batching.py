"""The batching primitive (qclip_engine.batching): full batches never wait, partial ones wait by rule."""

import queue
import threading
import time

import pytest

from qclip_engine.batching import Closed, next_batch


def source(items, delays=None):
    """A ``take`` over ``items`` arriving after ``delays`` seconds (from the call that starts it)."""
    q: queue.Queue = queue.Queue()
    done = object()

    def feed():
        for item, delay in zip(items, delays or [0.0] * len(items)):
            time.sleep(delay)
            q.put(item)
        q.put(done)

    threading.Thread(target=feed, daemon=True).start()
    closed = False

    def take(timeout):
        nonlocal closed
        if closed:
            raise Closed
        item = q.get(timeout=timeout)
        if item is done:
            closed = True
            raise Closed
        return item

    return take


def drain(take, **kw):
    batches = []
    while batch := next_batch(take, **kw):
        batches.append(batch)
    return batches


def test_items_already_waiting_fill_batches_up_to_max_items():
    assert drain(source(list(range(7))), max_items=3, max_wait_s=1.0) == [[0, 1, 2], [3, 4, 5], [6]]


def test_uncounted_items_ride_along_without_filling_a_batch():
    items = ["a", "err", "b", "c", "err2", "d"]
    batches = drain(source(items), max_items=2, max_wait_s=1.0, counts=lambda x: not x.startswith("err"))
    assert batches == [["a", "err", "b"], ["c", "err2", "d"]]


def test_wait_first_closes_a_batch_max_wait_after_its_first_item():
    # Items 0.06 s apart: with a 0.15 s budget from the first item, a batch holds about three.
    take = source(list(range(6)), [0.0] + [0.06] * 5)
    batches = drain(take, max_items=10, max_wait_s=0.15, wait="first")
    assert len(batches) >= 2 and max(len(b) for b in batches) <= 4
    assert [x for b in batches for x in b] == list(range(6))


def test_wait_gap_keeps_a_batch_open_while_items_keep_coming():
    take = source(list(range(6)), [0.0] + [0.06] * 5)
    assert drain(take, max_items=10, max_wait_s=0.5, wait="gap") == [list(range(6))]


def test_a_gap_longer_than_the_wait_closes_the_batch():
    take = source([0, 1, 2], [0.0, 0.0, 0.4])
    assert drain(take, max_items=10, max_wait_s=0.1, wait="gap") == [[0, 1], [2]]


def test_zero_wait_takes_only_what_is_already_there():
    take = source([0, 1, 2], [0.0, 0.0, 0.8])
    time.sleep(0.25)
    assert drain(take, max_items=10, max_wait_s=0.0) == [[0, 1], [2]]


def test_a_closed_source_gives_an_empty_batch():
    def take(timeout):
        raise Closed

    assert next_batch(take, max_items=4, max_wait_s=0.1) == []


@pytest.mark.parametrize("kw", [{"max_items": 0}, {"max_items": 2, "wait": "never"}])
def test_bad_arguments_are_refused(kw):
    with pytest.raises(ValueError):
        next_batch(lambda t: 1, max_wait_s=0.1, **{"max_items": 2} | kw)
