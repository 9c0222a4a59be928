"""The monitor's browser dashboard: one static page at ``/`` and its script and style sheet.

The files live in the package (``monitor/dashboard/``) and are read once, through
``importlib.resources``; nothing is fetched from anywhere else (the page works on an air-gapped
network). Only the known file names are served — no directory listing, no path from the request
ever reaches the file system — each with its content type and an ETag (``Cache-Control:
no-cache``: a browser revalidates and gets a 304 until the package changes). Every URL in the page
is relative (``static/dashboard.js``, ``v1/sources``, ``v1/events``), so the page works at the
server's root and behind a reverse proxy at a path prefix alike (``qclip-monitor --root-path``).

What the page shows and how it stays fast with many sources: ``monitor/dashboard/dashboard.js``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

# The page and the files it loads: name → content type. Nothing else is ever served.
PAGE = "index.html"
STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# The page loads its own files and talks to its own API only; no inline script or style.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'")
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

log = logging.getLogger("qclip_engine.monitor")
_files: dict[str, tuple[bytes, str]] = {}
_lock = threading.Lock()


def _file(name: str) -> tuple[bytes, str]:
    """A dashboard file's bytes and its ETag (read once; ``name`` is one of the known names)."""
    with _lock:
        if name not in _files:
            try:
                data = resources.files(__package__).joinpath("dashboard", name).read_bytes()
            except OSError:  # an install without the package data: said plainly, no path shown
                log.error("the dashboard file %s is missing from this install of qclip_engine", name)
                raise HTTPException(503, "the dashboard's files are missing from this install") from None
            _files[name] = data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        return _files[name]


def _answer(request: Request, name: str, media_type: str, extra: dict | None = None) -> Response:
    data, etag = _file(name)
    headers = HEADERS | {"ETag": etag} | (extra or {})
    if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


def dashboard_routes(router: APIRouter) -> APIRouter:
    """Add the dashboard's routes (``GET /``, ``GET /static/{name}``) to ``router``; returns it."""

    @router.get("/", include_in_schema=False)
    def dashboard_page(request: Request) -> Response:
        return _answer(request, PAGE, "text/html; charset=utf-8", {"Content-Security-Policy": CSP})

    @router.get("/static/{name}", include_in_schema=False)
    def dashboard_static(request: Request, name: str) -> Response:
        media_type = STATIC.get(name)
        if media_type is None:  # the app's 404 body; the name asked for is not echoed
            raise HTTPException(404, "no such dashboard file")
        return _answer(request, name, media_type)

    return router


def dashboard_router() -> APIRouter:
    """The dashboard's routes on a router of their own (to include in any app)."""
    return dashboard_routes(APIRouter())
