"""The service under attack: work that outlives its request, crafted media, connections and receives.

Each defence on its own against a live uvicorn server on the fake engine (serve_fakes.py): a timed-out
or abandoned request stops its decode and frees the worker; request headers have a deadline; an
address holds a bounded number of connections and of bodies being received; JSON path requests do
not need an upload slot. Then all the recipes at once against a real engine (a tiny random-init model):
every good request, from another address, answered 200 within its deadline while the attack runs.
"""

import json
import select
import socket
import threading
import time
import types
from pathlib import Path

import httpx
import pytest

from conftest import read_http_answer, tiny_model
from media import crafted_sample_table, encode, hls_playlist, moving_frames, y4m_header
from qclip_engine import save_artifact
from qclip_engine.errors import DecodeCancelledError
from qclip_engine.serve import service as service_module
from qclip_engine.serve.app import create_app
from qclip_engine.serve.settings import ServeSettings
from serve_fakes import GOOD, FakeEngine, fake_settings, make_tree, part
from serve_live import HEAD, LiveServer, Trickle, good_client, wait_gauge

SLOW = b"slow-until-cancelled"  # CancelAwareEngine decodes a file of these bytes until told to stop


class CancelAwareEngine(FakeEngine):
    """One decode worker; a SLOW file 'decodes' until its cancel event is set (as the real decoder
    checks between packets), and records when that happened."""

    workers = 1
    stopped: list = []  # seconds from the start of each SLOW decode to its cancellation

    def sample(self, source, cancel=None):
        if open(source, "rb").read() != SLOW:
            return super().sample(source, cancel)
        started = time.monotonic()
        if cancel is not None and cancel.wait(30):
            self.stopped.append(time.monotonic() - started)
            raise DecodeCancelledError("stopped")
        raise AssertionError("the decode of a request that ended was never stopped")


@pytest.fixture
def fake_live(tmp_path, monkeypatch):
    """``start(engine=FakeEngine, guard=None, **settings)``: a live server on a fake engine."""
    tree = make_tree(tmp_path)
    servers = []
    CancelAwareEngine.stopped = []

    def start(engine=FakeEngine, guard=None, until="/readyz", **overrides):
        monkeypatch.setattr(service_module, "QualityEngine", engine)
        server = LiveServer(create_app(fake_settings(tree, **overrides)), guard=guard, until=until)
        servers.append(server)
        return types.SimpleNamespace(url=server.url, port=server.port, **vars(tree))

    yield start
    for server in servers:
        server.close()
    (tree.allowed / "locked.mp4").chmod(0o644)


def upload(url: str, client: httpx.Client, data: bytes, timeout: float = 30,
           name: str = "clip.mp4") -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.post(url + "/v1/score", files={"file": (name, data)}, timeout=timeout)
    return response, time.monotonic() - started


def json_path(url: str, client: httpx.Client, path: str, timeout: float = 30) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.post(url + "/v1/score", json={"path": path}, timeout=timeout)
    return response, time.monotonic() - started


# -- work that outlives its request ---------------------------------------------------------------
def test_a_timed_out_request_stops_its_decode_and_frees_the_worker(fake_live):
    served = fake_live(engine=CancelAwareEngine, timeout_s=1.0)
    with httpx.Client() as client:
        response, elapsed = upload(served.url, client, SLOW)
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        # The one decode worker is free again: a good request right behind is served.
        response, _ = upload(served.url, client, GOOD)
        assert response.status_code == 200, response.text
    assert len(CancelAwareEngine.stopped) == 1 and CancelAwareEngine.stopped[0] < 1.5


def test_a_client_that_goes_away_stops_its_decode(fake_live):
    served = fake_live(engine=CancelAwareEngine, timeout_s=20.0)
    body = part("file", SLOW, b"slow.mp4") + b"--fz--\r\n"
    with socket.create_connection(("127.0.0.1", served.port)) as sock:
        sock.sendall(HEAD.split(b"\r\n\r\n")[0].replace(b"60000", str(len(body)).encode()) + b"\r\n\r\n" + body)
        wait_gauge(served.url, "qclip_requests_in_flight", 1, within_s=5)
    deadline = time.monotonic() + 5
    while not CancelAwareEngine.stopped and time.monotonic() < deadline:
        time.sleep(0.02)
    assert CancelAwareEngine.stopped, "the decode went on after its client left"
    with httpx.Client() as client:
        assert upload(served.url, client, GOOD)[0].status_code == 200


# -- connections and receives ---------------------------------------------------------------------
def test_request_headers_have_a_deadline(fake_live):
    served = fake_live(guard={"header_timeout_s": 1.0, "max_per_client": 64})
    dribbled = b"POST /v1/score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nX-Pad: " + b"p" * 40
    answers = []
    for keep_alive_first in (False, True):
        with socket.create_connection(("127.0.0.1", served.port)) as sock:
            if keep_alive_first:  # a served request, then the next one's headers dribbled on the same connection
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
                assert read_http_answer(sock, timeout=5)[0] == 200
            started = time.monotonic()
            for byte in dribbled:  # a byte every 0.2 s (uvicorn's keep-alive timer restarts on each): never complete
                if select.select([sock], [], [], 0.2)[0]:
                    break  # the server answered
                sock.sendall(bytes([byte]))
            status, headers, raw = read_http_answer(sock, timeout=5)
            answers.append((status, json.loads(raw)["error"]["code"], headers.get("connection"),
                            time.monotonic() - started))
            assert sock.recv(1) == b""  # closed after the answer
    for status, code, connection, elapsed in answers:
        assert (status, code, connection) == (408, "header_timeout", "close")
        assert 0.8 < elapsed < 3.0, elapsed
    with httpx.Client() as client:
        assert client.get(served.url + "/healthz").status_code == 200
        assert 'qclip_errors_total{code="header_timeout"} 2.0' in client.get(served.url + "/metrics").text


def test_connections_per_address_are_bounded(fake_live):
    served = fake_live(guard={"header_timeout_s": 30.0, "max_per_client": 5})
    idle = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(5)]
    try:
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", served.port)) as extra:
            status, headers, raw = read_http_answer(extra, timeout=5)
            assert (status, json.loads(raw)["error"]["code"]) == (429, "too_many_connections")
            assert extra.recv(1) == b""
        with good_client() as client:  # another address is not affected
            assert upload(served.url, client, GOOD)[0].status_code == 200
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with httpx.Client() as client:  # the address's connections are counted down as they close
                if client.get(served.url + "/healthz", timeout=2).status_code == 200:
                    break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    else:
        raise AssertionError("the address stayed refused after its connections closed")


def test_receives_per_address_are_bounded_and_json_paths_need_no_upload_slot(fake_live):
    served = fake_live(max_uploads=2, max_receives_per_client=3, min_upload_bytes_per_s=0)
    uploads = Trickle(served.port, 2)  # both upload slots taken, from 127.0.0.1
    try:
        wait_gauge(served.url, "qclip_uploads_in_progress", 2, within_s=5)
        with good_client() as client:
            response, _ = upload(served.url, client, GOOD)
            assert response.status_code == 503 and response.json()["error"]["code"] == "overloaded"
            response, _ = json_path(served.url, client, "good.mp4")
            assert response.status_code == 200, response.text  # a path request needs no upload slot
        json_head = (b"POST /v1/score HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 500\r\n\r\n{")
        third = Trickle(served.port, 1, json_head)  # 127.0.0.1's third body: at its bound
        try:
            wait_gauge(served.url, "qclip_uploads_in_progress", 3, within_s=5)
            with httpx.Client() as client:  # the same address: a fourth body is one too many
                response, _ = json_path(served.url, client, "good.mp4")
                assert response.status_code == 429 and response.json()["error"]["code"] == "too_many_requests"
                assert response.headers["retry-after"]
            with good_client() as client:  # another address still gets in
                assert json_path(served.url, client, "good.mp4")[0].status_code == 200
        finally:
            third.stop()
    finally:
        uploads.stop()


# -- every recipe at once, against a real engine ---------------------------------------------------
@pytest.fixture(scope="module")
def real_service(tmp_path_factory):
    """A tiny artifact, a good clip under an allowed directory and the attack files."""
    root = tmp_path_factory.mktemp("attacks")
    artifact = save_artifact(tiny_model(), root / "artifact")
    allowed = root / "allowed"
    allowed.mkdir()
    good = encode(allowed / "good.mp4", moving_frames(12, h=48, w=64))
    files = types.SimpleNamespace(
        artifact=artifact, allowed=allowed, good=good, uploads=root / "uploads",
        slow=crafted_sample_table(root / "slow.mp4", 600_000, good),  # within the limits, slow to read
        many=crafted_sample_table(root / "many.mp4", 7_000_000, good),  # the file, full size
        huge=y4m_header(root / "huge.y4m", 16000, 16000),
        # The playlist: a text upload naming a server file (one that exists, one that does not).
        playlists=[hls_playlist(root / "x.m3u8", good), hls_playlist(root / "y.m3u8", root / "no_such.ts")],
    )
    files.uploads.mkdir()
    return files


def test_a_good_client_is_served_while_every_attack_runs(real_service):
    """Recipes 2–5 of the hardening issue at once, from 127.0.0.1: slow decodes re-sent as they time
    out, a 7 M-sample table, a 16000² picture, headers dribbled a byte at a time on ever new
    connections, uploads at a trickle. A good client on 127.0.0.2 alternates path requests and
    uploads: every one answered 200 within its deadline."""
    timeout_s = 5.0
    settings = ServeSettings(
        artifact=real_service.artifact, engine="torch", device="cpu", precision="fp32", batch=4, workers=3,
        allow_dirs=(real_service.allowed,), upload_dir=real_service.uploads, timeout_s=timeout_s, queue=16,
        max_uploads=16, min_upload_bytes_per_s=8192, upload_grace_s=1.0, max_receives_per_client=8,
        header_timeout_s=1.0, max_connections_per_client=40)
    server = LiveServer(create_app(settings), guard={"header_timeout_s": 1.0, "max_per_client": 40})
    statuses: dict[str, list] = {"slow": [], "crafted": []}
    stop = threading.Event()

    def attack_slow():
        with httpx.Client() as client:
            while not stop.is_set():
                try:
                    statuses["slow"].append(upload(server.url, client, real_service.slow.read_bytes(), 20)[0].status_code)
                except httpx.TransportError as exc:  # refused by a per-address bound: fine
                    statuses["slow"].append(type(exc).__name__)

    def attack_crafted():  # from an address of its own: 127.0.0.1's receives are taken by the trickles
        with good_client("127.0.0.3") as client:
            for path in (real_service.many, real_service.huge, *real_service.playlists):
                response, _ = upload(server.url, client, path.read_bytes(), 20, name=path.name)
                statuses["crafted"].append((response.status_code, response.json()["error"]["code"],
                                            response.json()["error"]["message"].replace(path.name, "NAME")))

    dribblers = slow_uploads = None
    threads = [threading.Thread(target=attack_slow) for _ in range(2)] + [threading.Thread(target=attack_crafted)]
    good: list = []
    try:
        for thread in threads:
            thread.start()
        dribblers = Trickle(server.port, 20, b"POST /v1/score HTTP/1.1\r\nHost: x\r\nX-Pad: ", replace=True)
        slow_uploads = Trickle(server.port, 12, HEAD, replace=True)
        with good_client() as client:
            started = time.monotonic()
            while time.monotonic() - started < 8.0:
                if len(good) % 2:
                    good.append(json_path(server.url, client, "good.mp4", timeout_s + 5))
                else:
                    good.append(upload(server.url, client, real_service.good.read_bytes(), timeout_s + 5))
                time.sleep(0.2)
        under_attack = len(dribblers.live) + len(slow_uploads.live)
    finally:
        stop.set()
        for trickle in (dribblers, slow_uploads):
            if trickle is not None:
                trickle.stop()
        for thread in threads:
            thread.join(30)
        server.close()
    assert len(good) >= 10
    for response, elapsed in good:
        assert response.status_code == 200, response.text
        assert elapsed < timeout_s
    assert under_attack >= 10  # the connection attacks were still running at the end
    many, huge, present, absent = statuses["crafted"]
    assert (many[:2], huge[:2]) == ((422, "too_many_frames"), (422, "picture_too_large"))
    # The playlists read nothing, and nothing in the answers tells whether the named file exists.
    assert present == absent and present[:2] == (422, "format_not_allowed")
    assert str(real_service.good) not in present[2]
    assert statuses["slow"] and 500 not in statuses["slow"]
    codes = {a[3]["error"]["code"] for t in (dribblers, slow_uploads) for a in t.answers}
    assert codes <= {"header_timeout", "upload_too_slow", "too_many_connections", "too_many_requests"}, codes
    assert "header_timeout" in codes and "upload_too_slow" in codes


def test_the_limit_options_reach_the_settings_and_bad_ones_stop_at_parse_time(capsys):
    from qclip_engine.cli.serve import build_parser, main, settings_from_args

    args = build_parser().parse_args(["art", "--max-pixels", "1000", "--max-frames", "50", "--max-decode-s", "0",
                                      "--decode-budget-mpx", "0.002", "--header-timeout-s", "2.5",
                                      "--max-connections-per-client", "7", "--max-receives-per-client", "3"])
    settings = settings_from_args(args)
    limits = settings.decode_limits
    assert (limits.max_pixels, limits.max_frames, limits.max_seconds, limits.budget_pixels) == (1000, 50, None, 2000)
    assert (settings.header_timeout_s, settings.max_connections_per_client, settings.max_receives_per_client) == (2.5, 7, 3)
    default = settings_from_args(build_parser().parse_args(["art"])).decode_limits
    assert default.budget_pixels == 2 * default.max_pixels  # two pictures of the largest size at once
    for bad in (["--max-pixels", "0"], ["--header-timeout-s", "nan"], ["--max-receives-per-client", "-1"],
                ["--max-pixels", "1000", "--decode-budget-mpx", "0.0005"]):
        with pytest.raises(SystemExit) as exit_:
            main([str(Path(__file__).parent), *bad])
        assert exit_.value.code == 2
        assert "error:" in capsys.readouterr().err


class NonFiniteEngine(FakeEngine):
    """The model gives a NaN score for a file of NAN_BYTES (as the real engine reports it: an error
    result of code non_finite_output), a score for the rest; ``blank_too`` also for the warm-up."""

    blank_too = False

    def run_batch(self, videos):
        from qclip_engine.engine import error_result
        from qclip_engine.errors import NonFiniteOutputError

        return [error_result(v.input, NonFiniteOutputError("score nan")) if v.input.endswith(".nan.mp4")
                or (self.blank_too and v.input == "<warm-up>") else FakeEngine.run_batch(self, [v])[0] for v in videos]


def test_a_non_finite_output_is_the_video_s_422_and_a_model_that_gives_one_on_blank_frames_never_serves(fake_live):
    served = fake_live(engine=NonFiniteEngine)
    (served.allowed / "x.nan.mp4").write_bytes(GOOD)
    with httpx.Client() as client:
        response, _ = json_path(served.url, client, "x.nan.mp4")
        assert response.status_code == 422 and response.json()["error"]["code"] == "non_finite_output"
        assert json_path(served.url, client, "good.mp4")[0].status_code == 200

    class Broken(NonFiniteEngine):
        blank_too = True

    broken = fake_live(engine=Broken, until="/healthz")
    deadline = time.monotonic() + 10
    while "cannot score" not in (message := httpx.get(broken.url + "/readyz").json()["error"]["message"]):
        assert time.monotonic() < deadline, message
        time.sleep(0.05)
    assert httpx.get(broken.url + "/readyz").status_code == 503
