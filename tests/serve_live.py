"""A live uvicorn server in a thread, and raw-socket clients that misbehave (no test in this module).

``LiveServer`` runs an app on 127.0.0.1 (lifespan included), optionally behind the guarded HTTP
protocol of ``qclip-serve`` (serve/connections.py). ``Trickle`` holds raw connections that send a
head and then one byte every ``TICK_S``: slow uploads, or headers dribbled a byte at a time.
Good clients can speak from another loopback address (``good_client``), so per-address bounds
on the attacker's address leave them alone, as on a real network.
"""

import asyncio
import json
import select
import socket
import threading
import time

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from conftest import read_http_answer
from qclip_engine.serve import guarded_protocol

GOOD_ADDRESS = "127.0.0.2"  # the good clients' source address (loopback: all of 127/8 is local)
TICK_S = 0.5  # a trickle's step
DECLARED = 60000  # a slow client's Content-Length: under the fake server's body limit (4 KiB + 64 KiB)
HEAD = (b"POST /v1/score HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=fz\r\n"
        b"Content-Length: " + str(DECLARED).encode() + b"\r\n\r\n"
        b'--fz\r\nContent-Disposition: form-data; name="file"; filename="slow.mp4"\r\n\r\n')


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread of its own, lifespan included."""

    def __init__(self, app, guard: dict | None = None, until: str = "/readyz"):
        """``guard``: ``guarded_protocol``'s keywords (``header_timeout_s``, ``max_per_client``) to run
        behind the protocol ``qclip-serve`` runs; None: uvicorn's own. Returns once ``until`` answers 200
        (``/healthz``: up, whether or not the model loads)."""
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=5)
        if guard is not None:
            config.load()
            config.http_protocol_class = guarded_protocol(config.http_protocol_class, **guard,
                                                          on_refusal=app.state.service.metrics.refused)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])))
        self.thread.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(self.url + until, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the fake server's {until} never answered 200"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


def gauge(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def wait_gauge(url: str, name: str, at_least: float, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while gauge(url, name) < at_least and time.monotonic() < deadline:
        time.sleep(0.02)


def good_client(address: str = GOOD_ADDRESS) -> httpx.Client:
    """An HTTP client speaking from ``address`` (``GOOD_ADDRESS``: not the attackers' 127.0.0.1)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address))


class Trickle:
    """``n`` raw connections sending ``head`` and then one byte every ``TICK_S`` (``send_bytes``
    False: nothing after the head). Answers are kept as (seconds since that connection began,
    status, headers, body). ``replace``: a connection that got its answer is replaced by a new
    one until ``stop()`` (an attack that keeps coming)."""

    def __init__(self, port: int, n: int, head: bytes = HEAD, send_bytes: bool = True, replace: bool = False):
        self.port, self.head, self.send_bytes, self.replace = port, head, send_bytes, replace
        self.answers: list[tuple[float, int, dict, dict]] = []
        self.errors: list[str] = []
        self.live: dict[socket.socket, float] = {}
        for _ in range(n):
            self._open()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _open(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.sendall(self.head)
        self.live[sock] = time.monotonic()

    def _answer(self, sock: socket.socket) -> None:
        began = self.live.pop(sock)
        try:
            status, headers, body = read_http_answer(sock, timeout=10.0)
            self.answers.append((time.monotonic() - began, status, headers, json.loads(body)))
        except (OSError, AssertionError, ValueError) as exc:
            self.errors.append(repr(exc))
        sock.close()
        if self.replace and not self._stop.is_set():
            self._open()

    def _run(self) -> None:
        next_tick = time.monotonic() + TICK_S
        while self.live and not self._stop.is_set():
            readable, _, _ = select.select(list(self.live), [], [], max(0.0, next_tick - time.monotonic()))
            for sock in readable:
                self._answer(sock)
            if time.monotonic() >= next_tick:
                next_tick += TICK_S
                for sock in list(self.live):
                    if self.send_bytes:
                        try:
                            sock.send(b"x")
                        except OSError:
                            self._answer(sock)

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{len(self.live)} slow connections never got an answer"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(20)
        for sock in list(self.live):
            sock.close()
        self.live.clear()
