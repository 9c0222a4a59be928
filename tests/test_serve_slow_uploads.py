"""Slow clients against a real uvicorn server (in a thread) running the app on the fuzz tests' fake engine.

A request body still arriving holds no scoring slot; receives are bounded on their own
(``max_uploads``, 503); a body under the minimum rate after the grace period is dropped with
408 ``upload_too_slow`` — one that never sends a byte too. Slow clients are raw sockets that
send a multipart head, then a byte every ``TICK_S``; normal clients use httpx.
"""

import json
import logging
import random
import socket
import threading
import time
import types

import httpx
import numpy as np
import pytest

from qclip_engine import defaults
from qclip_engine.cli.serve import build_parser, settings_from_args
from qclip_engine.engine import SampledVideo
from qclip_engine.serve import service as service_module
from qclip_engine.serve.app import create_app
from conftest import read_http_answer
from serve_fakes import (GOOD, SEED, FakeEngine, check, fake_settings, json_bodies, make_tree, odd_paths,
                         odd_uploads, part)
from serve_live import DECLARED, HEAD, LiveServer, Trickle, gauge, wait_gauge

GRACE_S = 3.0
MIN_RATE = 1024  # bytes/s; a trickle of 1 byte per TICK_S is far below it
BLOCK = b"block-in-decode"  # BlockingEngine holds a file with these bytes in decode until released


class BlockingEngine(FakeEngine):
    release = threading.Event()

    def sample(self, source, cancel=None):
        if open(source, "rb").read() == BLOCK:
            assert self.release.wait(20)
            return SampledVideo(str(source), np.zeros((1, 2, 2, 3), np.uint8), np.zeros(1, int), np.zeros(1), {}, {})
        return super().sample(source, cancel)


@pytest.fixture
def live(tmp_path, monkeypatch, caplog):
    """``start(engine=FakeEngine, **settings)``: a live server on a fake engine, with the fuzz tree."""
    tree = make_tree(tmp_path)
    caplog.set_level(logging.INFO)
    servers = []

    def start(engine=FakeEngine, **overrides) -> types.SimpleNamespace:
        monkeypatch.setattr(service_module, "QualityEngine", engine)
        # These attacks come from the good clients' own address: the per-address bound is tested on its own.
        settings = fake_settings(tree, timeout_s=10.0, min_upload_bytes_per_s=MIN_RATE, upload_grace_s=GRACE_S,
                                 max_receives_per_client=10_000)
        server = LiveServer(create_app(settings.__class__(**vars(settings) | overrides)))
        servers.append(server)
        return types.SimpleNamespace(url=server.url, port=server.port, **vars(tree))

    yield start
    BlockingEngine.release.set()
    for server in servers:
        server.close()
    (tree.allowed / "locked.mp4").chmod(0o644)


def normal_upload(url: str, client: httpx.Client, data: bytes = GOOD) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.post(url + "/v1/score", files={"file": ("good.mp4", data)}, timeout=30)
    return response, time.monotonic() - started


def usual_latency(url: str, client: httpx.Client) -> float:
    latencies = []
    for _ in range(5):
        response, elapsed = normal_upload(url, client)
        assert response.status_code == 200, response.text
        latencies.append(elapsed)
    return sorted(latencies)[2]


def assert_all_dropped_as_too_slow(trickle: Trickle, served) -> None:
    assert not trickle.errors, trickle.errors[:3]
    assert trickle.answers
    for elapsed, status, headers, body in trickle.answers:
        assert (status, body["error"]["code"]) == (408, "upload_too_slow"), body
        assert headers.get("connection") == "close"
        assert GRACE_S - 0.2 <= elapsed < GRACE_S + 3, elapsed
        for server_path in (served.allowed, served.uploads, served.outside):
            assert str(server_path) not in json.dumps(body)


# -- tests -----------------------------------------------------------------------------------


def test_normal_uploads_are_served_while_64_slow_uploads_trickle(live):
    served = live(queue=8)  # fewer scoring slots than slow clients: a slot per upload would lock everyone out
    with httpx.Client() as client:
        usual = usual_latency(served.url, client)
        attack = Trickle(served.port, 64)
        started = time.monotonic()
        wait_gauge(served.url, "qclip_uploads_in_progress", 64, within_s=1.5)
        latencies = []
        for _ in range(5):
            response, elapsed = normal_upload(served.url, client)
            assert response.status_code == 200, response.text
            latencies.append(elapsed)
        during = time.monotonic() - started
        attack.wait(GRACE_S + 10)
    assert during < GRACE_S, "the normal requests did not overlap the slow ones"
    assert max(latencies) < 5 * usual + 1, (latencies, usual)
    assert len(attack.answers) == 64
    assert_all_dropped_as_too_slow(attack, served)
    assert list(served.uploads.iterdir()) == []  # the slow uploads' temp files are gone
    assert gauge(served.url, "qclip_uploads_in_progress") == 0


def test_silent_clients_get_408_after_the_grace_and_a_slow_steady_one_is_served(live):
    served = live()
    json_head = (b"POST /v1/score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 50\r\n\r\n")
    upload_head = HEAD.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"  # headers only, not a byte of body
    silent = [Trickle(served.port, 1, head, send_bytes=False) for head in (json_head, upload_head, HEAD)]

    # Slow, yet above the minimum on average (6 KiB over 4 s, past the grace, at 1 KiB/s minimum):
    # served. (Sent from this thread while the silent ones wait.)
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        body = part("note", b"n" * 6144) + part("file", GOOD, b"steady.mp4") + b"--fz--\r\n"
        sock.sendall(HEAD.split(b"\r\n\r\n")[0].replace(str(DECLARED).encode(), str(len(body)).encode()) + b"\r\n\r\n")
        started = time.monotonic()
        for i in range(16):
            sock.sendall(body[i * len(body) // 16:(i + 1) * len(body) // 16])
            time.sleep(0.25)
        assert time.monotonic() - started > GRACE_S
        status, _, raw = read_http_answer(sock, timeout=10.0)
        answer = json.loads(raw)
    assert status == 200, answer

    for trickle in silent:
        trickle.wait(GRACE_S + 10)
        assert len(trickle.answers) == 1
        assert_all_dropped_as_too_slow(trickle, served)
    assert list(served.uploads.iterdir()) == []


def test_receives_are_bounded_and_a_full_queue_refuses_before_the_body(live):
    BlockingEngine.release.clear()
    served = live(engine=BlockingEngine, queue=1, max_uploads=2)
    with httpx.Client() as client:
        # Two bodies arriving fill the receives: a third request is 503 at once, slots being free.
        silent = Trickle(served.port, 2, send_bytes=False)
        wait_gauge(served.url, "qclip_uploads_in_progress", 2, within_s=5)
        response, elapsed = normal_upload(served.url, client)
        assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded", response.text
        assert int(response.headers["retry-after"]) >= 1 and elapsed < GRACE_S
        silent.wait(GRACE_S + 10)
        assert [a[1] for a in silent.answers] == [408, 408]
        assert normal_upload(served.url, client)[0].status_code == 200  # receives free again

        # The one scoring slot held by a decode: a new request is refused before its body is read
        # (it sends none: without the early refusal it would wait for the grace, then get 408).
        results: list = []
        blocked = threading.Thread(target=lambda: results.append(normal_upload(served.url, client, BLOCK)))
        blocked.start()
        wait_gauge(served.url, "qclip_requests_in_flight", 1, within_s=5)
        early = Trickle(served.port, 1, HEAD.partition(b"\r\n\r\n")[0] + b"\r\n\r\n", send_bytes=False)
        early.wait(GRACE_S / 2)
        (elapsed, status, headers, body), = early.answers
        assert (status, body["error"]["code"]) == (503, "overloaded") and int(headers["retry-after"]) >= 1
        assert headers.get("connection") == "close"
        BlockingEngine.release.set()
        blocked.join(20)
        assert results[0][0].status_code == 200, results[0][0].text
    assert list(served.uploads.iterdir()) == []


def test_odd_bodies_paths_and_slow_uploads_together(live, caplog):
    """The acceptance test: odd bodies, odd paths and a slow-upload attack at once — no 500, no
    server path in any answer, normal requests served at their usual latency throughout."""
    served = live(queue=8)
    rng = random.Random(SEED + 3)
    requests = [({"content-type": "application/json"}, body, body.decode("utf-8", "replace"))
                for body in json_bodies(rng)]
    requests += [({"content-type": "application/json"}, json.dumps({"path": raw}).encode(), raw)
                 for raw in odd_paths(served, rng)]
    requests += [(headers, body, body.decode("utf-8", "replace")) for headers, body in odd_uploads(rng)
                 if "content-length" not in headers]  # uvicorn answers a bad Content-Length itself
    requests = rng.sample(requests, 160)  # a sample (~40 ms a request here: httpx and delayed ACKs)
    with httpx.Client() as client:
        usual = usual_latency(served.url, client)
        attack = Trickle(served.port, 64, replace=True)  # the attack keeps coming as its connections drop
        try:
            latencies, sent = [], 0
            for i, (headers, body, text) in enumerate(requests):
                try:
                    response = client.post(served.url + "/v1/score", content=body, timeout=30,
                                           headers={k: v.encode("latin-1") for k, v in headers.items()})
                except httpx.LocalProtocolError:  # a header httpx itself refuses to send
                    continue
                sent += 1
                check(served, caplog, response, text)
                if i % 10 == 0:
                    response, elapsed = normal_upload(served.url, client)
                    assert response.status_code == 200, response.text
                    latencies.append(elapsed)
            assert len(attack.live) >= 60  # still under attack at the end
        finally:
            attack.stop()
    assert sent > 140 and len(latencies) >= 16
    assert max(latencies) < 5 * usual + 1, (latencies, usual)
    assert_all_dropped_as_too_slow(attack, served)
    check(served, caplog, httpx.get(served.url + "/readyz"))
    deadline = time.monotonic() + 5  # the attack's last connections were closed by the client just now
    while list(served.uploads.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(served.uploads.iterdir()) == []


def test_cli_options_reach_the_settings_and_the_help():
    args = build_parser().parse_args(["art", "--max-uploads", "3", "--min-upload-kib-s", "2", "--upload-grace-s", "1.5"])
    settings = settings_from_args(args)
    assert (settings.max_uploads, settings.min_upload_bytes_per_s, settings.upload_grace_s) == (3, 2048, 1.5)
    assert settings_from_args(build_parser().parse_args(["art", "--min-upload-kib-s", "0"])).min_upload_bytes_per_s == 0
    defaults_ = settings_from_args(build_parser().parse_args(["art"]))
    assert defaults_.max_uploads == defaults.MAX_UPLOADS and defaults_.upload_grace_s == defaults.UPLOAD_GRACE_S
    assert defaults_.min_upload_bytes_per_s == defaults.MIN_UPLOAD_KIBPS * 1024
    text = " ".join(build_parser().format_help().split())
    for option, default in (("--max-uploads", defaults.MAX_UPLOADS), ("--min-upload-kib-s", defaults.MIN_UPLOAD_KIBPS),
                            ("--upload-grace-s", defaults.UPLOAD_GRACE_S)):
        assert option in text and f"(default: {default})" in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["art", "--upload-grace-s", "0"])
