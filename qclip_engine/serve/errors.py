"""The service's answers other than a score, and the one place that renders them.

Every refusal is ``{"error": {"code", "message"}}`` with an HTTP status (and, for 503,
``Retry-After``). Codes and statuses:

    400  invalid_json, bad_request, invalid_path, bad_multipart, missing_file, client_disconnected
         (invalid_path: a NUL byte, a lone surrogate, a name too long, a symlink loop)
    403  path_not_allowed (outside every allowed directory, or not readable by the server)
    404  not_found (no such route)          405  method_not_allowed      other: http_<status>
    408  upload_too_slow (the body came in under --min-upload-kib-s after --upload-grace-s),
         header_timeout (the headers were not complete within --header-timeout-s; serve/connections.py)
    413  upload_too_large, body_too_large
    415  unsupported_media_type
    422  the video's error code from qclip_engine.errors: not_found, empty_file, not_a_video,
         audio_only, unsupported_codec, truncated, decode_failed, format_not_allowed,
         picture_too_large, too_many_frames, decode_timeout; non_finite_output (the model's output
         for this video was NaN or infinite: qclip_engine/engine.py) (for a path request, not_found
         and not_a_video — a directory, FIFO or device — come from serve/inputs.py before decoding)
    429  too_many_requests (--max-receives-per-client bodies arriving from the address),
         too_many_connections (--max-connections-per-client open; serve/connections.py)
    500  internal_error (or the backend's error record when the model call failed)
    503  not_ready, overloaded (--queue requests in flight, or --max-uploads uploads arriving),
         shutting_down (only to a request still waiting when the service stops; qclip-serve's
         uvicorn answers every request before it stops the service, so its clients never see it)
    504  timeout
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from .metrics import ServiceMetrics


class ApiError(Exception):
    """An answer other than a score: HTTP status plus the error contract's code and message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    @classmethod
    def from_record(cls, status: int, record: dict[str, str], headers: dict[str, str] | None = None) -> ApiError:
        """From an error record (``qclip_engine.errors.error_record``), so codes stay the contract's."""
        return cls(status, record["code"], record["message"], headers)


class ServiceStopping(Exception):
    """The service shut down while the request waited (answered 503 ``shutting_down``)."""


def error_response(error: ApiError, metrics: ServiceMetrics) -> JSONResponse:
    """The JSON answer for ``error``, counted in ``qclip_errors_total`` by code."""
    metrics.errors.labels(error.code).inc()
    # JSONResponse encodes UTF-8 strictly: a lone surrogate from a client's string would make the
    # error answer itself fail (a 500), so such characters are spelled as escapes.
    message = error.message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": {"code": error.code, "message": message}}, status_code=error.status,
                        headers=error.headers)
