"""The monitor's HTTP API: sources added and removed at run time, their state, a live feed of
every item (Server-Sent Events) and the Prometheus metrics.

``monitor_router(monitor)`` is the routes alone (to mount in another app);
``create_monitor_app(monitor)`` an app of its own whose every refusal is
``{"error": {"code", "message"}}``, as ``qclip-serve``'s (serve/errors.py). Codes and statuses:

    400  invalid_json (a body that is not JSON)
    403  file_not_allowed (a file source outside the monitor's allowed folders, --allow-dir)
    404  unknown_source, not_found (no such route, or /metrics with the metrics off)
    405  method_not_allowed
    409  duplicate_name
    413  body_too_large (a body over 64 KiB)
    422  invalid_source (a body that is not an object, no "name" or "url", a bad URL or field),
         invalid_silence ("seconds" not a number in (0, 86400])
    429  too_many_sources
    500  internal_error (a bug: never a client's input)
    503  stopping (the monitor is shutting down)

The app does not start or stop the monitor: its owner does (the CLI, a test). Monitor calls
that may wait (adding, removing, snapshots) run on worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from .pages import dashboard_routes
from .settings import MonitorError
from .webhook import json_safe

log = logging.getLogger("qclip_engine.monitor")

MAX_BODY_BYTES = 64 * 1024  # a source's spec or a silence: a few hundred bytes
MAX_SILENCE_S = 86400.0
KEEPALIVE_S = 15.0  # an SSE comment after this much silence, so proxies keep the connection open
# An SSE stream polls its subscription (without blocking) this often when it is empty: no thread
# is held per client, so any number of clients cost no worker threads; items wait at most this long.
POLL_S = 0.05
SSE_BUFFER = 1000  # items a slow SSE client may fall behind before it loses the oldest (Subscription)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ApiError(Exception):
    """A refusal of the API itself (the monitor's own are ``MonitorError``)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    # A client's lone surrogate (a name in a path) would make the JSON answer itself fail: escaped.
    message = str(message).encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def monitor_router(monitor, *, keepalive_s: float = KEEPALIVE_S, health_and_metrics: bool = True) -> APIRouter:
    """The monitor's routes; ``keepalive_s``: seconds of SSE silence before a keep-alive comment;
    ``health_and_metrics``: False for an app that has its own ``/healthz`` and ``/metrics``
    (``qclip-serve --monitor``: monitor/shared.py), which leaves out the monitor's."""
    router = APIRouter()

    if health_and_metrics:
        @router.get("/healthz")
        async def healthz() -> dict:
            return {"status": "alive"}

        @router.get("/metrics")
        def prometheus_metrics() -> Response:
            metrics = getattr(monitor, "metrics", None)
            if metrics is None:
                raise ApiError(404, "not_found", "this monitor runs without metrics")
            return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/v1/sources")
    def list_sources() -> JSONResponse:
        return _json({"sources": monitor.snapshot()})

    @router.post("/v1/sources", status_code=201)
    async def add_source(request: Request) -> JSONResponse:
        spec = await _json_body(request)
        if not isinstance(spec, dict):
            raise ApiError(422, "invalid_source", 'the body must be a JSON object with "name" and "url"')
        missing = [key for key in ("name", "url") if key not in spec]
        if missing:
            raise ApiError(422, "invalid_source", f"the source has no {' or '.join(repr(k) for k in missing)}")
        if not (isinstance(spec["name"], str) and isinstance(spec["url"], str)):
            raise ApiError(422, "invalid_source", '"name" and "url" must be strings')
        if _lone_surrogate(spec):  # a JSON "\ud800" escape: no path, URL or label holds one
            raise ApiError(422, "invalid_source", "the source holds a string that is not valid Unicode")
        # from_api: a client may only add files inside the monitor's allowed folders (403 file_not_allowed).
        added = await asyncio.to_thread(lambda: monitor.add(spec, from_api=True))
        try:
            snapshot = await asyncio.to_thread(monitor.snapshot_one, spec["name"])
        except MonitorError:  # removed by another request in between: it was added all the same
            if not isinstance(added, dict):
                raise
            snapshot = added
        return _json({"source": snapshot}, 201)

    @router.get("/v1/sources/{name}")
    def get_source(name: str) -> JSONResponse:
        return _json(monitor.snapshot_one(name))

    @router.delete("/v1/sources/{name}")
    async def remove_source(name: str) -> dict:
        await asyncio.to_thread(monitor.remove, name)
        return {"removed": name}

    @router.post("/v1/sources/{name}/silence")
    async def silence_source(name: str, request: Request) -> dict:
        body = await _json_body(request)
        seconds = body.get("seconds") if isinstance(body, dict) else None
        if not (isinstance(seconds, (int, float)) and not isinstance(seconds, bool)
                and 0 < seconds <= MAX_SILENCE_S):
            raise ApiError(422, "invalid_silence",
                           f'the body must be {{"seconds": s}} with 0 < s <= {MAX_SILENCE_S:g}')
        now = time.time()
        until = await asyncio.to_thread(monitor.silence, name, float(seconds))
        # The monitor's own end of the silence if it says, else now + seconds.
        if not (isinstance(until, (int, float)) and not isinstance(until, bool) and math.isfinite(until)):
            until = now + float(seconds)
        return {"silenced_until": until}

    @router.get("/v1/events")
    async def events(request: Request, source: str | None = None) -> StreamingResponse:
        if source is not None and source not in await asyncio.to_thread(monitor.source_names):
            raise MonitorError("unknown_source", f"no source named {source!r}", 404)
        return StreamingResponse(_sse(request, monitor, source, keepalive_s), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    dashboard_routes(router)  # the browser dashboard at / (monitor/pages.py)
    return router


def create_monitor_app(monitor, *, root_path: str = "", keepalive_s: float = KEEPALIVE_S) -> FastAPI:
    """The monitor's API as an app (behind a proxy at a path prefix: ``root_path``)."""
    app = FastAPI(title="qclip-monitor", root_path=root_path, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.monitor = monitor

    @app.exception_handler(MonitorError)
    async def monitor_error(request: Request, exc: MonitorError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        response = error_response(exc.status_code, code, str(exc.detail))
        response.headers.update(dict(exc.headers or {}))  # 405's Allow
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The routes read their bodies themselves; only a query or path parameter lands here.
        return error_response(422, "invalid_request", "invalid query or path parameter")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Logged in full; the answer names no file, path or type of the server.
        log.exception("unhandled error on %s", request.url.path)
        return error_response(500, "internal_error", "internal error (logged by the monitor)")

    app.include_router(monitor_router(monitor, keepalive_s=keepalive_s))
    return app


def _json(data, status: int = 200) -> JSONResponse:
    """A JSON answer of monitor state: a NaN or a NumPy scalar in a record never makes it a 500."""
    return JSONResponse(json_safe(data), status_code=status)


async def _json_body(request: Request):
    """The request's body as JSON (strict: no NaN or Infinity), at most ``MAX_BODY_BYTES``."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 JSON, or nested too deep"
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {detail}") from None


def _lone_surrogate(value) -> bool:
    if isinstance(value, str):
        return not value.isascii() and any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_lone_surrogate(k) or _lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_lone_surrogate(v) for v in value)
    return False


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


async def _sse(request: Request, monitor, source: str | None, keepalive_s: float):
    """Feed items as SSE events (``event: <type>``, ``id: <the feed's running id>``, ``data: <json>``)
    until the client goes or the monitor stops; a comment after ``keepalive_s`` of silence.

    The subscription is made here, once the response is streaming, so that every way the stream
    ends (the client gone, the server cancelling it, the monitor stopped) closes it."""
    n, quiet_since = 0, time.monotonic()
    sub = monitor.subscribe(SSE_BUFFER)
    try:
        while not await request.is_disconnected():
            item = sub.get(0)  # never waits: the subscription is polled, the event loop never blocks
            if item is None:
                if sub.closed or monitor.closing.is_set():  # the monitor stopped, or its server is exiting
                    return
                if time.monotonic() - quiet_since >= keepalive_s:
                    quiet_since = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(POLL_S)
                continue
            if source is not None and item.get("source") != source:
                continue
            n += 1
            quiet_since = time.monotonic()
            yield sse_event(item, item.get("id", n))
    finally:
        sub.close()


def sse_event(item: dict, n: int) -> str:
    """One feed item as an SSE event (a JSON payload has no raw newline: one ``data:`` line)."""
    kind = "".join(c for c in str(item.get("type", "message")) if c.isprintable()) or "message"
    data = json.dumps(json_safe(item), default=str, allow_nan=False)
    return f"event: {kind}\nid: {n}\ndata: {data}\n\n"

