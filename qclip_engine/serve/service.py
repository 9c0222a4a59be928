"""``QualityService``: the engine, the decode pool, admission and the batcher behind ``/v1/score``.

The model loads in the background (``/healthz`` answers at once, ``/readyz`` once the model is
warm). A score request's input is received first (``serve/inputs.py``: at most ``max_uploads``
multipart uploads at once — JSON path requests, a few hundred bytes, do not take those slots —
and at most ``max_receives_per_client`` bodies per client address, each above a minimum rate
after a grace period), and only then admitted (``serve/admission.py``), so a slow client never
holds a scoring slot; a request that arrives while admission is full is refused at once, its
body unread. Then it is decoded in the decode pool (PyAV releases the GIL) within the decode
limits (``video/limits.py``: picture size, frames, seconds, and the pixels decoded at once) and
handed to the batcher's model thread (``serve/batcher.py``).

The whole request, upload included, runs under ``--timeout-s``. When it times out, or its client
goes away once its body is in, its decode is stopped (a cancel event the decoder checks between
packets) and its queued video is skipped, so the decode thread is free again within a packet's
decode. Answers never name a server path: messages are rewritten to the client's names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse

from ..engine import QualityEngine, SampledVideo, VideoResult
from ..errors import QCLIPError, error_record
from .admission import Admission, Slot
from .batcher import Batcher
from .errors import ApiError, ServiceStopping
from .inputs import MinRate, Upload, read_json_path, receive_upload, resolve_allowed_path
from .metrics import ServiceMetrics
from .settings import ServeSettings

log = logging.getLogger("qclip_engine.serve")

NOT_READY_RETRY_S = 5
# Error results of one video that say the video could not be scored, not that the server failed.
VIDEO_RESULT_CODES = frozenset({"non_finite_output"})


class QualityService:
    """Built at start-up, torn down at exit; ``on_fatal`` is called when the model cannot be loaded."""

    def __init__(self, settings: ServeSettings, on_fatal: Callable[[], None] | None = None):
        if min(settings.batch, settings.queue_limit, settings.max_uploads, settings.max_receives_per_client) < 1:
            raise ValueError("batch, queue, max_uploads and max_receives_per_client must be ≥ 1")
        self.decode_limits = settings.decode_limits  # a ValueError here for limits that cannot be
        if settings.min_upload_bytes_per_s > 0 and not settings.upload_grace_s > 0:
            raise ValueError("a minimum upload rate needs a grace period > 0")
        self.settings = settings
        self.on_fatal = on_fatal
        self.metrics = ServiceMetrics(settings.batch)
        self.admission = Admission(settings.queue_limit)
        self.metrics.in_flight.set_function(lambda: self.admission.count)
        self.receiving = 0  # bodies being received (event loop only)
        self.uploads_receiving = 0  # of which multipart uploads (max_uploads bounds these)
        self.receiving_by_client: Counter = Counter()  # bodies being received, by client address
        self.metrics.uploads_in_progress.set_function(lambda: self.receiving)
        self.min_rate = MinRate(settings.min_upload_bytes_per_s, settings.upload_grace_s)
        self.metrics.queue_depth.set_function(lambda: self.batcher.queue.qsize() if self.batcher is not None else 0)
        self.allow_roots = tuple(Path(os.path.realpath(d)) for d in settings.allow_dirs)
        self.engine: QualityEngine | None = None  # set once the model is loaded and warm
        self.batcher: Batcher | None = None
        self.decode_pool: ThreadPoolExecutor | None = None
        self.upload_writer = ThreadPoolExecutor(2, thread_name_prefix="qclip-upload")
        self.load_error: str | None = None
        # Batch-queue room for videos of no request (a monitor's windows, monitor/shared.py), on top of
        # the admitted requests' room: those never find the queue full because of them.
        self.reserved_queue = 0
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
                QualityEngine, s.artifact, engine=s.engine, device=s.device, precision=s.precision, batch=s.batch,
                workers=s.workers, strict=s.strict, torch_mode=s.torch_mode, decoder=s.decoder,
                limits=self.decode_limits)
            blank = engine.sample_frames(np.zeros((engine.num_frames, *engine.image_size, 3), np.uint8), "<warm-up>")
            self.batcher = Batcher(engine, self.metrics, max_batch=s.batch, max_wait_s=s.batch_wait_s,
                                   capacity=s.queue_limit + self.reserved_queue)
            # One call before the first request, on the model thread: kernel selection and allocator
            # warm-up are not billed to a client, and a backend that cannot run fails here, not per request.
            warmed = await asyncio.wrap_future(self.batcher.start(warm_up=[blank]))
            if not warmed[0].ok:  # e.g. non-finite output on a blank video: it would answer every request so
                self.batcher.stop()
                raise RuntimeError(f"the model cannot score: {warmed[0].error['message']}")
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("the model could not be loaded: %s", self.load_error)
            if self.on_fatal is not None:
                self.on_fatal()
            return
        self.decode_pool = ThreadPoolExecutor(engine.workers, thread_name_prefix="qclip-decode")
        self.engine = engine
        backend = engine.backend
        self.metrics.backend_info.labels(backend.name, backend.precision, backend.device).set(1)
        log.info("ready in %.1f s: backend %s on %s, batch %d, %d decode workers, %d requests in flight at most",
                 time.perf_counter() - started, backend.label, backend.device, engine.batch,
                 engine.workers, s.queue_limit)

    async def stop(self) -> None:
        self.stopping = True
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()  # the loading thread itself finishes on its own
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader
        if self.batcher is not None:
            self.batcher.stop()
        if self.decode_pool is not None:
            self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.upload_writer.shutdown(wait=False)

    # -- scoring ---------------------------------------------------------------------------------
    def retry_after_s(self) -> int:
        """Roughly how long until the work in flight drains: batches ahead × seconds per batch."""
        per_batch = self.batcher.batch_seconds if self.batcher is not None else 1.0
        batches_ahead = math.ceil(max(self.admission.count, 1) / self.settings.batch)
        return int(min(60, max(1, math.ceil(batches_ahead * per_batch))))

    def not_ready_error(self) -> ApiError:
        """Why the service cannot score now (503, with Retry-After)."""
        if self.stopping:
            code, message = "shutting_down", "the service is shutting down"
        elif self.load_error:
            code, message = "not_ready", f"the model failed to load: {self.load_error}"
        elif self.batcher is not None and self.batcher.failure:
            code, message = "not_ready", f"the model stopped: {self.batcher.failure}"
        else:
            code, message = "not_ready", "the model is loading"
        return ApiError(503, code, message, {"Retry-After": str(NOT_READY_RETRY_S)})

    def overloaded_error(self, body_read: bool) -> ApiError:
        headers = {"Retry-After": str(self.retry_after_s())}
        if not body_read:  # answered before the body: close rather than read it all to keep the connection
            headers["Connection"] = "close"
        return ApiError(503, "overloaded", f"{self.admission.limit} requests in flight; retry later", headers)

    async def score(self, request: Request) -> JSONResponse:
        if not self.ready:
            raise self.not_ready_error()
        if self.admission.count >= self.admission.limit:  # cheap early refusal; admitted for real after the receive
            raise self.overloaded_error(body_read=False)
        upload = _media_type(request) == "multipart/form-data"
        if upload and self.uploads_receiving >= self.settings.max_uploads:
            raise ApiError(503, "overloaded", f"{self.settings.max_uploads} uploads in progress; retry later",
                           {"Retry-After": str(self.retry_after_s()), "Connection": "close"})
        client = request.client.host if request.client else ""
        if self.receiving_by_client[client] >= self.settings.max_receives_per_client:
            raise ApiError(429, "too_many_requests",
                           f"{self.settings.max_receives_per_client} requests from this address are still sending "
                           "their bodies; retry later", {"Retry-After": "1", "Connection": "close"})
        started = time.perf_counter()
        received: list[Upload] = []  # filled once the upload is in, so the message and cleanup can name it
        resolved: list[tuple[Path, str]] = []  # (server path, what the client called it)
        slots: list[Slot] = []  # the scoring slot, once admitted
        try:
            name, result, timing = await asyncio.wait_for(
                self._score(request, slots, received, resolved, upload, client), self.settings.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"no result within {self.settings.timeout_s:g} s") from None
        except ServiceStopping as exc:
            raise ApiError(503, "shutting_down", str(exc), {"Retry-After": str(NOT_READY_RETRY_S)}) from None
        except QCLIPError as exc:  # the video: its error code, with the client's name for the file
            record = error_record(exc)
            record["message"] = self._public_message(record["message"], received, resolved)
            raise ApiError.from_record(422, record) from None
        finally:
            for slot in slots:
                slot.release()
            for upload in received:
                upload.path.unlink(missing_ok=True)
        if not result.ok:  # the model gave no usable output for this video (422), or the backend failed (500)
            raise ApiError.from_record(422 if result.error["code"] in VIDEO_RESULT_CODES else 500, result.error)
        record = result.to_record()
        record["input"] = name
        record["timing_ms"] = timing | record["timing_ms"] | {"total": (time.perf_counter() - started) * 1e3}
        return JSONResponse(record)

    async def _score(self, request: Request, slots: list[Slot], received: list[Upload],
                     resolved: list[tuple[Path, str]], upload: bool, client: str) -> tuple[str, VideoResult, dict]:
        with self._receiving(upload, client):
            source, name, timing = await self._receive(request, received, resolved)
        slot = self.admission.try_admit()  # only now: a body still arriving holds no scoring slot
        if slot is None:
            raise self.overloaded_error(body_read=True)
        slots.append(slot)

        async def decoded_and_scored() -> VideoResult:
            return await self.batcher.submit(await self._decode(source, slot, timing), slot)

        return name, await _while_client_waits(request, decoded_and_scored()), timing

    @contextlib.contextmanager
    def _receiving(self, upload: bool, client: str):
        """Counts a body being received: in all, as an upload (``max_uploads``) and for its address."""
        self.receiving += 1
        self.uploads_receiving += upload
        self.receiving_by_client[client] += 1
        try:
            yield
        finally:
            self.receiving -= 1
            self.uploads_receiving -= upload
            self.receiving_by_client[client] -= 1
            if not self.receiving_by_client[client]:
                del self.receiving_by_client[client]

    async def _receive(self, request: Request, received: list[Upload],
                       resolved: list[tuple[Path, str]]) -> tuple[Path, str, dict[str, float]]:
        """(the file to decode, the client's name for it, timing) of a JSON path or a multipart upload."""
        media_type = _media_type(request)
        if media_type == "application/json":
            name = await read_json_path(request, self.min_rate)
            source = resolve_allowed_path(name, self.allow_roots)
            resolved.append((source, name))
            return source, name, {}
        if media_type == "multipart/form-data":
            upload = await receive_upload(request, self.settings.max_upload_bytes, self.settings.upload_dir,
                                          self.upload_writer, self.min_rate)
            received.append(upload)
            return upload.path, upload.filename, {"upload": upload.receive_ms}
        raise ApiError(415, "unsupported_media_type",
                       'send JSON {"path": ...} or a multipart/form-data upload in the field "file"')

    async def _decode(self, source: Path, slot: Slot, timing: dict[str, float]) -> SampledVideo:
        submitted = time.perf_counter()
        cancel = threading.Event()  # set when the request ends first: the decoder stops between packets

        def sample() -> tuple[SampledVideo, float]:
            picked_up = time.perf_counter()
            return self.engine.sample(source, cancel=cancel), picked_up - submitted

        slot.hold()  # a decode outliving its request still holds the slot, until it stops
        try:
            job = self.decode_pool.submit(sample)
        except RuntimeError:  # the pool shut down: the service is stopping
            slot.release()
            raise ServiceStopping("the service is shutting down") from None
        job.add_done_callback(lambda _: slot.release())
        try:
            video, waited = await asyncio.wrap_future(job)
        except asyncio.CancelledError:  # the request timed out or its client left: stop its decode
            cancel.set()
            job.cancel()  # not started yet: it never runs
            if self.stopping and job.cancelled():  # shutdown dropped the queued decode, not the client
                raise ServiceStopping("the service is shutting down") from None
            raise
        except QCLIPError:
            raise
        except Exception as exc:  # not a bad video: a fault worth a 500 and a log line
            log.exception("decoding %s failed unexpectedly", source)
            raise ApiError.from_record(500, error_record(exc)) from None
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

    def readiness(self) -> dict:
        """/readyz's answer when ready (the caller answers ``not_ready_error()`` otherwise)."""
        engine = self.engine
        return {
            "status": "ready",
            "backend": engine.backend.name,
            "precision": engine.backend.precision,
            "device": engine.backend.device,
            "batch": engine.batch,
            "image_size": list(engine.image_size),
            "num_frames": engine.num_frames,
            "sampler": engine.sampler,
            "calibrated": engine.calibration is not None,
            "queue_limit": self.admission.limit,
        }


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects. Only once the body is read: ASGI's receive then
    waits for ``http.disconnect`` (uvicorn sends it when the connection drops)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _while_client_waits(request: Request, work):
    """``work``'s result; if the client goes away first, ``work`` is cancelled (its decode stops)
    and the answer, which no one will read, is ``client_disconnected``. A cancellation from outside
    (the request's deadline) cancels ``work`` too."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ApiError(400, "client_disconnected", "the client went away before its answer")
