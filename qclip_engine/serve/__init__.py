"""The HTTP service behind ``qclip-serve``: one model, dynamic batching across concurrent requests.

Request path (``POST /v1/score``)::

    admission ──> receive input ──> decode pool ──> batch queue ──> model thread
    (503 when     (JSON path under   (--workers      (bounded,      (one thread: next_batch
     --queue       --allow-dir, or    threads,        thread-safe)   up to --batch, then
     requests      a multipart        engine.sample)                 engine.run_batch)
     in flight)    upload to a temp
                   file, 413 past
                   --max-upload-mb)

Every request is answered: a score (200), a structured error ``{"error": {"code", "message"}}``
— 400/403/413/415/422 for the request or its video, 503 when overloaded or not ready (with
``Retry-After``), 504 past ``--timeout-s``, 500 for a server fault (codes: ``serve/errors.py``).
The timeout covers the whole request, upload included, so a slow client cannot hold a slot for ever.

Rooms: ``settings`` (ServeSettings), ``errors`` (ApiError and its rendering), ``metrics``
(Prometheus), ``admission`` (slots), ``batcher`` (the model thread), ``inputs`` (uploads, paths
and their security rules), ``service`` (QualityService: load, decode, score), ``app`` (FastAPI).
"""

from .app import create_app
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
