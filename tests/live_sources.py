"""Live sources on loopback for the monitor's tests and its load benchmark.

A pre-encoded MPEG-TS clip (``encode_ts``) is re-sent in real time, looping, by
``LiveTSServer`` (HTTP, many clients, fault controls: stall, drop, garbage) or by the static
ffmpeg itself (``UdpSender``: ``-re -stream_loop -1 -c copy`` to UDP, or one HTTP client).
``refused_url`` and ``SilentServer`` are sources that never deliver. Everything binds
127.0.0.1 only; every thread and process started here ends in ``close()``.

    python tests/live_sources.py CLIP.ts [--port P]   # serve CLIP.ts until stdin closes or SIGTERM
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
TS_PACKET = 188
CHUNK = TS_PACKET * 7  # what a UDP datagram of MPEG-TS carries (pkt_size=1316)
HOST = "127.0.0.1"
_RESERVED: list[socket.socket] = []  # bound, never listening: their ports refuse connections


def encode_ts(path: str | Path, seconds: float = 0.0, size: tuple[int, int] = (640, 360), fps: int = 25,
              pattern: str = "testsrc2", *, frames: np.ndarray | None = None, input: str | Path | None = None,
              crf: int = 23) -> Path:
    """An H.264 MPEG-TS clip, no audio, a keyframe every second (``-g fps``: a joiner starts within a
    second), ``-tune zerolatency`` (no B-frames, no lookahead), as a live encoder sends it.

    The picture is ffmpeg's lavfi ``pattern`` (``testsrc2``, ``color=c=black`` …) for ``seconds`` at
    ``size`` (width, height), or ``frames`` (uint8 RGB ``[N, H, W, 3]``, piped raw: known frozen or
    black spans), or the first ``seconds`` of the video file ``input`` scaled to ``size``.
    """
    path = Path(path)
    width, height = size
    feed = None
    if frames is not None:
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        if frames.ndim != 4 or frames.shape[3] != 3:
            raise ValueError(f"frames must be uint8 RGB [N, H, W, 3], got {frames.shape}")
        source = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{frames.shape[2]}x{frames.shape[1]}",
                  "-r", str(fps), "-i", "-"]
        feed = frames.tobytes()
    elif input is not None:
        source = ["-i", str(input), "-t", f"{seconds:g}", "-vf", f"scale={width}:{height},fps={fps}"]
    else:
        spec = f"{pattern}:" if "=" in pattern else f"{pattern}="
        source = ["-f", "lavfi", "-i", f"{spec}size={width}x{height}:rate={fps}", "-t", f"{seconds:g}"]
    command = [FFMPEG, "-v", "error", "-y", *source, "-an", "-c:v", "libx264", "-preset", "veryfast",
               "-tune", "zerolatency", "-crf", str(crf), "-g", str(fps), "-keyint_min", str(fps),
               "-sc_threshold", "0", "-pix_fmt", "yuv420p", "-f", "mpegts", str(path)]
    subprocess.run(command, input=feed, check=True, capture_output=True, timeout=300)
    return path


def ts_duration(payload: bytes) -> float:
    """Media seconds of an MPEG-TS payload: its video packets' pts span plus one frame."""
    import av

    with av.open(io.BytesIO(payload), format="mpegts") as container:
        stream = container.streams.video[0]
        pts = [p.pts for p in container.demux(stream) if p.pts is not None]
        rate = stream.average_rate or stream.guessed_rate or 25
        if not pts:
            raise ValueError("no timed video packets in the payload")
        return float((max(pts) - min(pts)) * stream.time_base) + 1.0 / float(rate)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 now (TCP or, with ``socket.SOCK_DGRAM``, UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def refused_url(scheme: str = "http", path: str = "/live.ts") -> str:
    """A loopback URL that refuses connections: its port is held bound, never listening, by this
    process (so nothing else takes it meanwhile)."""
    s = socket.socket()
    s.bind((HOST, 0))
    _RESERVED.append(s)
    return f"{scheme}://{HOST}:{s.getsockname()[1]}{path}"


class _Client:
    __slots__ = ("sock", "base", "start", "sent")

    def __init__(self, sock: socket.socket, base: float, start: int):
        self.sock, self.base, self.start, self.sent = sock, base, start, 0


class LiveTSServer:
    """An HTTP server on 127.0.0.1 sending an MPEG-TS payload to each client in real time, looping.

    Pacing is by bytes: ``rate = len(payload) / duration`` bytes per second (the payload's own
    media duration), released every ``tick_s`` in whole 188-byte packets; one pacer thread serves
    every client (cheap with dozens), a short thread per connection reads its request. A client
    joins at the live position (``start="live"``: where the shared clock is, the next keyframe is
    at most a GOP away) or at the payload's start (``start="begin"``). Any ``/NAME.ts`` path gets
    the stream (``url_for(name)``: one server, many distinct sources); others get 404.

    Faults, usable mid-run: ``stall()`` stops the clock (connections stay open, nothing is sent)
    until ``resume()``; ``drop()`` closes the connections and the listening socket (new ones are
    refused) until ``come_back()`` listens again on the same port; ``garbage=True`` sends random
    bytes at the same rate (``rate`` bytes/s when there is no payload). The payload's timestamps
    restart at each loop: a client sees its clock jump back once a loop.
    """

    def __init__(self, payload: bytes | str | Path | None = None, *, duration_s: float | None = None,
                 garbage: bool = False, rate: float | None = None, port: int = 0, start: str = "live",
                 tick_s: float = 0.02, max_backlog_s: float = 10.0):
        if isinstance(payload, (str, Path)):
            payload = Path(payload).read_bytes()
        if start not in ("live", "begin"):
            raise ValueError(f"start must be 'live' or 'begin', got {start!r}")
        if payload is None and not garbage:
            raise ValueError("a payload is needed unless garbage=True")
        if rate is None:
            if payload is None:
                rate = 100_000.0
            else:
                rate = len(payload) / (duration_s if duration_s is not None else ts_duration(payload))
        self.rate = float(rate)
        self.garbage = garbage
        if garbage:  # random bytes, as many as 4 s of the rate
            payload = np.random.default_rng(0).integers(0, 256, max(int(4 * self.rate), CHUNK), dtype=np.uint8).tobytes()
        self.size = len(payload) - len(payload) % TS_PACKET or len(payload)
        self._data = memoryview(payload[:self.size] * 2)  # any slice up to ``size`` is contiguous
        self.duration_s = self.size / self.rate
        self.start, self.tick_s, self.max_backlog = start, tick_s, max_backlog_s * self.rate
        self._lock = threading.Lock()
        self._clients: list[_Client] = []
        self._released = 0.0  # bytes the clock has let out since the start
        self._stalled = False
        self._closed = threading.Event()
        self.clients = 0  # connections served the stream so far
        self.bytes_sent = 0
        self._listener = self._listen(port)
        self.port = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._pace, name="live-ts-pacer", daemon=True),
                         threading.Thread(target=self._accept, args=(self._listener,), name="live-ts-accept", daemon=True)]
        for t in self._threads:
            t.start()

    # -- addresses ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.url_for("live")

    def url_for(self, name: str) -> str:
        return f"http://{HOST}:{self.port}/{name}.ts"

    @property
    def active(self) -> int:
        """Connections open now."""
        with self._lock:
            return len(self._clients)

    # -- faults ---------------------------------------------------------------------------
    def stall(self) -> None:
        self._stalled = True

    def resume(self) -> None:
        self._stalled = False

    def drop(self) -> None:
        """Close every connection and stop listening: connections are refused until ``come_back``."""
        with self._lock:
            listener, self._listener = self._listener, None
            clients, self._clients = self._clients, []
        if listener is not None:
            _close(listener)
        for c in clients:
            _close(c.sock)

    def come_back(self) -> None:
        with self._lock:
            if self._listener is not None or self._closed.is_set():
                return
            self._listener = self._listen(self.port)
            listener = self._listener
        t = threading.Thread(target=self._accept, args=(listener,), name="live-ts-accept", daemon=True)
        self._threads.append(t)
        t.start()

    def close(self) -> None:
        self._closed.set()
        self.drop()
        for t in self._threads:
            t.join(timeout=2.0)

    def __enter__(self) -> LiveTSServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- inside ---------------------------------------------------------------------------
    @staticmethod
    def _listen(port: int) -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        s.listen(128)
        s.settimeout(0.1)  # the accept loop polls: a close from another thread does not wake accept()
        return s

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set() and self._listener is listener:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), name="live-ts-request", daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5.0)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < 16384:
                got = conn.recv(4096)
                if not got:
                    raise OSError("closed before the request ended")
                request += got
            parts = request.split(b"\r\n", 1)[0].split()
            target = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b""
            if parts[:1] != [b"GET"] or not (target.startswith(b"/") and target.endswith(b".ts")):
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                _close(conn)
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nCache-Control: no-cache\r\n"
                         b"Connection: close\r\n\r\n")
            conn.setblocking(False)
            with self._lock:
                if self._listener is None:  # dropped meanwhile
                    raise OSError("dropped")
                base = self._released
                start = int(base) % self.size // TS_PACKET * TS_PACKET if self.start == "live" else 0
                self._clients.append(_Client(conn, base, start))
                self.clients += 1
        except OSError:
            _close(conn)

    def _pace(self) -> None:
        last = time.monotonic()
        while not self._closed.wait(self.tick_s):
            now = time.monotonic()
            with self._lock:
                if not self._stalled:
                    self._released += self.rate * (now - last)
                released = self._released
                clients = list(self._clients)
            last = now
            gone = []
            for c in clients:
                due = int(released - c.base) // TS_PACKET * TS_PACKET - c.sent
                if due <= 0:
                    continue
                if due > self.max_backlog:  # a client this far behind is gone in all but name
                    gone.append(c)
                    continue
                offset = (c.start + c.sent) % self.size
                try:
                    n = c.sock.send(self._data[offset:offset + min(due, self.size)])
                except BlockingIOError:
                    continue
                except OSError:
                    gone.append(c)
                    continue
                c.sent += n
                self.bytes_sent += n
            if gone:
                with self._lock:
                    self._clients = [c for c in self._clients if c not in gone]
                for c in gone:
                    _close(c.sock)


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never answers (an open that times out)."""

    def __init__(self):
        self._listener = socket.socket()
        self._listener.bind((HOST, 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-accept", daemon=True)
        self._thread.start()

    def url_for(self, scheme: str = "http", path: str = "/live.ts") -> str:
        return f"{scheme}://{HOST}:{self.port}{path}"

    @property
    def url(self) -> str:
        return self.url_for()

    @property
    def clients(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2.0)
        _close(self._listener)
        for conn in self._held:
            _close(conn)

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class UdpSender:
    """The static ffmpeg re-sending ``clip`` in real time, looping, without re-encoding:
    ``ffmpeg -re -stream_loop -1 -i clip -c copy -f mpegts udp://127.0.0.1:PORT?pkt_size=1316``.

    ``.url`` is what a receiver opens. ``protocol="http"``: ffmpeg listens instead
    (``-listen 1 http://127.0.0.1:PORT/live.ts``): one client, and ffmpeg exits when it leaves.
    ffmpeg keeps the timestamps rising across loops (no clock jump). A subprocess: ``close()``
    stops it (SIGTERM, then SIGKILL).
    """

    def __init__(self, clip: str | Path, port: int | None = None, *, protocol: str = "udp"):
        if protocol not in ("udp", "http"):
            raise ValueError(f"protocol must be 'udp' or 'http', got {protocol!r}")
        self.protocol = protocol
        if protocol == "udp":
            self.port = port or free_port(socket.SOCK_DGRAM)
            target = ["-f", "mpegts", f"udp://{HOST}:{self.port}?pkt_size={CHUNK}"]
            self.url = f"udp://{HOST}:{self.port}"
        else:
            self.port = port or free_port()
            target = ["-f", "mpegts", "-listen", "1", f"http://{HOST}:{self.port}/live.ts"]
            self.url = f"http://{HOST}:{self.port}/live.ts"
        self.command = [FFMPEG, "-nostdin", "-hide_banner", "-v", "error", "-re", "-stream_loop", "-1",
                        "-i", str(clip), "-map", "0:v", "-c", "copy", *target]
        self._log = tempfile.TemporaryFile()  # a file, not a pipe: ffmpeg never blocks on its stderr
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=self._log)
        if protocol == "http":
            self._wait_listening(10.0)

    def _wait_listening(self, timeout_s: float) -> None:
        """Until ffmpeg listens (read off /proc/net/tcp: a probing connection would be its one client)."""
        deadline = time.monotonic() + timeout_s
        wanted = f"0100007F:{self.port:04X}"
        while time.monotonic() < deadline and self.alive():
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1] == wanted and fields[3] == "0A":  # local address, state LISTEN
                    return
            time.sleep(0.02)
        err = self.close()
        raise RuntimeError(f"ffmpeg did not listen on {self.url} within {timeout_s:g} s: {err}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the ffmpeg process used so far (0 once it is gone)."""
        return process_cpu_s(self.process.pid)

    def close(self) -> str:
        """Stop ffmpeg; what it wrote to stderr."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log.closed:
            return ""
        self._log.seek(0)
        err = self._log.read().decode(errors="replace")
        self._log.close()
        return err

    def __enter__(self) -> UdpSender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc (0.0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _serve_main() -> None:
    """Serve a clip until stdin closes or SIGTERM: prints ``PORT`` on its first line (a load
    benchmark runs the server in its own process, so its CPU is not the monitor's)."""
    import argparse
    import signal
    import sys

    parser = argparse.ArgumentParser(description="serve an MPEG-TS clip live over HTTP on 127.0.0.1")
    parser.add_argument("clip", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--start", default="live", choices=("live", "begin"))
    args = parser.parse_args()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    with LiveTSServer(args.clip, port=args.port, start=args.start) as server:
        print(server.port, flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        done.wait()


if __name__ == "__main__":
    _serve_main()
