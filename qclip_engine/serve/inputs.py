"""Receiving a score request's input: a multipart upload, or a JSON path under an allowed root.

Security rules (each answered with the error contract, never a traceback):

* Paths. Scoring by path needs ``--allow-dir``; without one every path request is 403
  ``path_not_allowed``. A path with a NUL byte or a lone surrogate (JSON can carry one) is 400
  ``invalid_path``. A relative path is taken under the first allowed root. The path is
  resolved — every symlink and ``..`` — and accepted only if the real path is a root or lies
  under one (roots are resolved too), so ``../`` escapes, absolute paths outside and symlinks
  pointing out are 403. The resolved path, not the client's string, is what gets opened, so no
  checked symlink is followed again. Only then is it looked at (so nothing outside the roots
  leaks whether it exists), and every OS error is an answer, not a 500: a name too long or a
  symlink loop is 400 ``invalid_path``, no permission 403 ``path_not_allowed``, a missing file
  or a file used as a directory 422 ``not_found``, and anything but a regular file (a
  directory, a FIFO, a device) 422 ``not_a_video`` — never opened, as a FIFO would block.
  Messages quote the client's string (cut to ``PATH_SHOWN_CHARS``), never the root.
* Uploads. The ``file`` part of a ``multipart/form-data`` body is streamed to a temp file made
  by ``mkstemp`` in the upload directory: the client's file name never becomes a server path
  (only its base name is kept, to name the file in answers, and its suffix only if short and
  alphanumeric, as a hint for FFmpeg). The size limit is enforced while the body streams in —
  a declared Content-Length over it is refused before reading, a chunked body is counted — so
  a large upload is 413 ``upload_too_large`` with never more than the limit written to disk
  (and about ``UPLOAD_FLUSH_BYTES`` held in memory). The temp file is deleted on every error (413,
  400 ``bad_multipart``/``missing_file``/``client_disconnected``, 408, a timeout); after scoring
  the service deletes it.
* Slow bodies. Both readers take the body through ``body_chunks``: after a grace period, a body
  whose average rate since it began falls under a minimum (``MinRate``) is dropped with 408
  ``upload_too_slow`` (and ``Connection: close``), a client that sends nothing at all included.
* A JSON body is at most ``JSON_BODY_LIMIT`` bytes (413 ``body_too_large``). One that does not
  parse — bad UTF-8, bad syntax, nested too deeply for the parser — is 400 ``invalid_json``; one
  that is not ``{"path": "<non-empty string>"}`` is 400 ``bad_request``.

Answers name the client's file, never a server path: the service rewrites messages
(``QualityService._public_message`` in ``serve/service.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import stat
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from .errors import ApiError

UPLOAD_FIELD = "file"
JSON_BODY_LIMIT = 64 * 1024  # a path request is a few hundred bytes
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and small fields around the file
UPLOAD_FLUSH_BYTES = 1 << 20  # upload bytes held in memory before they go to the temp file
_SAFE_SUFFIX = re.compile(r"\.[a-z0-9]{1,8}")
PATH_SHOWN_CHARS = 200  # of a client's path quoted in an answer (a JSON body may carry 64 KiB of it)


@dataclass(frozen=True)
class MinRate:
    """A body's floor: once ``grace_s`` has passed, its average rate since it began must stay at
    or above ``bytes_per_s`` (0: no floor)."""

    bytes_per_s: float = 0.0
    grace_s: float = 0.0

    def describe(self) -> str:
        return f"{self.bytes_per_s / 1024:g} KiB/s on average after the first {self.grace_s:g} s"


async def _next_chunk(stream: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


async def body_chunks(request: Request, min_rate: MinRate) -> AsyncIterator[bytes]:
    """``request.stream()``, ended with 408 ``upload_too_slow`` once the body falls under ``min_rate``.

    The wait for each chunk ends at the instant the average since the start would fall under the
    floor, start + max(grace, received / rate) (as Apache mod_reqtimeout's MinRate), so a client
    that stalls, or never sends a byte, is dropped too. Time the reader spends between chunks
    (a disk write) is ours, not the client's: it moves the start.
    """
    stream = request.stream()
    try:
        if min_rate.bytes_per_s <= 0:
            async for chunk in stream:
                yield chunk
            return
        loop = asyncio.get_running_loop()
        started, received = loop.time(), 0
        while True:
            deadline = started + max(min_rate.grace_s, received / min_rate.bytes_per_s)
            try:
                chunk = await asyncio.wait_for(_next_chunk(stream), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                # Connection: close: no point reading the rest of a body this slow.
                raise ApiError(408, "upload_too_slow", f"the request body came in slower than {min_rate.describe()}",
                               {"Connection": "close"}) from None
            if chunk is None:
                return
            received += len(chunk)
            paused = loop.time()
            yield chunk
            started += loop.time() - paused
    finally:
        await stream.aclose()


@dataclass
class Upload:
    path: Path  # the temp file (the caller deletes it)
    filename: str  # the client's base name, for answers
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
        self.filename = Path(filename.replace("\\", "/")).name[:255] or "upload"  # Windows paths too
        suffix = Path(self.filename).suffix.lower()
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


async def receive_upload(request: Request, limit: int, directory: Path | None, writer: ThreadPoolExecutor,
                         min_rate: MinRate = MinRate()) -> Upload:
    """The multipart body's ``file`` part, written to a temp file (the caller deletes it)."""
    started = time.perf_counter()
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary")
    body_limit = limit + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length")
    # isascii: str.isdigit() also accepts "²", which int() refuses (only reachable in-process:
    # uvicorn's parser checks the header itself).
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > body_limit:
        raise ApiError(413, "upload_too_large", f"the upload exceeds the limit of {limit} bytes")
    upload = _MultipartUpload(limit, directory, writer)
    try:
        parser = MultipartParser(boundary, upload.callbacks)
    except FormParserError as exc:  # a boundary past the parser's maximum length
        raise ApiError(400, "bad_multipart", f"unusable multipart boundary: {exc}") from None
    received = 0
    try:
        async with contextlib.aclosing(body_chunks(request, min_rate)) as chunks:
            async for chunk in chunks:
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
    except FormParserError as exc:  # MultipartParseError and the parser's other refusals
        upload.discard()
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
    except ClientDisconnect:
        upload.discard()
        raise ApiError(400, "client_disconnected", "the client went away during the upload") from None
    except BaseException:  # 413, 400, 408, a timeout's cancellation: no temp file outlives its request
        upload.discard()
        raise
    return Upload(upload.path, upload.filename, upload.size, (time.perf_counter() - started) * 1e3)


async def read_json_path(request: Request, min_rate: MinRate = MinRate()) -> str:
    """The ``path`` of a JSON ``{"path": ...}`` body."""
    body = bytearray()
    try:
        async with contextlib.aclosing(body_chunks(request, min_rate)) as chunks:
            async for chunk in chunks:
                body += chunk
                if len(body) > JSON_BODY_LIMIT:
                    raise ApiError(413, "body_too_large", f"a JSON request is at most {JSON_BODY_LIMIT} bytes")
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away during the request") from None
    try:
        payload = json.loads(body)
    except RecursionError:  # deep nesting fits in the size limit: '[' * 30000 is 30 KB
        raise ApiError(400, "invalid_json", "the body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer past Python's digit limit
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {str(exc)[:PATH_SHOWN_CHARS]}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("path"), str) or not payload["path"]:
        raise ApiError(400, "bad_request", 'a JSON request is {"path": "<file under an allowed directory>"}')
    return payload["path"]


def resolve_allowed_path(raw: str, roots: tuple[Path, ...]) -> Path:
    """The real path of ``raw`` (symlinks resolved) if it is a readable regular file under a root;
    else the ``ApiError`` saying why (403 outside the roots; see the module's rules for the rest).

    ``roots`` are real paths (resolved by the caller). A relative path is taken relative to the
    first root. The resolved path, not ``raw``, is what gets opened, so no symlink is followed
    after the check.
    """
    if not roots:
        raise ApiError(403, "path_not_allowed",
                       "this server scores uploads only (start it with --allow-dir to score files by path)")
    if "\x00" in raw:
        raise ApiError(400, "invalid_path", "the path contains a NUL byte")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no file name, and no answer could quote it
        raise ApiError(400, "invalid_path", f"{shown(raw)} is not valid Unicode") from None
    candidate = Path(raw)
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    try:
        real = Path(os.path.realpath(candidate))
    except (OSError, ValueError) as exc:
        raise path_error(raw, exc) from None
    if not any(real == root or real.is_relative_to(root) for root in roots):
        raise ApiError(403, "path_not_allowed", f"{shown(raw)} is not under an allowed directory")
    # Checked here, not left to the decoder: its first look (Path.exists) raises on a name too
    # long, and opening a FIFO would block a decode thread.
    try:
        mode = os.stat(real).st_mode
        if stat.S_ISREG(mode):
            os.close(os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))  # readable by the server?
    except (OSError, ValueError) as exc:
        raise path_error(raw, exc) from None
    if not stat.S_ISREG(mode):
        raise ApiError(422, "not_a_video", f"{shown(raw)} is not a regular file")
    return real


def shown(raw: str) -> str:
    """The client's path as an answer quotes it: ``repr`` (escapes control characters), cut if huge."""
    return repr(raw if len(raw) <= PATH_SHOWN_CHARS else raw[:PATH_SHOWN_CHARS] + "…")


def path_error(raw: str, exc: Exception) -> ApiError:
    """The answer for an OS error on the client's path ``raw``; the message has no server path."""
    code = getattr(exc, "errno", None)
    reason = getattr(exc, "strerror", None) or type(exc).__name__  # strerror names no file
    if code in (errno.ENOENT, errno.ENOTDIR):
        return ApiError(422, "not_found", f"no such file: {shown(raw)}")  # as the decoder says it (errors.py: 422)
    if code in (errno.EACCES, errno.EPERM):
        return ApiError(403, "path_not_allowed", f"{shown(raw)} cannot be read: {reason}")
    return ApiError(400, "invalid_path", f"{shown(raw)} cannot be used: {reason}")  # ENAMETOOLONG, ELOOP, …
