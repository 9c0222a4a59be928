"""``create_app``: the FastAPI app of ``qclip-serve`` — lifespan, exception handlers, four routes.

Every answer other than a score goes through ``serve/errors.py``'s ``error_response``, so the
body is always ``{"error": {"code", "message"}}`` and ``qclip_errors_total`` counts it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import error_record
from .errors import ApiError, error_response
from .metrics import RequestMetricsMiddleware
from .service import QualityService
from .settings import ServeSettings

log = logging.getLogger("qclip_engine.serve")

SCORE_PATH = "/v1/score"
ENDPOINTS = (SCORE_PATH, "/healthz", "/readyz", "/metrics")


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
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, endpoints=ENDPOINTS)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc, metrics)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(ApiError(exc.status_code, code, str(exc.detail), dict(exc.headers or {})), metrics)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(ApiError.from_record(500, error_record(exc)), metrics)

    @app.post(SCORE_PATH)
    async def score(request: Request) -> JSONResponse:
        return await service.score(request)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if not service.ready:
            raise service.not_ready_error()
        return JSONResponse(service.readiness())

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return app
