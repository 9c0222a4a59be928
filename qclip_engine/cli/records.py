"""``qclip-score``'s records on their way out: JSON lines or CSV, UTF-8 whatever the file names hold,
never a non-finite number, and write failures as one ``OutputError``.

Encoding: a file name that is not valid UTF-8 reaches Python with its bad bytes as lone surrogates
(``os.fsdecode``, "surrogateescape"); :func:`printable` writes each such byte as a ``\\xNN``
escape, so the output always decodes as UTF-8. A record JSON cannot carry (a NaN) is written as that
input's ``internal_error`` record in its place.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator, TextIO

from ..contract import QUALITY_LEVELS

def csv_columns(levels: tuple[str, ...] = QUALITY_LEVELS) -> list[str]:
    """The CSV header: one column per quality level of the model (Q-CLIP's five, CLIPVQA's six)."""
    return ["input", "score", "mos", *levels, "frames", "backend", "warnings", "error_code", "error_message"]


WINDOW_CSV_COLUMNS = ["index", "start_s", "end_s", "score", "mos", "alert", "partial", "backend", "warnings",
                      "error_code", "error_message"]
# What says which input (or stream window) a record is: kept in the internal_error record that
# replaces a record JSON cannot carry.
IDENTITY_KEYS = ("input", "index", "start_s", "end_s")

_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_surrogate(match: re.Match) -> str:
    code = ord(match.group())
    # U+DC80..U+DCFF: a byte 0x80..0xff that was not UTF-8, held by os.fsdecode's surrogateescape.
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def printable(value: Any) -> Any:
    """``value`` with every string made encodable as UTF-8 (the encoding policy of the module docstring):
    each undecodable file-name byte becomes a ``\\xNN`` escape; dicts and lists are walked."""
    if isinstance(value, str):
        return _SURROGATE.sub(_escape_surrogate, value)
    if isinstance(value, dict):
        return {printable(k): printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    return value


class OutputError(Exception):
    """The records (or the ``--timeline`` plot) could not be written. ``closed_pipe``: the reader
    went away (``qclip-score … | head``), which ends the run quietly, as it ends other Unix tools."""

    def __init__(self, where: str, cause: OSError):
        super().__init__(f"{where}: could not be written: {cause.strerror or cause}")
        self.closed_pipe = isinstance(cause, BrokenPipeError)


class RecordWriter:
    """JSON lines or CSV, flushed per record so a long run can be followed (and survives a kill).
    ``where`` names the destination in the OutputError a failed write raises."""

    def __init__(self, stream: TextIO, fmt: str, columns: list[str], where: str = "the output"):
        self.stream, self.fmt, self.columns, self.where = stream, fmt, columns, where
        if fmt == "csv":
            self.csv = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
            with self._writing():
                self.csv.writeheader()

    def write(self, record: dict) -> dict:
        """Write ``record``; returns what was written (an ``internal_error`` record in its place when
        JSON cannot carry it)."""
        record = printable(record)  # one policy for both formats (see the module docstring)
        try:
            line = json.dumps(record, allow_nan=False)  # CSV too: a record is valid JSON or not written
        except (ValueError, TypeError) as exc:
            record = _internal_error_record(record, exc)
            line = json.dumps(record)
        with self._writing():
            if self.fmt == "jsonl":
                self.stream.write(line + "\n")
            else:
                self.csv.writerow(_csv_row(record, self.columns))
        return record

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
            self.stream.flush()
        except OSError as exc:
            raise OutputError(self.where, exc) from exc


def _csv_row(record: dict, columns: list[str]) -> dict:
    row = {k: record.get(k) for k in columns}
    row.update(record.get("levels") or {})
    if record.get("frames") is not None:
        row["frames"] = " ".join(map(str, record["frames"]))
    if record.get("warnings"):
        row["warnings"] = "; ".join(f"{w['code']}: {w['message']}" for w in record["warnings"])
    if record.get("error"):
        row["error_code"], row["error_message"] = record["error"]["code"], record["error"]["message"]
    return row


def _internal_error_record(record: dict, exc: Exception) -> dict:
    """The ``internal_error`` record in the place of a record JSON cannot carry (a NaN, an infinity:
    the engine makes non-finite model outputs ``non_finite_output`` errors, so one here is a fault,
    reported for this input only)."""
    identity = {k: record[k] for k in IDENTITY_KEYS if isinstance(record.get(k), (str, int))
                or (isinstance(record.get(k), float) and math.isfinite(record[k]))}
    message = f"the record held a value JSON cannot carry ({exc}); it was not written"
    return {**identity, "error": {"code": "internal_error", "message": message}, "timing_ms": {}}


@contextlib.contextmanager
def open_output(path: Path | None) -> Iterator[tuple[TextIO, str]]:
    """The records' destination, UTF-8: ``path`` (created or truncated) or stdout, and its name for
    messages. Failing to open or close it raises OutputError."""
    where = f"--out {path}" if path else "stdout"
    try:
        stream = (open(path, "w", newline="", encoding="utf-8") if path
                  else io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", write_through=True))
    except OSError as exc:
        raise OutputError(where, exc) from exc
    try:
        yield stream, where
    except BaseException:
        with contextlib.suppress(OSError):  # the failure under way says what went wrong
            _close(stream, path)
        raise
    try:
        _close(stream, path)
    except OSError as exc:
        raise OutputError(where, exc) from exc


def _close(stream: TextIO, path: Path | None) -> None:
    if path:
        stream.close()  # closes the file even when its last flush fails
        return
    try:
        stream.detach()  # stdout itself stays open for the interpreter
    except OSError:
        # What is still buffered cannot reach stdout (its reader went away, a full disk): point
        # stdout at /dev/null, so that neither the detach nor the interpreter's last flush fails
        # again (Python's recipe, in the signal module's docs, "Note on SIGPIPE").
        with contextlib.suppress(OSError, ValueError):  # a stdout without a descriptor (captured)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
            stream.detach()
        raise
