"""The HTTP service behind ``qclip-serve``: one model, dynamic batching across concurrent requests.

Request path (``POST /v1/score``)::

    admission ──> receive input ──> decode pool ──> batch queue ──> batcher ──> model thread
    (503 when     (JSON path under   (--workers      (bounded)      (one task:   (one thread:
     --queue       --allow-dir, or    threads,                        up to        run_batch)
     requests      a multipart        engine.sample)                  --batch)
     in flight)    upload to a temp
                   file, 413 past
                   --max-upload-mb)

Every request is answered: a score (200), a structured error ``{"error": {"code", "message"}}``
— 400/403/413/415/422 for the request or its video, 503 when overloaded or not ready (with
``Retry-After``), 504 past ``--timeout-s``, 500 for a server fault. The timeout covers the
whole request, upload included, so a slow client cannot hold a slot for ever.

Admission counts work, not handlers: a request that timed out while its video was still
being decoded, or still sat in the batch queue, keeps its slot until that work is gone, so
timeouts cannot pile up unbounded work behind the limit.

The backend is only ever called from one dedicated thread (backends are not guaranteed
thread-safe); decoding runs in its own pool because PyAV releases the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .engine import QualityEngine, SampledVideo, VideoResult, error_result
from .errors import QCLIPError

log = logging.getLogger("qclip_engine.service")

SCORE_PATH = "/v1/score"
ENDPOINTS = (SCORE_PATH, "/healthz", "/readyz", "/metrics")
UPLOAD_FIELD = "file"
JSON_BODY_LIMIT = 64 * 1024  # a path request is a few hundred bytes
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around the file
UPLOAD_FLUSH_BYTES = 1 << 20  # upload bytes held in memory before they go to the temp file
DEFAULT_MAX_UPLOAD_MB = 256.0
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_BATCH_WAIT_S = 0.005
NOT_READY_RETRY_S = 5
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_SAFE_SUFFIX = re.compile(r"\.[a-z0-9]{1,8}")


@dataclass(frozen=True)
class ServeSettings:
    """What ``qclip-serve`` was started with (see ``qclip-serve --help``)."""

    artifact: Path | None
    engine: str = "auto"
    device: str = "auto"
    batch: int = 32
    workers: int | None = None  # decode threads; None: the engine's default
    allow_dirs: tuple[Path, ...] = ()
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20)
    queue: int | None = None  # requests in flight before 503; None: 4 × batch
    timeout_s: float = DEFAULT_TIMEOUT_S
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S
    upload_dir: Path | None = None  # None: the system temp directory

    @property
    def queue_limit(self) -> int:
        return self.queue if self.queue is not None else 4 * self.batch


class ApiError(Exception):
    """An answer other than a score: HTTP status plus the error contract's code and message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class ServiceStopping(Exception):
    """The service shut down while the request waited."""


# -- metrics ---------------------------------------------------------------------------------


class ServiceMetrics:
    """Prometheus metrics in a registry of the app's own (several apps may share a process)."""

    def __init__(self, max_batch: int):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("qclip_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.errors = Counter("qclip_errors", "Error answers by error code", ["code"], registry=r)
        self.request_latency = Histogram("qclip_request_latency_seconds", "Time to answer a request", ["endpoint"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.decode_latency = Histogram("qclip_decode_latency_seconds", "Probe, decode and sampling of one video",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("qclip_queue_wait_seconds", "Time a decoded video waited for its batch",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.model_latency = Histogram("qclip_model_latency_seconds", "One backend call over a batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        sizes = sorted({2**k for k in range(max_batch.bit_length()) if 2**k <= max_batch} | {max_batch})
        self.batch_size = Histogram("qclip_batch_size", "Videos per backend call", buckets=sizes, registry=r)
        self.videos_scored = Counter("qclip_videos_scored", "Videos scored (videos/s: its rate)", registry=r)
        self.queue_depth = Gauge("qclip_queue_depth", "Decoded videos waiting for a batch", registry=r)
        self.in_flight = Gauge("qclip_requests_in_flight", "Admitted score requests whose work is not finished",
                               registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def error_response(metrics: ServiceMetrics, error: ApiError) -> JSONResponse:
    metrics.errors.labels(error.code).inc()
    return JSONResponse({"error": {"code": error.code, "message": error.message}}, status_code=error.status,
                        headers=error.headers)


class RequestMetricsMiddleware:
    """Counts every HTTP answer by endpoint and status and times it (plain ASGI: no body buffering)."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"  # bounded label values
        status = 500  # what the client gets if the app raises before it answers
        started = time.perf_counter()

        async def send_with_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_latency.labels(endpoint).observe(time.perf_counter() - started)


# -- admission -------------------------------------------------------------------------------


class Admission:
    """At most ``limit`` score requests in flight; a slot is freed when all its work is gone."""

    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()  # slots are released from decode threads too

    def try_admit(self) -> Slot | None:
        with self._lock:
            if self.count >= self.limit:
                return None
            self.count += 1
        return Slot(self)

    def _free(self) -> None:
        with self._lock:
            self.count -= 1


class Slot:
    """One admitted request's claim: held by its handler, its running decode and its queued video."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._holders = 1
        self._lock = threading.Lock()

    def hold(self) -> None:
        with self._lock:
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self._admission._free()


# -- the batcher -----------------------------------------------------------------------------


@dataclass
class _Queued:
    video: SampledVideo
    future: asyncio.Future
    enqueued: float
    slot: Slot


class Batcher:
    """One task gathers decoded videos into batches; one thread runs the backend on them.

    Once a video is waiting, the batch goes after ``max_wait_s`` or when ``max_batch`` videos
    are there, whichever is first; videos that arrive while the model runs form the next batch.
    """

    def __init__(self, engine: QualityEngine, metrics: ServiceMetrics, *, max_batch: int, max_wait_s: float,
                 capacity: int):
        self.engine = engine
        self.metrics = metrics
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue: asyncio.Queue[_Queued] = asyncio.Queue(maxsize=capacity)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="qclip-model")
        self.batch_seconds = 0.0  # moving average of one backend call, for Retry-After
        self.task: asyncio.Task | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name="qclip-batcher")
        self.task.add_done_callback(self._report_exit)

    @staticmethod
    def _report_exit(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:  # /readyz turns 503 from here on
            log.error("the batcher stopped", exc_info=task.exception())

    def run_blocking(self, videos: list[SampledVideo]) -> list[VideoResult]:
        """A backend call on the model thread, awaited by the caller's thread (start-up warm-up)."""
        return self.model_thread.submit(self.engine.run_batch, videos).result()

    async def submit(self, video: SampledVideo, slot: Slot) -> VideoResult:
        future = asyncio.get_running_loop().create_future()
        slot.hold()  # the queued video keeps the slot until the batcher takes it
        try:
            self.queue.put_nowait(_Queued(video, future, time.perf_counter(), slot))
        except asyncio.QueueFull:  # admission keeps this from happening; answer rather than hang
            slot.release()
            raise ApiError(503, "overloaded", "the batch queue is full; retry later", {"Retry-After": "1"})
        return await future  # a timeout cancels it, and the batcher skips the video

    async def _gather(self) -> list[_Queued]:
        batch = [await self.queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            for item in batch:
                item.slot.release()
            live = [item for item in batch if not item.future.done()]  # timed-out requests drop out here
            if not live:
                continue
            started = time.perf_counter()
            for item in live:
                wait = started - item.enqueued
                item.video.timing_ms["queue"] = wait * 1e3
                self.metrics.queue_wait.observe(wait)
            try:
                results = await loop.run_in_executor(self.model_thread, self.engine.run_batch,
                                                      [item.video for item in live])
            except asyncio.CancelledError:
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(ServiceStopping("the service stopped during this batch"))
                raise
            except Exception as exc:  # the backend failed: each request of the batch says so
                log.exception("backend failed on a batch of %d", len(live))
                results = [error_result(item.video.input, exc) for item in live]
            elapsed = time.perf_counter() - started
            self.batch_seconds = elapsed if not self.batch_seconds else 0.8 * self.batch_seconds + 0.2 * elapsed
            self.metrics.model_latency.observe(elapsed)
            self.metrics.batch_size.observe(len(live))
            self.metrics.videos_scored.inc(sum(r.ok for r in results))
            for item, result in zip(live, results):
                if not item.future.done():
                    item.future.set_result(result)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        while not self.queue.empty():  # whoever still waits is answered, not left hanging
            item = self.queue.get_nowait()
            item.slot.release()
            if not item.future.done():
                item.future.set_exception(ServiceStopping("the service is shutting down"))
        self.model_thread.shutdown(wait=False, cancel_futures=True)


# -- receiving the input ---------------------------------------------------------------------


@dataclass
class Upload:
    path: Path
    filename: str
    size: int
    receive_ms: float


class _MultipartUpload:
    """Streams the ``file`` part of a multipart body into a temp file, refusing it past ``limit`` bytes."""

    def __init__(self, limit: int, directory: Path | None, writer: ThreadPoolExecutor):
        self.limit = limit
        self.directory = directory
        self.writer = writer
        self._write = None  # the write in progress (a concurrent future)
        self.path: Path | None = None
        self.filename = ""
        self.size = 0
        self.complete = False  # the file part's closing boundary was seen
        self._file = None
        self._pending = bytearray()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._in_file_part = False
        self.callbacks = {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def _on_part_begin(self) -> None:
        self._disposition = b""
        self._in_file_part = False

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name", b"").decode("utf-8", "replace") != UPLOAD_FIELD:
            return  # other form fields are read past (the body-size cap still bounds them)
        if self._file is not None:
            raise ApiError(400, "bad_request", f"send one {UPLOAD_FIELD!r} part per request")
        filename = options.get(b"filename", b"").decode("utf-8", "replace")
        self.filename = Path(filename.replace("\\", "/")).name[:255] or "upload"
        suffix = Path(self.filename).suffix.lower()  # a hint for FFmpeg's format probe
        fd, name = tempfile.mkstemp(prefix="qclip-upload-", suffix=suffix if _SAFE_SUFFIX.fullmatch(suffix) else "",
                                    dir=self.directory)
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._in_file_part = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file_part:
            return
        self.size += end - start
        if self.size > self.limit:
            raise ApiError(413, "upload_too_large", f"the upload exceeds the limit of {self.limit} bytes")
        self._pending += data[start:end]

    def _on_part_end(self) -> None:
        if self._in_file_part:
            self.complete = True
            self._in_file_part = False

    @property
    def buffered(self) -> int:
        return len(self._pending)

    async def flush(self) -> None:
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            self._write = self.writer.submit(self._file.write, data)  # off the event loop: the disk may stall
            await asyncio.wrap_future(self._write)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def discard(self) -> None:
        """Close and delete the temp file — after a write still running (a timeout cancelled its await)."""

        def remove(_=None) -> None:
            self.close()
            if self.path is not None:
                self.path.unlink(missing_ok=True)

        if self._write is not None and not self._write.done():
            self._write.add_done_callback(remove)
        else:
            remove()


async def receive_upload(request: Request, limit: int, directory: Path | None, writer: ThreadPoolExecutor) -> Upload:
    """The multipart body's ``file`` part, written to a temp file (the caller deletes it)."""
    started = time.perf_counter()
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary")
    body_limit = limit + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > body_limit:
        raise ApiError(413, "upload_too_large", f"the upload exceeds the limit of {limit} bytes")
    upload = _MultipartUpload(limit, directory, writer)
    parser = MultipartParser(boundary, upload.callbacks)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:  # a body without Content-Length, or one that lied about it
                raise ApiError(413, "upload_too_large", f"the upload exceeds the limit of {limit} bytes")
            parser.write(chunk)
            if upload.buffered >= UPLOAD_FLUSH_BYTES:
                await upload.flush()
        parser.finalize()
        if upload.path is None:
            raise ApiError(400, "missing_file", f"multipart body without a {UPLOAD_FIELD!r} part")
        if not upload.complete:
            raise ApiError(400, "bad_multipart", "the multipart body ended inside the file part")
        await upload.flush()
        upload.close()
    except MultipartParseError as exc:
        upload.discard()
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
    except ClientDisconnect:
        upload.discard()
        raise ApiError(400, "client_disconnected", "the client went away during the upload") from None
    except BaseException:
        upload.discard()
        raise
    return Upload(upload.path, upload.filename, upload.size, (time.perf_counter() - started) * 1e3)


async def read_json_path(request: Request) -> str:
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > JSON_BODY_LIMIT:
                raise ApiError(413, "body_too_large", f"a JSON request is at most {JSON_BODY_LIMIT} bytes")
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away during the request") from None
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("path"), str) or not payload["path"]:
        raise ApiError(400, "bad_request", 'a JSON request is {"path": "<file under an allowed directory>"}')
    return payload["path"]


def resolve_allowed_path(raw: str, roots: tuple[Path, ...]) -> Path:
    """The real path of ``raw`` (symlinks resolved) if it lies under a root, else 403.

    A relative path is taken relative to the first root. The resolved path, not ``raw``, is
    what gets opened, so no symlink is followed after the check.
    """
    if not roots:
        raise ApiError(403, "path_not_allowed",
                       "this server scores uploads only (start it with --allow-dir to score files by path)")
    if "\x00" in raw:
        raise ApiError(400, "invalid_path", "the path contains a NUL byte")
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    try:
        real = Path(os.path.realpath(candidate))
    except (OSError, ValueError):
        raise ApiError(403, "path_not_allowed", f"{raw!r} cannot be resolved") from None
    if any(real == root or real.is_relative_to(root) for root in roots):
        return real
    raise ApiError(403, "path_not_allowed", f"{raw!r} is not under an allowed directory")


# -- the service -----------------------------------------------------------------------------


class QualityService:
    """The engine, the decode pool, admission and the batcher; built at start-up, torn down at exit."""

    def __init__(self, settings: ServeSettings, on_fatal: Callable[[], None] | None = None):
        if settings.batch < 1 or settings.queue_limit < 1:
            raise ValueError("batch and queue must be ≥ 1")
        self.settings = settings
        self.on_fatal = on_fatal
        self.metrics = ServiceMetrics(settings.batch)
        self.admission = Admission(settings.queue_limit)
        self.metrics.in_flight.set_function(lambda: self.admission.count)
        self.metrics.queue_depth.set_function(lambda: self.batcher.queue.qsize() if self.batcher is not None else 0)
        self.allow_roots = tuple(Path(os.path.realpath(d)) for d in settings.allow_dirs)
        self.engine: QualityEngine | None = None
        self.batcher: Batcher | None = None
        self.decode_pool: ThreadPoolExecutor | None = None
        self.upload_writer = ThreadPoolExecutor(2, thread_name_prefix="qclip-upload")
        self.load_error: str | None = None
        self.stopping = False
        self._loader: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.batcher is not None and self.batcher.running and not self.stopping

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Load in the background: /healthz answers at once, /readyz once the model is warm."""
        self._loader = asyncio.get_running_loop().create_task(self._load(), name="qclip-load")

    async def _load(self) -> None:
        s = self.settings
        started = time.perf_counter()
        try:
            engine = await asyncio.to_thread(
                QualityEngine, s.artifact, engine=s.engine, device=s.device, batch=s.batch, workers=s.workers)
            batcher = Batcher(engine, self.metrics, max_batch=s.batch, max_wait_s=s.batch_wait_s,
                              capacity=s.queue_limit)
            # One call before the first request: kernel selection and allocator warm-up are not
            # billed to a client, and a backend that cannot run fails here, not per request.
            blank = engine.sample_frames(np.zeros((engine.num_frames, *engine.image_size, 3), np.uint8), "<warm-up>")
            await asyncio.to_thread(batcher.run_blocking, [blank])
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("the model could not be loaded: %s", self.load_error)
            if self.on_fatal is not None:
                self.on_fatal()
            return
        self.engine = engine
        self.decode_pool = ThreadPoolExecutor(engine.workers, thread_name_prefix="qclip-decode")
        self.batcher = batcher
        batcher.start()
        log.info("ready in %.1f s: backend %s on %s, batch %d, %d decode workers, %d requests in flight at most",
                 time.perf_counter() - started, engine.backend.name, engine.backend.device, engine.batch,
                 engine.workers, s.queue_limit)

    async def stop(self) -> None:
        self.stopping = True
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()  # the loading thread itself finishes on its own
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader
        if self.batcher is not None:
            await self.batcher.stop()
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.upload_writer.shutdown(wait=False)

    # -- scoring ---------------------------------------------------------------------------------
    def retry_after_s(self) -> int:
        """Roughly how long until the work in flight drains: batches ahead × seconds per batch."""
        per_batch = self.batcher.batch_seconds if self.batcher is not None else 1.0
        batches_ahead = math.ceil(max(self.admission.count, 1) / self.settings.batch)
        return int(min(60, max(1, math.ceil(batches_ahead * per_batch))))

    async def score(self, request: Request) -> JSONResponse:
        if not self.ready:
            message = f"the model failed to load: {self.load_error}" if self.load_error else "the model is loading"
            code = "shutting_down" if self.stopping else "not_ready"
            raise ApiError(503, code, message, {"Retry-After": str(NOT_READY_RETRY_S)})
        slot = self.admission.try_admit()
        if slot is None:
            raise ApiError(503, "overloaded", f"{self.admission.limit} requests in flight; retry later",
                           {"Retry-After": str(self.retry_after_s())})
        started = time.perf_counter()
        received: list[Upload] = []  # filled once the upload is in, so the message and cleanup can name it
        resolved: list[tuple[Path, str]] = []  # (server path, what the client called it)
        try:
            name, result, timing = await asyncio.wait_for(self._score(request, slot, received, resolved), self.settings.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"no result within {self.settings.timeout_s:g} s") from None
        except ServiceStopping as exc:
            raise ApiError(503, "shutting_down", str(exc), {"Retry-After": str(NOT_READY_RETRY_S)}) from None
        except QCLIPError as exc:
            raise ApiError(422, exc.code, self._public_message(exc.message, received, resolved)) from None
        finally:
            slot.release()
            for upload in received:
                upload.path.unlink(missing_ok=True)
        if not result.ok:  # the backend failed on this request's batch
            raise ApiError(500, result.error["code"], result.error["message"])
        record = result.to_record()
        record["input"] = name
        record["timing_ms"] = timing | record["timing_ms"] | {"total": (time.perf_counter() - started) * 1e3}
        return JSONResponse(record)

    async def _score(self, request: Request, slot: Slot, received: list[Upload],
                     resolved: list[tuple[Path, str]]) -> tuple[str, VideoResult, dict]:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == "application/json":
            name = await read_json_path(request)
            source = resolve_allowed_path(name, self.allow_roots)
            resolved.append((source, name))
            timing: dict[str, float] = {}
        elif media_type == "multipart/form-data":
            upload = await receive_upload(request, self.settings.max_upload_bytes, self.settings.upload_dir,
                                          self.upload_writer)
            received.append(upload)
            source, name = upload.path, upload.filename
            timing = {"upload": upload.receive_ms}
        else:
            raise ApiError(415, "unsupported_media_type",
                           'send JSON {"path": ...} or a multipart/form-data upload in the field "file"')
        video = await self._decode(source, slot, timing)
        return name, await self.batcher.submit(video, slot), timing

    async def _decode(self, source: Path, slot: Slot, timing: dict[str, float]) -> SampledVideo:
        submitted = time.perf_counter()

        def sample() -> tuple[SampledVideo, float]:
            picked_up = time.perf_counter()
            return self.engine.sample(source), picked_up - submitted

        slot.hold()  # a decode outliving its request (timeout) still holds the slot
        try:
            job = self.decode_pool.submit(sample)
        except RuntimeError:  # the pool shut down: the service is stopping
            slot.release()
            raise ServiceStopping("the service is shutting down") from None
        job.add_done_callback(lambda _: slot.release())
        try:
            video, waited = await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if self.stopping and job.cancelled():  # shutdown dropped the queued decode, not the client
                raise ServiceStopping("the service is shutting down") from None
            raise
        except QCLIPError:
            raise
        except Exception as exc:  # not a bad video: a fault worth a 500 and a log line
            log.exception("decoding %s failed unexpectedly", source)
            raise ApiError(500, "internal_error", f"{type(exc).__name__}: {exc}") from None
        timing["decode_wait"] = waited * 1e3
        self.metrics.decode_latency.observe(sum(video.timing_ms.get(k, 0.0) for k in ("probe", "decode", "motion")) / 1e3)
        return video

    @staticmethod
    def _public_message(message: str, received: list[Upload], resolved: list[tuple[Path, str]] = ()) -> str:
        """Error messages name the client's file, not the server's temp file or resolved real path."""
        for upload in received:
            message = message.replace(str(upload.path), upload.filename).replace(upload.path.name, upload.filename)
        for path, name in resolved:
            message = message.replace(str(path), name)
        return message

    def readiness(self) -> JSONResponse:
        if not self.ready:
            if self.stopping:
                error = ApiError(503, "shutting_down", "the service is shutting down")
            elif self.load_error:
                error = ApiError(503, "not_ready", f"the model failed to load: {self.load_error}")
            else:
                error = ApiError(503, "not_ready", "the model is loading")
            error.headers["Retry-After"] = str(NOT_READY_RETRY_S)
            return error_response(self.metrics, error)
        engine = self.engine
        return JSONResponse({
            "status": "ready",
            "backend": engine.backend.name,
            "device": engine.backend.device,
            "batch": engine.batch,
            "image_size": list(engine.image_size),
            "num_frames": engine.num_frames,
            "sampler": engine.sampler,
            "calibrated": engine.calibration is not None,
            "queue_limit": self.admission.limit,
        })


def create_app(settings: ServeSettings, on_fatal: Callable[[], None] | None = None) -> FastAPI:
    """The FastAPI app; ``on_fatal`` is called when the model cannot be loaded (the CLI exits)."""
    service = QualityService(settings, on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="qclip-serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    metrics = service.metrics
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(metrics, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(metrics, ApiError(exc.status_code, code, str(exc.detail), dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(metrics, ApiError(500, "internal_error", f"{type(exc).__name__}: {exc}"))

    @app.post(SCORE_PATH)
    async def score(request: Request) -> JSONResponse:
        return await service.score(request)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return service.readiness()

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
