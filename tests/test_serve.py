"""qclip-serve end to end: real uvicorn subprocesses on 127.0.0.1, a tiny random-init artifact.

Two servers start side by side (module fixtures): ``main`` (batch 8, path requests under one
allowed directory, 1 MiB uploads, its own upload directory so leftovers can be checked) and
``busy`` (one request in flight, a 3 s deadline, no allowed directory, a minimum upload rate
of 2 KiB/s after 1 s) for overload, deadline, slow uploads and shutdown. Every client call has a timeout, and a client timeout fails the
test: the service must answer every request itself.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from conftest import read_http_answer
from media import audio_only, encode, moving_frames
from qclip_engine import QCLIP, QCLIPConfig, save_artifact

CLIENT_TIMEOUT_S = 30.0
READY_DEADLINE_S = 120.0
BUSY_TIMEOUT_S = 3.0
BUSY_GRACE_S = 1.0
BUSY_MIN_KIBPS = 2
MAIN_UPLOAD_MB = 1
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(artifact: Path, log: Path, *args: str) -> Server:
    port = free_port()
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    # Output to a file, not a pipe: a full pipe nobody reads would stall the server.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qclip_engine.cli.serve", str(artifact), "--port", str(port),
             "--engine", "torch", "--no-access-log", *args],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
    return Server(proc, f"http://127.0.0.1:{port}", log)


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"qclip-serve exited with {server.proc.returncode}:\n{server.log_text()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    pytest.fail(f"qclip-serve not ready within {READY_DEADLINE_S} s:\n{server.log_text()}")


def stop(server: Server) -> int:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=10)
    return server.proc.returncode


def request(method: str, url: str, client: httpx.Client | None = None, **kwargs) -> httpx.Response:
    """One call; a client-side timeout is a test failure (the server must always answer)."""
    try:
        if client is None:
            return httpx.request(method, url, timeout=CLIENT_TIMEOUT_S, **kwargs)
        return client.request(method, url, timeout=CLIENT_TIMEOUT_S, **kwargs)
    except httpx.TimeoutException as exc:
        pytest.fail(f"no answer within the client timeout ({CLIENT_TIMEOUT_S} s): {method} {url}: {exc!r}")


def upload(url: str, path: Path, client: httpx.Client | None = None, name: str | None = None) -> httpx.Response:
    return request("POST", url + "/v1/score", client, files={"file": (name or path.name, path.read_bytes())})


def score_path(url: str, path: str) -> httpx.Response:
    return request("POST", url + "/v1/score", json={"path": path})


def chunked_upload(url: str, size: int) -> httpx.Response:
    """A multipart upload of ``size`` random bytes sent chunked, without a Content-Length."""
    boundary = "qclip-test-boundary"

    def body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.mp4\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for start in range(0, size, 65536):
            yield os.urandom(min(65536, size - start))
        yield f"\r\n--{boundary}--\r\n".encode()

    return request("POST", url + "/v1/score", content=body(),
                   headers={"content-type": f"multipart/form-data; boundary={boundary}"})


def raw_head(url: str, length: int, boundary: str = "raw") -> tuple[socket.socket, bytes]:
    """A connection to ``url`` and the HTTP head of a multipart upload of ``length`` body bytes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=CLIENT_TIMEOUT_S)
    return sock, (f"POST /v1/score HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"
                  f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "raw") -> bytes:
    """A multipart body of (field name, file name or None, data) parts."""
    out = b""
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def concurrently(n: int, call) -> list[httpx.Response]:
    """``call(client, i)`` for i < n from ``n`` threads released together, so the requests overlap."""
    start = threading.Barrier(n)
    with httpx.Client(limits=httpx.Limits(max_connections=n)) as client, ThreadPoolExecutor(n) as pool:
        def fire(i):
            start.wait()
            return call(client, i)

        return list(pool.map(fire, range(n)))


def samples(server: Server) -> dict[str, list]:
    response = request("GET", server.url + "/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def value(samples_: dict, name: str, **labels) -> float:
    return sum(s.value for s in samples_.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def assert_error(response: httpx.Response, status: int, codes: set[str] | str) -> dict:
    codes = {codes} if isinstance(codes, str) else codes
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] in codes and error["message"], error
    return error


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = QCLIP(QCLIPConfig(backbone="PE-Core-T-16-384", pretrained=None, image_size=64, num_frames=2))
    return save_artifact(model, tmp_path_factory.mktemp("serve") / "artifact")


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    allowed, outside, corrupt = root / "allowed", root / "outside", root / "corrupt"
    for d in (allowed, outside, corrupt):
        d.mkdir()
    good = [encode(allowed / f"good{i}.mp4", moving_frames(12, seed=i)) for i in range(3)]
    secret = encode(outside / "secret.mp4", moving_frames(12, seed=9))
    (allowed / "link_out.mp4").symlink_to(secret)
    (allowed / "link_in.mp4").symlink_to(good[0])
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    (corrupt / "random.mp4").write_bytes(os.urandom(4096))
    (corrupt / "empty.mp4").write_bytes(b"")
    (corrupt / "truncated.mp4").write_bytes(good[1].read_bytes()[: good[1].stat().st_size // 2])
    (corrupt / "notes.mp4").write_text("not a video, just text\n")
    whole = encode(root / "whole.mkv", moving_frames(50)).read_bytes()
    (corrupt / "cut.mkv").write_bytes(whole[: len(whole) // 2])  # streamable: still decodable
    audio_only(corrupt / "tone.m4a")
    return {"allowed": allowed, "outside": outside, "secret": secret, "corrupt": corrupt,
            "good0": good[0], "good1": good[1], "good2": good[2], "uploads": root / "uploads"}


@pytest.fixture(scope="module")
def servers(artifact, media, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    media["uploads"].mkdir()
    main = launch(artifact, logs / "main.log", "--batch", "8", "--queue", "64", "--workers", "2",
                  "--allow-dir", str(media["allowed"]), "--max-upload-mb", str(MAIN_UPLOAD_MB),
                  "--upload-dir", str(media["uploads"]), "--batch-wait-ms", "20", "--timeout-s", "30")
    busy = launch(artifact, logs / "busy.log", "--batch", "1", "--queue", "1", "--workers", "1",
                  "--timeout-s", str(BUSY_TIMEOUT_S), "--upload-grace-s", str(BUSY_GRACE_S),
                  "--min-upload-kib-s", str(BUSY_MIN_KIBPS), "--strict")
    try:
        wait_ready(main)
        wait_ready(busy)
        yield {"main": main, "busy": busy}
    finally:
        stop(main)
        stop(busy)


@pytest.fixture(scope="module")
def main(servers) -> Server:
    return servers["main"]


@pytest.fixture(scope="module")
def busy(servers) -> Server:
    return servers["busy"]


# -- tests -----------------------------------------------------------------------------------


def test_health_readiness_and_an_upload_scored(main, media):
    assert request("GET", main.url + "/healthz").json() == {"status": "alive"}
    ready = request("GET", main.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["backend"] == "torch" and ready["batch"] == 8
    assert ready["image_size"] == [64, 64] and ready["num_frames"] == 2

    response = upload(main.url, media["good0"])
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["input"] == "good0.mp4"
    assert isinstance(record["score"], float)
    # What scored it, in the answer, /readyz and the metrics' labels alike (no drift record: FP32).
    assert record["backend"] == "torch-fp32" and ready["precision"] == "fp32"
    assert value(samples(main), "qclip_backend_info", backend="torch", precision="fp32", device="cpu") == 1
    assert list(record["levels"]) == ["bad", "poor", "fair", "good", "excellent"]
    assert len(record["frames"]) == 2 and record["video"]["frame_count"] == 12
    for key in ("upload", "decode", "queue", "model", "total"):
        assert record["timing_ms"][key] >= 0, key


def test_concurrent_requests_are_batched(main, media):
    before = samples(main)
    clips = [media["good0"], media["good1"], media["good2"]]
    responses = concurrently(12, lambda client, i: upload(main.url, clips[i % 3], client))
    assert [r.status_code for r in responses] == [200] * 12, [r.text for r in responses if r.status_code != 200]
    after = samples(main)
    count = value(after, "qclip_batch_size_count") - value(before, "qclip_batch_size_count")
    total = value(after, "qclip_batch_size_sum") - value(before, "qclip_batch_size_sum")
    assert total == 12  # every video went through the model exactly once
    assert count < total, "no backend call saw more than one video"
    assert max(r.json()["timing_ms"]["batch_size"] for r in responses) > 1
    assert value(after, "qclip_videos_scored_total") - value(before, "qclip_videos_scored_total") == 12


@pytest.mark.parametrize("name,codes", [
    ("random.mp4", {"not_a_video"}),
    ("empty.mp4", {"empty_file"}),
    ("truncated.mp4", {"truncated", "decode_failed"}),
    ("notes.mp4", {"not_a_video"}),
    ("tone.m4a", {"audio_only"}),
])
def test_corrupt_uploads_get_422_with_their_code(main, media, name, codes):
    error = assert_error(upload(main.url, media["corrupt"] / name), 422, codes)
    assert "qclip-upload-" not in error["message"]  # the client's file name, not the temp file's


def test_paths_under_the_allowed_directory_are_scored(main, media):
    for path in ("good1.mp4", str(media["good1"]), "link_in.mp4"):
        response = score_path(main.url, path)
        assert response.status_code == 200, (path, response.text)
        assert response.json()["input"] == path and "upload" not in response.json()["timing_ms"]
    error = assert_error(score_path(main.url, "missing.mp4"), 422, "not_found")
    assert str(media["good1"].parent) not in error["message"]  # the client's name, not the server's path


@pytest.mark.parametrize("path", [
    "../outside/secret.mp4",
    "good1.mp4/../../outside/secret.mp4",
    "SECRET_ABSOLUTE",
    "/etc/passwd",
    "link_out.mp4",
    "escape/secret.mp4",
])
def test_paths_outside_the_allowed_directory_are_refused(main, media, path):
    path = str(media["secret"]) if path == "SECRET_ABSOLUTE" else path
    assert_error(score_path(main.url, path), 403, "path_not_allowed")


def test_path_requests_need_an_allowed_directory(busy, media):
    assert_error(score_path(busy.url, str(media["good0"])), 403, "path_not_allowed")


def test_oversized_uploads_are_refused_413(main):
    big = os.urandom(int(1.5 * MAIN_UPLOAD_MB * 2**20))
    response = request("POST", main.url + "/v1/score", files={"file": ("big.mp4", big)})
    assert_error(response, 413, "upload_too_large")

    # No Content-Length (chunked): the limit is enforced while the body streams in.
    assert_error(chunked_upload(main.url, 3 * MAIN_UPLOAD_MB * 2**20), 413, "upload_too_large")


def test_malformed_requests_get_structured_errors(main, media):
    url = main.url + "/v1/score"
    assert_error(request("POST", url, content=b"{not json", headers={"content-type": "application/json"}),
                 400, "invalid_json")
    assert_error(request("POST", url, json=["good0.mp4"]), 400, "bad_request")
    assert_error(request("POST", url, json={"path": 3}), 400, "bad_request")
    assert_error(request("POST", url, json={"path": "a\x00b"}), 400, "invalid_path")
    assert_error(request("POST", url, files={"video": ("a.mp4", b"x")}), 400, "missing_file")
    assert_error(request("POST", url, content=b"hello", headers={"content-type": "text/plain"}),
                 415, "unsupported_media_type")
    unfinished = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\nabc'
    assert_error(request("POST", url, content=unfinished, headers={"content-type": "multipart/form-data; boundary=b"}),
                 400, "bad_multipart")
    assert_error(request("POST", url, content=b"x", headers={"content-type": "multipart/form-data"}),
                 400, "bad_multipart")
    assert_error(request("GET", url), 405, "method_not_allowed")
    assert_error(request("GET", main.url + "/nope"), 404, "not_found")


def test_metrics_count_requests_errors_and_latencies(main, media):
    before = samples(main)
    assert upload(main.url, media["good2"]).status_code == 200
    assert upload(main.url, media["corrupt"] / "random.mp4").status_code == 422
    assert score_path(main.url, "../outside/secret.mp4").status_code == 403
    after = samples(main)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("qclip_requests_total", endpoint="/v1/score", status="200") == 1
    assert delta("qclip_requests_total", endpoint="/v1/score", status="422") == 1
    assert delta("qclip_requests_total", endpoint="/v1/score", status="403") == 1
    assert delta("qclip_requests_total", endpoint="/metrics", status="200") == 1
    assert delta("qclip_errors_total", code="not_a_video") == 1
    assert delta("qclip_errors_total", code="path_not_allowed") == 1
    assert delta("qclip_videos_scored_total") == 1
    assert delta("qclip_batch_size_count") == 1
    for histogram in ("qclip_queue_wait_seconds", "qclip_model_latency_seconds"):
        assert delta(histogram + "_count") == 1, histogram
    assert delta("qclip_decode_latency_seconds_count") == 1  # the corrupt upload never decoded
    assert delta("qclip_request_latency_seconds_count", endpoint="/v1/score") == 3
    assert value(after, "qclip_queue_depth") == 0 and value(after, "qclip_requests_in_flight") == 0


def test_uploads_leave_no_temp_files(main, media):
    upload(main.url, media["good0"])
    upload(main.url, media["corrupt"] / "truncated.mp4")
    chunked_upload(main.url, 2 * MAIN_UPLOAD_MB * 2**20)  # refused after its temp file was started
    assert list(media["uploads"].iterdir()) == []


def test_overload_gives_503_with_retry_after_and_every_request_an_answer(busy, media):
    responses = concurrently(16, lambda client, i: upload(busy.url, media["good0"], client))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    for r in responses:
        if r.status_code == 503:
            assert_error(r, 503, "overloaded")
            assert int(r.headers["retry-after"]) >= 1


def test_a_request_past_its_deadline_gets_504(busy):
    boundary = "qclip-slow"
    # Enough bytes at once that the average stays above the minimum rate through the stall:
    # only the deadline, which covers the upload, stops this one.
    lead = os.urandom(int((BUSY_TIMEOUT_S + 3) * BUSY_MIN_KIBPS * 1024))

    def slow_body():
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.mp4\"\r\n\r\n").encode()
        yield lead
        time.sleep(BUSY_TIMEOUT_S + 1)
        yield f"\r\n--{boundary}--\r\n".encode()

    started = time.monotonic()
    response = request("POST", busy.url + "/v1/score", content=slow_body(),
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert_error(response, 504, "timeout")
    assert time.monotonic() - started < BUSY_TIMEOUT_S + 5
    assert value(samples(busy), "qclip_requests_in_flight") == 0  # the slot came back


def test_an_upload_under_the_minimum_rate_gets_408(busy):
    sock, head = raw_head(busy.url, 10000)
    with sock:
        started = time.monotonic()
        sock.sendall(head + b'--raw\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\nx')
        status, headers, body = read_http_answer(sock)  # then nothing: dropped once the grace is over
        elapsed = time.monotonic() - started
    assert (status, json.loads(body)["error"]["code"]) == (408, "upload_too_slow"), body
    assert headers["connection"] == "close" and BUSY_GRACE_S - 0.1 <= elapsed < BUSY_GRACE_S + 3, elapsed
    assert value(samples(busy), "qclip_errors_total", code="upload_too_slow") >= 1


def test_cli_refuses_bad_arguments_and_exits_1_when_the_model_cannot_load(tmp_path):
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    empty = tmp_path / "not_an_artifact"
    empty.mkdir()
    command = [sys.executable, "-m", "qclip_engine.cli.serve"]
    missing = subprocess.Popen([*command, str(tmp_path / "nope")], stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    broken = subprocess.Popen([*command, str(empty), "--port", str(free_port()), "--engine", "torch"],
                              stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    _, missing_err = missing.communicate(timeout=60)
    _, broken_err = broken.communicate(timeout=60)
    assert missing.returncode == 2 and "artifact directory not found" in missing_err
    assert broken.returncode == 1 and "could not be loaded" in broken_err.splitlines()[-1]


def test_a_cut_file_is_scored_with_a_warning_or_refused_422_truncated_under_strict(main, busy, media):
    cut = media["corrupt"] / "cut.mkv"
    scored = upload(main.url, cut)
    assert scored.status_code == 200, scored.text
    [warning] = scored.json()["warnings"]
    assert warning["code"] == "truncated" and "of a declared 2.000 s" in warning["message"]
    assert "warnings" not in upload(main.url, media["good0"]).json()
    error = assert_error(upload(busy.url, cut), 422, "truncated")  # busy runs with --strict
    assert "cut.mkv" in error["message"] and str(media["corrupt"]) not in error["message"]


def test_sigterm_closes_the_listener_and_answers_requests_in_flight(busy, media):
    """What the README says of SIGTERM: the listener closes at once (so /readyz does not answer:
    the connection is refused), idle keep-alive connections close, a request in flight is
    answered and its connection closed after the answer."""
    host, port = busy.url.removeprefix("http://").split(":")
    idle = socket.create_connection((host, int(port)), timeout=CLIENT_TIMEOUT_S)
    idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_http_answer(idle)[0] == 200  # a keep-alive connection, now idle
    # A pad field keeps the average rate above the minimum while the upload waits for the signal.
    body = multipart([("pad", None, b"p" * 32768), ("file", "good0.mp4", media["good0"].read_bytes())])
    flying, head = raw_head(busy.url, len(body))
    flying.sendall(head + body[:-10])
    time.sleep(0.3)

    busy.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:
        try:
            httpx.get(busy.url + "/readyz", timeout=2)
        except httpx.ConnectError:
            break  # refused: the listener is closed, though a request is still in flight
        assert time.monotonic() < deadline, "the listener still accepts connections after SIGTERM"
        time.sleep(0.05)
    assert idle.recv(1) == b""  # the idle keep-alive connection was closed
    flying.sendall(body[-10:])
    status, _, answer = read_http_answer(flying)
    assert status == 200 and json.loads(answer)["input"] == "good0.mp4", answer
    assert flying.recv(1) == b""  # and its connection closed after it
    idle.close()
    flying.close()

    # uvicorn shuts down gracefully, then re-raises the signal: the status is SIGTERM's.
    assert busy.proc.wait(timeout=20) in (0, -signal.SIGTERM), busy.log_text()
    log = busy.log_text()
    assert "Application shutdown complete" in log and "Traceback" not in log, log
