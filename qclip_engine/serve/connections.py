"""Connections before they are requests: a header deadline and a bound per client address.

uvicorn reads a request's headers with no deadline (its keep-alive timeout ends at the first byte
of the next request), so a client that dribbles one header byte at a time holds a socket for as
long as it likes, and enough of them exhaust the server's file descriptors. :func:`guarded_protocol`
makes uvicorn's own HTTP protocol class (httptools or h11, as uvicorn picks) enforce two rules:

* **Header deadline.** A request's headers must be complete ``header_timeout_s`` after the
  connection opened, or after the previous answer on it; past that the client gets 408
  ``header_timeout`` and the connection is closed. A request whose headers are in is not
  affected: its body has the service's minimum rate (``serve/inputs.py``) and its deadline.
* **Connections per address.** At most ``max_per_client`` open connections per client address; a
  connection beyond is answered 429 ``too_many_connections`` and closed as it arrives.

What a reverse proxy in front should still do is said in the README ("The service"): total
connection limits and per-address rates across many addresses belong there. ``qclip-serve`` and
the service tests use it; Ray Serve's proxy (``qclip-serve --ray``) has its own connection handling.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Callable

log = logging.getLogger("qclip_engine.serve")


def _answer(status: int, reason: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer in the error contract's shape, closing the connection."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def guarded_protocol(base: type[asyncio.Protocol], *, header_timeout_s: float, max_per_client: int,
                     on_refusal: Callable[[str], None] | None = None) -> type[asyncio.Protocol]:
    """``base`` (uvicorn's HTTP protocol class) with the header deadline and the per-address bound of
    the module docstring; ``on_refusal(code)`` is told of every refusal (the service counts them)."""
    if not header_timeout_s > 0 or max_per_client < 1:
        raise ValueError("header_timeout_s must be > 0 and max_per_client ≥ 1")
    open_by_host: Counter = Counter()  # shared by every connection of this server (one event loop)
    refused = on_refusal or (lambda code: None)

    class GuardedProtocol(base):  # type: ignore[valid-type, misc]
        _host: str | None = None  # the address counted in open_by_host, once counted
        _deadline: asyncio.TimerHandle | None = None
        _seen_cycle = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            host = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else ""
            if open_by_host[host] >= max_per_client:
                refused("too_many_connections")
                transport.write(_answer(429, "Too Many Requests", "too_many_connections",
                                        f"{max_per_client} connections from this address are open already"))
                transport.close()
                return
            open_by_host[host] += 1
            self._host = host
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._host is not None:
                open_by_host[self._host] -= 1
                if not open_by_host[self._host]:
                    del open_by_host[self._host]
                self._host = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            cycle = self.cycle
            if cycle is not None and cycle is not self._seen_cycle:  # a request's headers are complete
                self._seen_cycle = cycle
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()  # the next request's headers have their deadline too

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self._deadline = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_too_slow(self) -> None:
            self._deadline = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is under way: its body and answer have their own deadlines
            if self.transport.is_closing():
                return
            refused("header_timeout")
            log.info("closed a connection from %s: no complete request headers within %g s", self._host,
                     header_timeout_s)
            self.transport.write(_answer(408, "Request Timeout", "header_timeout",
                                         f"the request headers did not arrive within {header_timeout_s:g} s"))
            self.transport.close()

    GuardedProtocol.__name__ = GuardedProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedProtocol
