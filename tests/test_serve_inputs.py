"""The service's rooms without a server: the security rules of ``serve/inputs.py`` (allowed paths,
the streamed upload) and the batcher's model thread (``serve/batcher.py``).

Uploads are driven through a real Starlette ``Request`` built from an ASGI scope and a
``receive`` that plays the body's chunks, so no socket or uvicorn is involved.
"""

import asyncio
import contextlib
import json
import os
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from starlette.requests import Request

from qclip_engine.engine import SampledVideo, VideoResult
from qclip_engine.serve.admission import Admission
from qclip_engine.serve.batcher import Batcher
from qclip_engine.serve.errors import ApiError, ServiceStopping, error_response
from qclip_engine.serve.inputs import MULTIPART_OVERHEAD, read_json_path, receive_upload, resolve_allowed_path
from qclip_engine.serve.metrics import ServiceMetrics

BOUNDARY = "qclip-test"
LIMIT = 1000  # upload limit (bytes) in these tests


# -- allowed paths ---------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """``allowed/`` (a.mp4, sub/b.mp4, link_in → a.mp4, link_out → outside, escape → outside/),
    ``second/a.mp4``, ``outside/secret.mp4`` and ``allowed2/`` (a sibling sharing the prefix)."""
    root = Path(os.path.realpath(tmp_path))
    allowed, second, outside, sibling = root / "allowed", root / "second", root / "outside", root / "allowed2"
    for d in (allowed / "sub", second, outside, sibling):
        d.mkdir(parents=True)
    for f in (allowed / "a.mp4", allowed / "sub" / "b.mp4", second / "a.mp4", outside / "secret.mp4",
              sibling / "c.mp4"):
        f.write_bytes(b"x")
    (allowed / "link_in.mp4").symlink_to(allowed / "a.mp4")
    (allowed / "link_out.mp4").symlink_to(outside / "secret.mp4")
    (allowed / "escape").symlink_to(outside, target_is_directory=True)
    return types.SimpleNamespace(allowed=allowed, second=second, outside=outside, sibling=sibling)


def refused(raw: str, roots: tuple[Path, ...]) -> ApiError:
    with pytest.raises(ApiError) as info:
        resolve_allowed_path(raw, roots)
    return info.value


def test_a_file_under_an_allowed_root_is_accepted(tree):
    assert resolve_allowed_path(str(tree.allowed / "sub" / "b.mp4"), (tree.allowed,)) == tree.allowed / "sub" / "b.mp4"
    assert resolve_allowed_path(str(tree.second / "a.mp4"), (tree.allowed, tree.second)) == tree.second / "a.mp4"


def test_a_relative_path_is_taken_under_the_first_root(tree):
    # a.mp4 exists under both roots (and not in the working directory): the first root wins.
    assert resolve_allowed_path("a.mp4", (tree.allowed, tree.second)) == tree.allowed / "a.mp4"
    assert resolve_allowed_path("sub/b.mp4", (tree.allowed,)) == tree.allowed / "sub" / "b.mp4"


@pytest.mark.parametrize("raw", ["../outside/secret.mp4", "sub/../../outside/secret.mp4", "../allowed2/c.mp4"])
def test_dotdot_escapes_are_403(tree, raw):
    error = refused(raw, (tree.allowed,))
    assert (error.status, error.code) == (403, "path_not_allowed")


def test_absolute_paths_outside_are_403(tree):
    for raw in (str(tree.outside / "secret.mp4"), "/etc/passwd", str(tree.sibling / "c.mp4")):
        error = refused(raw, (tree.allowed,))
        assert (error.status, error.code) == (403, "path_not_allowed"), raw


@pytest.mark.parametrize("raw", ["link_out.mp4", "escape/secret.mp4"])
def test_symlinks_pointing_outside_are_403(tree, raw):
    error = refused(raw, (tree.allowed,))
    assert (error.status, error.code) == (403, "path_not_allowed")
    assert str(tree.outside) not in error.message  # the client's string, not the server's real path


def test_a_symlink_inside_is_accepted_and_resolved(tree):
    # The real path is returned (and opened), so the link is not followed again after the check.
    assert resolve_allowed_path("link_in.mp4", (tree.allowed,)) == tree.allowed / "a.mp4"


def test_a_nul_byte_is_400(tree):
    error = refused("a.mp4\x00.txt", (tree.allowed,))
    assert (error.status, error.code) == (400, "invalid_path")


def test_without_roots_every_path_is_403(tree):
    for raw in ("a.mp4", str(tree.allowed / "a.mp4")):
        error = refused(raw, ())
        assert (error.status, error.code) == (403, "path_not_allowed")


# -- uploads ---------------------------------------------------------------------------------


def part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def request(chunks: list[bytes], *, declared: int | None = None, disconnect: bool = False,
            content_type: str = f"multipart/form-data; boundary={BOUNDARY}") -> Request:
    """A request whose body arrives in ``chunks`` (no Content-Length unless ``declared``)."""
    headers = [(b"content-type", content_type.encode())]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    messages = [{"type": "http.request", "body": c, "more_body": disconnect or i < len(chunks) - 1}
                for i, c in enumerate(chunks)]

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/v1/score", "headers": headers,
                    "query_string": b""}, receive)


def receive(req: Request, directory: Path, limit: int = LIMIT):
    with ThreadPoolExecutor(1) as writer:
        return asyncio.run(receive_upload(req, limit, directory, writer))


def upload_error(req: Request, directory: Path) -> ApiError:
    with pytest.raises(ApiError) as info:
        receive(req, directory)
    return info.value


def test_an_upload_is_streamed_to_a_temp_file_in_the_upload_dir(tmp_path):
    data = os.urandom(LIMIT)
    body = multipart(part("note", b"hello"), part("file", data, "clip.MP4"))
    upload = receive(request([body[:100], body[100:700], body[700:]]), tmp_path)
    assert upload.path.parent == tmp_path and upload.path.read_bytes() == data and upload.size == LIMIT
    assert upload.filename == "clip.MP4" and upload.path.suffix == ".mp4"  # the suffix hints FFmpeg's probe


@pytest.mark.parametrize("filename,expected", [
    ("../../etc/passwd", "passwd"),
    ("C:\\x\\y.mp4", "y.mp4"),  # python-multipart strips a drive path itself
    ("..\\..\\y.mp4", "y.mp4"),  # a relative Windows path it leaves to us
    ("/abs/dir/z.mp4", "z.mp4"),
    ("", "upload"),
])
def test_a_filename_is_reduced_to_its_base_name(tmp_path, filename, expected):
    upload = receive(request([multipart(part("file", b"abc", filename))]), tmp_path)
    assert upload.filename == expected
    assert upload.path.parent == tmp_path and upload.path.name.startswith("qclip-upload-")


def test_an_upload_past_the_limit_is_413_and_leaves_no_temp_file(tmp_path):
    # One byte over the file limit, well within the multipart overhead: the part's own count refuses it.
    body = multipart(part("file", os.urandom(LIMIT + 1), "big.mp4"))
    error = upload_error(request([body[:LIMIT // 2], body[LIMIT // 2:]]), tmp_path)
    assert (error.status, error.code) == (413, "upload_too_large")
    assert list(tmp_path.iterdir()) == []


def test_a_body_past_the_limit_is_413_even_outside_the_file_part(tmp_path):
    body = multipart(part("note", b"n" * (LIMIT + MULTIPART_OVERHEAD)), part("file", b"abc", "a.mp4"))
    error = upload_error(request([body]), tmp_path)
    assert (error.status, error.code) == (413, "upload_too_large")
    assert list(tmp_path.iterdir()) == []


def test_a_declared_length_past_the_limit_is_413_before_reading(tmp_path):
    req = request([multipart(part("file", b"abc", "a.mp4"))], declared=LIMIT + MULTIPART_OVERHEAD + 1)

    async def must_not_read():
        raise AssertionError("the body was read")

    req._receive = must_not_read
    error = upload_error(req, tmp_path)
    assert (error.status, error.code) == (413, "upload_too_large")


def test_a_body_without_a_file_part_is_400_missing_file(tmp_path):
    error = upload_error(request([multipart(part("video", b"abc", "a.mp4"))]), tmp_path)
    assert (error.status, error.code) == (400, "missing_file")
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_body_is_400_bad_multipart_and_its_temp_file_removed(tmp_path):
    body = multipart(part("file", os.urandom(500), "a.mp4"))
    error = upload_error(request([body[:300]]), tmp_path)  # ends inside the file part
    assert (error.status, error.code) == (400, "bad_multipart")
    assert list(tmp_path.iterdir()) == []


def test_a_client_gone_mid_upload_is_400_and_its_temp_file_removed(tmp_path):
    body = multipart(part("file", os.urandom(500), "a.mp4"))
    error = upload_error(request([body[:300]], disconnect=True), tmp_path)
    assert (error.status, error.code) == (400, "client_disconnected")
    assert list(tmp_path.iterdir()) == []


def test_a_multipart_type_without_boundary_is_400(tmp_path):
    error = upload_error(request([b"x"], content_type="multipart/form-data"), tmp_path)
    assert (error.status, error.code) == (400, "bad_multipart")


# -- the batcher -----------------------------------------------------------------------------


def video(name: str) -> SampledVideo:
    return SampledVideo(name, np.zeros((1, 2, 2, 3), np.uint8), np.zeros(1, int), np.zeros(1), None, {})


class FakeEngine:
    """Records each backend call (inputs, thread); a call with input ``A`` waits for ``gate``."""

    def __init__(self, delay: float = 0.0):
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.entered, self.gate = threading.Event(), threading.Event()

    def run_batch(self, videos):
        self.calls.append([v.input for v in videos])
        self.threads.add(threading.current_thread().name)
        if "A" in self.calls[-1]:
            self.entered.set()
            assert self.gate.wait(10)
        threading.Event().wait(self.delay)
        return [VideoResult(input=v.input, score=1.0, timing_ms=dict(v.timing_ms)) for v in videos]


@contextlib.contextmanager
def batcher_of(engine: FakeEngine, metrics=None, max_batch: int = 4):
    batcher = Batcher(engine, metrics or ServiceMetrics(max_batch), max_batch=max_batch, max_wait_s=0.2,
                      capacity=32)
    try:
        yield batcher
    finally:
        engine.gate.set()
        batcher.stop()
        batcher._thread.join(10)
        assert not batcher._thread.is_alive()


def run(main) -> object:
    """``asyncio.run`` with a deadline: a video nobody answers fails the test rather than hanging it."""
    return asyncio.run(asyncio.wait_for(main, 30))


async def queued(batcher: Batcher, n: int) -> None:
    """Until ``n`` videos wait in the batch queue."""
    while batcher.queue.qsize() != n:
        await asyncio.sleep(0.001)


async def scored(batcher: Batcher, admission: Admission, name: str) -> VideoResult:
    slot = admission.try_admit()
    try:
        return await batcher.submit(video(name), slot)
    finally:
        slot.release()  # the handler's hold, as QualityService.score lets go of it


def test_concurrent_videos_are_batched_up_to_the_batch_on_one_thread():
    engine, admission = FakeEngine(delay=0.05), Admission(32)

    async def main():
        await asyncio.wrap_future(batcher.start(warm_up=[video("warm-up")]))
        return await asyncio.gather(*(scored(batcher, admission, f"v{i}") for i in range(10)))

    with batcher_of(engine) as batcher:
        results = run(main())
    assert engine.calls[0] == ["warm-up"]
    sizes = [len(call) for call in engine.calls[1:]]
    assert sum(sizes) == 10 and max(sizes) == 4, sizes
    assert [r.input for r in results] == [f"v{i}" for i in range(10)]
    assert all(r.timing_ms["queue"] >= 0 for r in results)
    assert engine.threads == {"qclip-model"}  # the backend is only ever called from the model thread
    assert admission.count == 0


def test_a_cancelled_request_is_skipped_and_its_slot_released():
    engine, admission = FakeEngine(), Admission(8)

    async def main():
        await asyncio.wrap_future(batcher.start(warm_up=[video("warm-up")]))
        a = asyncio.create_task(scored(batcher, admission, "A"))
        assert await asyncio.to_thread(engine.entered.wait, 10)  # the model thread is busy with A
        b = asyncio.create_task(scored(batcher, admission, "B"))
        await queued(batcher, 1)
        b.cancel()  # as asyncio.wait_for does past the deadline
        with pytest.raises(asyncio.CancelledError):
            await b
        assert admission.count == 2  # B's queued video still holds its slot
        c = asyncio.create_task(scored(batcher, admission, "C"))
        await queued(batcher, 2)
        engine.gate.set()
        return await asyncio.gather(a, c)

    with batcher_of(engine) as batcher:
        a, c = run(main())
    assert (a.input, c.input) == ("A", "C")
    assert engine.calls[1:] == [["A"], ["C"]]  # B never reached the backend
    assert admission.count == 0


def test_stop_answers_the_queued_and_refuses_new_videos():
    engine, admission = FakeEngine(), Admission(8)

    async def main():
        await asyncio.wrap_future(batcher.start(warm_up=[video("warm-up")]))
        a = asyncio.create_task(scored(batcher, admission, "A"))
        assert await asyncio.to_thread(engine.entered.wait, 10)
        b = asyncio.create_task(scored(batcher, admission, "B"))
        await queued(batcher, 1)
        batcher.stop()
        with pytest.raises(ServiceStopping):
            await b
        with pytest.raises(ServiceStopping):
            await scored(batcher, admission, "D")
        assert not batcher.running
        engine.gate.set()
        return await a  # the call in progress still delivers

    with batcher_of(engine) as batcher:
        assert run(main()).input == "A"
    assert engine.calls[1:] == [["A"]] and admission.count == 0


def test_a_dead_model_thread_answers_the_waiting_and_stops_running():
    engine, admission = FakeEngine(), Admission(8)
    metrics = ServiceMetrics(4)
    metrics.batch_size = types.SimpleNamespace(observe=lambda n: 1 / 0)  # a bug after the backend call

    async def main():
        await asyncio.wrap_future(batcher.start(warm_up=[video("warm-up")]))
        assert batcher.running
        with pytest.raises(RuntimeError, match="model thread stopped"):
            await scored(batcher, admission, "v")
        batcher._thread.join(10)
        assert not batcher.running and "ZeroDivisionError" in batcher.failure  # /readyz: 503
        with pytest.raises(RuntimeError, match="model thread stopped"):
            await scored(batcher, admission, "w")

    with batcher_of(engine, metrics) as batcher:
        run(main())
    assert admission.count == 0


# -- odd client input: every failure is a 4xx with a code, naming only the client's string -----


def test_a_too_long_path_is_400_and_names_neither_the_root_nor_the_whole_string(tree):
    for raw in ("a" * 5000, "sub/" + "b" * 300 + ".mp4"):  # past PATH_MAX; one name past NAME_MAX
        error = refused(raw, (tree.allowed,))
        assert (error.status, error.code) == (400, "invalid_path"), raw[:20]
        assert str(tree.allowed) not in error.message and len(error.message) < 400


def test_a_huge_refused_path_is_truncated_in_the_message(tree):
    error = refused("../" * 2000 + "etc/passwd", (tree.allowed,))
    assert (error.status, error.code) == (403, "path_not_allowed") and len(error.message) < 400


def test_a_symlink_loop_is_400(tree):
    (tree.allowed / "loop1").symlink_to(tree.allowed / "loop2")
    (tree.allowed / "loop2").symlink_to(tree.allowed / "loop1")
    for raw in ("loop1", "loop1/a.mp4"):
        error = refused(raw, (tree.allowed,))
        assert (error.status, error.code) == (400, "invalid_path"), raw
        assert str(tree.allowed) not in error.message


def test_a_file_used_as_a_directory_is_422_not_found(tree):
    error = refused("a.mp4/x.mp4", (tree.allowed,))
    assert (error.status, error.code) == (422, "not_found") and str(tree.allowed) not in error.message


def test_a_fifo_or_a_directory_is_422_not_a_video_without_opening_it(tree):
    os.mkfifo(tree.allowed / "pipe.mp4")  # opening it would block until a writer came
    for raw in ("pipe.mp4", "sub", "sub/", "."):
        error = refused(raw, (tree.allowed,))
        assert (error.status, error.code) == (422, "not_a_video"), raw
        assert str(tree.allowed) not in error.message


def test_a_device_under_a_root_is_422_not_a_video():
    error = refused("/dev/zero", (Path("/dev"),))
    assert (error.status, error.code) == (422, "not_a_video")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_an_unreadable_file_or_directory_is_403(tree):
    (tree.allowed / "locked.mp4").write_bytes(b"x")
    (tree.allowed / "locked.mp4").chmod(0)
    (tree.allowed / "sub").chmod(0)
    try:
        for raw in ("locked.mp4", "sub/b.mp4"):
            error = refused(raw, (tree.allowed,))
            assert (error.status, error.code) == (403, "path_not_allowed"), raw
            assert str(tree.allowed) not in error.message
    finally:
        (tree.allowed / "sub").chmod(0o755)


def test_a_file_the_server_may_not_open_is_403_even_as_root(tree, monkeypatch):
    real_open = os.open

    def denied(path, *args, **kwargs):  # what a non-root server meets on a mode-000 file
        if Path(path).name == "a.mp4":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    error = refused("a.mp4", (tree.allowed,))
    assert (error.status, error.code) == (403, "path_not_allowed") and str(tree.allowed) not in error.message


def test_a_path_that_is_not_valid_unicode_is_400(tree):
    # JSON can carry a lone surrogate ("\ud800"); it names no file and cannot be encoded in an answer.
    for raw in ("\ud800.mp4", "a\udc80.mp4"):
        error = refused(raw, (tree.allowed,))
        assert (error.status, error.code) == (400, "invalid_path")
        error.message.encode("utf-8")


def json_error(body: bytes) -> ApiError:
    with pytest.raises(ApiError) as info:
        asyncio.run(read_json_path(request([body], content_type="application/json")))
    return info.value


@pytest.mark.parametrize("body,code", [
    (b'{"a":' * 8000 + b"1" + b"}" * 8000, "invalid_json"),  # under the 64 KiB limit, too deep to parse
    (b"[" * 30000, "invalid_json"),
    (b'{"path": "a.mp4", "x": ' + b"[" * 20000 + b"]" * 20000 + b"}", "invalid_json"),
    (b'{"path": "\xff\xfe.mp4"}', "invalid_json"),
    (b"\xff\xfe\x00\x00", "invalid_json"),
    (b"", "invalid_json"),
    (b'{"path": ' + b"1" * 5000 + b"}", "invalid_json"),  # past Python's int digit limit
    (b'{"path": NaN}', "bad_request"),
    (b'["a.mp4"]', "bad_request"),
    (b'"a.mp4"', "bad_request"),
    (b'{"path": ["a.mp4"]}', "bad_request"),
    (b'{"path": ""}', "bad_request"),
])
def test_a_json_body_that_cannot_be_used_is_400(body, code):
    error = json_error(body)
    assert (error.status, error.code) == (400, code)
    assert len(error.message) < 400


def test_a_content_length_that_is_not_ascii_digits_does_not_break_the_upload(tmp_path):
    req = request([multipart(part("file", b"abc", "a.mp4"))])
    req.scope["headers"].append((b"content-length", "\u00b2\u00b3".encode("latin-1")))  # str.isdigit() says yes
    assert receive(req, tmp_path).size == 3


def test_a_boundary_past_the_parsers_maximum_is_400(tmp_path):
    error = upload_error(request([b"x"], content_type="multipart/form-data; boundary=" + "b" * 300), tmp_path)
    assert (error.status, error.code) == (400, "bad_multipart")


def test_an_error_message_that_cannot_be_utf8_still_renders():
    response = error_response(ApiError(400, "invalid_path", "bad \ud800 name"), ServiceMetrics(1))
    assert json.loads(response.body)["error"]["code"] == "invalid_path"
