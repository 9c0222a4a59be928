"""The HTTP service behind ``qclip-serve``: one model, dynamic batching across concurrent requests.

Request path (``POST /v1/score``)::

    receive input ─────> admission ──> decode pool ──> batch queue ──> model thread
    (JSON path under     (503 when     (--workers      (bounded,      (one thread: next_batch
     --allow-dir, or a    --queue       threads,        thread-safe)   up to --batch, then
     multipart upload     requests      engine.sample)                 engine.run_batch)
     to a temp file;      in flight)
     413 past --max-upload-mb, 408 under --min-upload-kib-s after --upload-grace-s,
     503 past --max-uploads uploads arriving, or at once, body unread, if admission is full;
     429 past --max-receives-per-client bodies arriving from one address)

Before that, the connection (``connections``: uvicorn's protocol, wrapped): its request headers
must be complete within ``--header-timeout-s`` (408 ``header_timeout``, closed), and one address
holds at most ``--max-connections-per-client`` connections (429 ``too_many_connections``, closed).

Every request is answered: a score (200), a structured error ``{"error": {"code", "message"}}``
— 400/403/408/413/415/422 for the request or its video, 503 when overloaded or not ready (with
``Retry-After``), 504 past ``--timeout-s``, 500 for a server fault (codes: ``serve/errors.py``).
The timeout covers the whole request, upload included; a body still arriving holds no scoring
slot, and one under the minimum rate is dropped (408) long before the timeout.

Rooms: ``settings`` (ServeSettings), ``errors`` (ApiError and its rendering), ``metrics``
(Prometheus), ``admission`` (slots), ``batcher`` (the model thread), ``inputs`` (uploads, paths
and their security rules), ``connections`` (the header deadline and per-address connections),
``service`` (QualityService: load, decode, score), ``app`` (FastAPI).
"""

from .connections import guarded_protocol
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "guarded_protocol"]


def __getattr__(name: str):
    """``create_app`` (and the engine and torch with it) on first use (PEP 562), so that
    ``ServeSettings`` stays light: ``qclip-serve --ray`` builds it in a driver that loads no model."""
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
