"""The monitor's webhook: events arrive in order as JSON; 5xx and timeouts are retried a bounded
number of times; a hanging, refusing or slow receiver never holds up ``send`` (the scoring path),
and what could not be delivered is counted, logged once, never raised."""

import http.server
import json
import logging
import socket
import threading
import time

import pytest

from qclip_engine.monitor.webhook import Webhook


class Receiver:
    """A loopback HTTP server; ``answers`` is the status of each request in turn (then 200), and
    ``hold`` (an Event) makes it hang until set."""

    def __init__(self, answers=(), hold: threading.Event | None = None):
        self.bodies, self.requests, self.answers = [], [], list(answers)
        self.hold, self.arrived = hold, threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(self.headers["Content-Type"])
                receiver.arrived.set()
                if receiver.hold is not None and not receiver.hold.wait(10):
                    return
                status = receiver.answers.pop(0) if receiver.answers else 200
                if status == 200:
                    receiver.bodies.append(json.loads(body))
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def receiver():
    made = []

    def make(**kwargs):
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def timed_sends(hook, events):
    longest = 0.0
    for event in events:
        started = time.perf_counter()
        hook.send(event)
        longest = max(longest, time.perf_counter() - started)
    return longest


def test_events_arrive_in_order_as_json(receiver):
    r = receiver()
    events = [{"type": "alert", "source": "cam1", "rule": "frozen", "n": i, "score": float("nan") if i == 3 else i}
              for i in range(20)]
    with Webhook(r.url) as hook:
        for event in events:
            hook.send(event)
        wait_for(lambda: hook.sent == 20)
    assert [b["n"] for b in r.bodies] == list(range(20))
    assert r.bodies[3]["score"] is None  # NaN goes out as null: strict JSON
    assert set(r.requests) == {"application/json"}
    assert (hook.failed, hook.dropped) == (0, 0)


def test_5xx_is_retried_and_the_event_sent_once(receiver):
    r = receiver(answers=[500, 503])
    with Webhook(r.url, retries=3, backoff_s=0.01) as hook:
        hook.send({"n": 1})
        wait_for(lambda: hook.sent + hook.failed == 1)
    assert (hook.sent, hook.failed) == (1, 0)
    assert len(r.requests) == 3 and r.bodies == [{"n": 1}]


def test_4xx_and_redirects_are_not_retried(receiver, caplog):
    r = receiver(answers=[400, 302])
    with caplog.at_level(logging.WARNING, logger="qclip_engine.monitor"), Webhook(r.url, backoff_s=0.01) as hook:
        hook.send({"n": 1})
        hook.send({"n": 2})
        wait_for(lambda: hook.failed == 2)
    assert len(r.requests) == 2 and hook.sent == 0  # the redirect was not followed (as a GET, without the event)
    assert [rec.getMessage().split(": ")[-1] for rec in caplog.records] == ["HTTP 400", "HTTP 302"]  # once each


def test_retries_are_bounded_and_logged_once(receiver, caplog):
    r = receiver(answers=[500] * 10)
    with caplog.at_level(logging.WARNING, logger="qclip_engine.monitor"), \
            Webhook(r.url, retries=2, backoff_s=0.01) as hook:
        hook.send({"n": 1})
        wait_for(lambda: hook.failed == 1)
    assert len(r.requests) == 3 and hook.sent == 0
    messages = [rec.getMessage() for rec in caplog.records]
    assert len(messages) == 1 and "HTTP 500" in messages[0] and "3 tries" in messages[0]
    assert "/hook" not in messages[0]  # logs name the receiver's host, not its path (tokens live there)


def test_a_hanging_receiver_never_blocks_send_and_close_is_bounded(receiver):
    r = receiver(hold=threading.Event())
    hook = Webhook(r.url, retries=1, timeout_s=0.3, backoff_s=0.01)
    assert timed_sends(hook, [{"n": i} for i in range(50)]) < 0.1
    # Each try times out after 0.3 s; two tries per event.
    wait_for(lambda: hook.failed >= 1, timeout=3)
    started = time.perf_counter()
    hook.close(timeout_s=0.5)
    assert time.perf_counter() - started < 1.0
    assert hook.sent == 0 and hook.failed + hook.dropped >= 49
    hook.send({"n": "late"})  # after close: dropped, not raised
    assert hook.dropped >= 49


def test_a_refused_port_is_counted_failed_without_blocking(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with caplog.at_level(logging.WARNING, logger="qclip_engine.monitor"):
        hook = Webhook(f"http://127.0.0.1:{port}/x", retries=2, backoff_s=0.01)
        assert timed_sends(hook, [{"n": i} for i in range(3)]) < 0.1
        wait_for(lambda: hook.failed == 3)
        hook.close()
    assert (hook.sent, hook.dropped) == (0, 0)
    assert len(caplog.records) == 3 and all("3 tries" in rec.getMessage() for rec in caplog.records)


def test_a_full_queue_drops_the_oldest(receiver):
    hold = threading.Event()
    r = receiver(hold=hold)
    with Webhook(r.url, max_queue=3, timeout_s=5) as hook:
        hook.send({"n": 0})
        assert r.arrived.wait(5)  # event 0 is in flight, held by the receiver
        assert timed_sends(hook, [{"n": i} for i in range(1, 10)]) < 0.1
        assert hook.dropped == 6 and hook.pending == 3
        hold.set()
        wait_for(lambda: hook.sent == 4)
    assert [b["n"] for b in r.bodies] == [0, 7, 8, 9]


def test_close_gives_up_queued_events(receiver):
    hold = threading.Event()
    r = receiver(hold=hold)
    hook = Webhook(r.url, timeout_s=5)
    hook.send({"n": 0})
    assert r.arrived.wait(5)
    for i in range(1, 6):
        hook.send({"n": i})
    hold.set()
    hook.close(timeout_s=2)
    assert hook.dropped == 5 and hook.sent == 1 and r.bodies == [{"n": 0}]


@pytest.mark.parametrize("url", ["", "ht!tp://x", "ftp://host/x", "http://", "http:///path", "host:80",
                                 "http://h:99999", None])
def test_bad_urls_are_refused_by_name(url):
    with pytest.raises(ValueError, match="webhook url") as info:
        Webhook(url)
    assert repr(url) in str(info.value)


@pytest.mark.parametrize("kwargs", [{"retries": -1}, {"timeout_s": 0}, {"backoff_s": -1}, {"max_queue": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Webhook("http://127.0.0.1:9/x", **kwargs)
