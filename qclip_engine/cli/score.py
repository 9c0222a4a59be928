"""``qclip-score``: score videos (or a stream) and write one record per input.

    qclip-score INPUTS... [--artifact DIR] [--engine auto|torch|onnxruntime|tensorrt] [--batch N]
                [--format jsonl|csv] [--out FILE] [--stream SOURCE --timeline PNG]

INPUTS are files, directories (searched recursively for files with a video suffix,
``VIDEO_SUFFIXES``), globs (quoted, ``'clips/**/*.mp4'``) and ``@list.txt`` files (one input
per line). Without ``--artifact`` the zero-shot model (README, "The model in Python") of the
default backbone is used (its weights come from the hub or its cache; offline,
``--weights FILE`` gives them).

Every input yields exactly one record — a score or an error with its code — in input order,
and the run goes on after a bad input. A file that looks cut short (it ends before the frames
or duration its container declares, or inside a frame) is scored on what is there, with a
``warnings`` entry of code ``truncated`` saying what was decoded against what was declared;
``--strict`` makes it the ``truncated`` error instead.

Besides the decode codes of ``qclip_engine.errors``, an input can fail before decoding with
``invalid_input`` (an empty or blank input; an ``@list`` that is not a list within the bounds
below or that names itself), ``no_videos`` (a directory with no file of a video suffix in it) or
``permission_denied`` (a directory, or a directory under one, that cannot be read: one record
each, in path order among the directory's videos).

``@list`` files hold one input a line (blank lines and lines starting with ``#`` skipped) and may
name other lists. They are read a line at a time, never whole: a list of more than
``MAX_LIST_BYTES``, a line longer than ``MAX_LIST_LINE_BYTES`` or a NUL byte (no file name holds
one: a video or /dev/zero named as a list) is ``invalid_input``, and so is a list named again
inside its own expansion (directly or through other lists; one named twice side by side is
expanded twice). Pipes and devices are read the same way (``@<(find …)`` works; one that never
sends blocks, as ``cat`` would). A list that cannot be opened is passed on as an input, so its
record says why (``not_found``, ``permission_denied``).

Exit status: 0 when every input was scored, 3 when some failed, 2 when nothing could run (bad
arguments — numbers out of range, ``--out`` and ``--timeline`` not writable or naming one of the
inputs, ``--weights`` missing, all checked before any model loads — or an unloadable artifact or
model), 4 when the records or the ``--timeline`` plot could not be written (a full disk,
/dev/full; the run stops there, and the records already written stay), 141 (128 + SIGPIPE, as a
shell reports a tool a closed pipe stopped) when the reader of stdout went away
(``qclip-score … | head``): the run stops quietly, with no message.

Records never hold a non-finite number (JSON has none): a record that would is written as that
input's ``internal_error`` record instead (the engine reports non-finite model outputs itself,
as ``non_finite_output``, so one reaching the writer is a fault).

Decode limits (``--max-pixels``, ``--max-frames``, ``--max-decode-s``; ``video/limits.py``) bound
what one input may cost: past them its record is ``picture_too_large``, ``too_many_frames`` or
``decode_timeout``.

Encoding: records are UTF-8 text, JSON lines and CSV alike. A file name that is not valid
UTF-8 reaches Python with its bad bytes as lone surrogates (``os.fsdecode``,
"surrogateescape"); every string of a record is written with each such byte as a
``\\xNN`` escape (byte 0xff → ``\\xff``), so the output always decodes as UTF-8 and
valid characters (``é``) stay as they are.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import io
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, NamedTuple, TextIO

from .. import defaults
from ..contract import QUALITY_LEVELS
from ..errors import PermissionDeniedError, QCLIPError, WeightsUnavailableError, error_record
from ..video.container import VIDEO_SUFFIXES
from .arguments import (add_decode_limit_options, cannot_create_in, decode_limits, finite_float, non_negative_float,
                        positive_float, positive_int)

EXIT_OK, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_OUTPUT_FAILED = 0, 2, 3, 4
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE (13): the status a shell shows for a tool a closed pipe stopped
GLOB_CHARS = set("*?[")
SUFFIXES_SEARCHED = " ".join(sorted(VIDEO_SUFFIXES))
# @list files: a line longer than Linux's PATH_MAX (4096 bytes, its NUL included) names no file, and a
# list past 64 MiB (about a million paths) is no list anyone wrote: /dev/zero, a video, a log.
MAX_LIST_BYTES = 64 * 2**20
MAX_LIST_LINE_BYTES = 4096
LIST_READ_BYTES = 2**20  # a list file is read this much at a time


class InputError(NamedTuple):
    """An input that fails before any decoding; ``expand_inputs`` yields it in that input's place."""

    input: str
    error: QCLIPError

    def to_record(self) -> dict:
        # The shape of an error result's record (qclip_engine/engine.py, VideoResult.to_record),
        # so readers of the output need not tell the two apart.
        return {"input": self.input, "error": error_record(self.error), "timing_ms": {}}


class ListFile(NamedTuple):
    """An ``@list`` being expanded: as it was named, which file it is (device, inode: the same under
    any name), and its entries."""

    arg: str
    identity: tuple[int, int]
    entries: list[str]


def expand_inputs(args: Iterable[str]) -> Iterator[str | InputError]:
    """Files, directories (recursive, video suffixes), globs and ``@list`` files → input strings.

    A glob that matches nothing and a list file that cannot be opened are passed through as
    they are, so they come back as ``not_found`` (or ``permission_denied``) records rather than
    vanishing. An empty or blank input, a list file that is no list (module docstring) and a
    directory without videos yield an ``InputError`` (``invalid_input``, ``no_videos``) where their
    paths would have been, an unreadable directory a ``permission_denied`` one: one record per
    input, in order.
    """
    # A stack of (inputs still to expand, the list files they come from), not recursion: the lists
    # being expanded are at hand to catch a cycle, and no depth of lists within lists can exhaust
    # the interpreter's stack.
    pending: list[tuple[Iterator[str], tuple[ListFile, ...]]] = [(iter(args), ())]
    while pending:
        inputs, within = pending[-1]
        arg = next(inputs, None)
        if arg is None:
            pending.pop()
        elif not arg.strip():  # Path("") is "." — it would walk the working directory
            yield InputError(arg, QCLIPError(f"input {arg!r} is empty (or only whitespace)", code="invalid_input"))
        elif arg.startswith("@"):
            if not arg[1:].strip():
                yield InputError(arg, QCLIPError(f"input {arg!r}: the list file name is empty", code="invalid_input"))
                continue
            try:
                listed = _read_list(arg, within)
            except (OSError, ValueError):  # cannot be opened: the decoder's record says why
                yield arg[1:]
            except QCLIPError as exc:
                yield InputError(arg, exc)
            else:
                pending.append((iter(listed.entries), (*within, listed)))
        elif _is_dir(arg):
            yield from _videos_under(arg)
        elif GLOB_CHARS & set(arg) and not _exists(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            yield from (matches or [arg])
        else:
            yield arg


def _read_list(arg: str, within: tuple[ListFile, ...]) -> ListFile:
    """The list file ``arg`` names (``@NAME``), met inside the expansion of the lists ``within``.
    Raises OSError or ValueError when it cannot be opened, an ``invalid_input`` QCLIPError when it
    is one of ``within`` (a cycle) or no list within the bounds."""
    name = arg[1:]
    with open(name, "rb") as f:
        info = os.fstat(f.fileno())
        identity = (info.st_dev, info.st_ino)
        for depth, outer in enumerate(within):
            if outer.identity == identity:  # checked before reading: a cycle costs no read
                chain = " → ".join(listed.arg for listed in within[depth:])
                raise QCLIPError(f"list file {name} is named again inside its own expansion ({chain} → {arg})",
                                 code="invalid_input")
        try:
            entries = _list_entries(f, name)
        except OSError as exc:
            raise QCLIPError(f"list file {name} could not be read: {exc.strerror or exc}",
                             code="invalid_input") from exc
    return ListFile(arg, identity, entries)


def _list_entries(f: BinaryIO, name: str) -> list[str]:
    """A list's entries, one a line (blank lines and ``#`` lines skipped), read in pieces and refused
    past the bounds of the module docstring, so no file named as a list is ever read whole."""
    entries: list[str] = []
    size, open_line = 0, b""  # bytes read; the line still open at the end of them
    while chunk := f.read(LIST_READ_BYTES):
        if (nul := chunk.find(b"\0")) >= 0:
            raise _not_a_list(name, f"byte {size + nul} is a NUL, which no file name holds: a binary file, not a "
                                    "list of inputs")
        size += len(chunk)
        if size > MAX_LIST_BYTES:
            raise _not_a_list(name, f"it holds more than {MAX_LIST_BYTES // 2**20} MiB")
        lines = (open_line + chunk).split(b"\n")
        open_line = lines.pop()
        longest = max(len(open_line), max(map(len, lines), default=0))
        if longest > MAX_LIST_LINE_BYTES + 1:  # + 1: a "\r" before the "\n"
            raise _not_a_list(name, f"a line is longer than {MAX_LIST_LINE_BYTES} bytes")
        entries += _entries(lines)
    return entries + _entries([open_line])


def _entries(lines: list[bytes]) -> list[str]:
    # file names as the OS gives them: bytes that are not UTF-8 kept (os.fsdecode's way)
    texts = (line.decode("utf-8", errors="surrogateescape") for line in lines)
    return [text.strip() for text in texts if text.strip() and not text.startswith("#")]


def _not_a_list(name: str, why: str) -> QCLIPError:
    return QCLIPError(f"list file {name}: {why}", code="invalid_input")


def _videos_under(root: str) -> Iterator[str | InputError]:
    """The video files under directory ``root`` (recursively; symlinked directories are not
    followed), sorted by path, with a ``permission_denied`` InputError in the place of each
    directory that could not be read — os.walk reports those, where Path.rglob skips them in
    silence — or a ``no_videos`` one when there is neither."""
    found: list[tuple[str, str | InputError]] = []

    def unreadable(exc: OSError) -> None:
        where = str(Path(exc.filename)) if exc.filename else root
        found.append((where, InputError(where, _walk_error(where, exc))))

    for directory, _, names in os.walk(root, onerror=unreadable):
        for name in names:
            path = str(Path(directory, name))  # spelled as Path spells it, as rglob did
            if os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES and os.path.isfile(path):
                found.append((path, path))
    if not found:
        message = f"directory {root} holds no video file (searched recursively for {SUFFIXES_SEARCHED})"
        yield InputError(root, QCLIPError(message, code="no_videos"))
    yield from (item for _, item in sorted(found, key=lambda pair: pair[0]))


def _walk_error(directory: str, exc: OSError) -> QCLIPError:
    if isinstance(exc, PermissionError):
        return PermissionDeniedError(f"directory {directory} cannot be read (permission denied): its files were "
                                     "not searched", path=directory)
    return QCLIPError(f"directory {directory} could not be searched: {exc.strerror or exc}", code="invalid_input")


def _is_dir(arg: str) -> bool:
    try:
        return Path(arg).is_dir()
    except (OSError, ValueError):  # a name too long, a NUL byte: not a directory; the decoder says why
        return False


def _exists(arg: str) -> bool:
    try:
        return Path(arg).exists()
    except (OSError, ValueError):
        return False


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


EPILOG = f"""\
directories are searched recursively for files with these suffixes (any case):
  {SUFFIXES_SEARCHED}

every input gives one record, in input order: a score, or an error with its code
(not_found, permission_denied, empty_file, not_a_video, audio_only,
unsupported_codec, truncated, decode_failed, picture_too_large, too_many_frames,
decode_timeout, ...; invalid_input: an empty or blank input, or an @list that is
no list or names itself; no_videos: a directory with no video file in it;
permission_denied also for each directory that cannot be read).

@list files: one input a line (blank lines and #-lines skipped); lists may name
lists. A list is refused (invalid_input) past {MAX_LIST_BYTES // 2**20} MiB, at a line longer than
{MAX_LIST_LINE_BYTES} bytes, at a NUL byte (a binary file) or when it is named again inside its
own expansion. Pipes work: @<(find clips -name '*.mp4').

a file cut short (it ends before the frames or duration its container declares,
or inside a frame) is scored on what is there with a "warnings" entry of code
truncated; --strict makes it the truncated error.

records are UTF-8 text, JSON lines and CSV alike; a byte of a file name that is
not UTF-8 is written as a \\xNN escape (byte 0xff -> \\xff). A record never holds
NaN or Infinity: one that would is that input's internal_error record.

exit status:
  0 every input was scored
  3 some inputs failed (see their error records)
  2 nothing could run (bad arguments, --out or --timeline not writable or
    naming an input, --weights missing, an unloadable artifact or model)
  4 the records or the --timeline plot could not be written (the records
    written until then stay)
  141 stdout was closed by its reader (qclip-score ... | head): stopped quietly
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="qclip-score", description="Score video quality with Q-CLIP.", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="files, directories (searched recursively), globs, @list.txt")
    p.add_argument("--artifact", type=Path, metavar="DIR",
                   help="trained artifact directory (default: none, the zero-shot model of --backbone)")
    p.add_argument("--engine", default="auto", choices=defaults.ENGINES,
                   help="inference backend; auto: on a GPU TensorRT (with a plan) or torch, on the CPU the one "
                        "--precision auto measures fastest (default: %(default)s)")
    p.add_argument("--device", default=defaults.DEVICE, help="auto, cpu, cuda, cuda:N (default: %(default)s)")
    p.add_argument("--decoder", default=defaults.DECODER, choices=defaults.DECODERS,
                   help="host: PyAV on the CPU, frames copied to the backend; device: frames stay on the backend's "
                        "device (NVDEC through DALI on a GPU); auto: device for a CUDA backend when DALI and "
                        "cuda-python import (default: %(default)s)")
    p.add_argument("--torch-mode", default=defaults.TORCH_MODE, choices=defaults.TORCH_MODES,
                   help="how the torch backend runs on a GPU: CUDA graphs per batch size or torch.compile "
                        "(max-autotune), prepared at start-up (default: %(default)s)")
    p.add_argument("--precision", default=defaults.PRECISION, choices=defaults.PRECISIONS,
                   help="auto: FP16 on a GPU; on the CPU the fastest backend and precision measured here among "
                        "those the CPU has and whose score drift the artifact records within limits "
                        "(default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=defaults.BATCH, metavar="N",
                   help="videos per model call (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, metavar="N", help="decode threads (default: min(4, cores))")
    p.add_argument("--sampler", help="frame sampler (default: the artifact's)")
    p.add_argument("--format", default="jsonl", choices=("jsonl", "csv"), help="record format (default: %(default)s)")
    p.add_argument("--strict", action="store_true",
                   help="a file cut short is the truncated error, not a score with a warning (default: off)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write records to FILE (default: stdout)")
    p.add_argument("--backbone", default=defaults.BACKBONE,
                   help="zero-shot model backbone, without --artifact (default: %(default)s)")
    p.add_argument("--weights", metavar="FILE",
                   help="local backbone weights file, for offline use (default: the hub or its cache)")
    p.add_argument("--stream", metavar="SOURCE",
                   help="score sliding windows of a file or URL (rtsp/http/hls) instead of INPUTS (default: off)")
    p.add_argument("--window-s", type=positive_float, default=defaults.WINDOW_S, metavar="S",
                   help="with --stream: window length in seconds (default: %(default)s)")
    p.add_argument("--hop-s", type=positive_float, default=defaults.HOP_S, metavar="S",
                   help="with --stream: seconds between window starts (default: %(default)s)")
    p.add_argument("--threshold", type=finite_float, metavar="SCORE",
                   help="alert on windows scoring below this (default: no alerts)")
    p.add_argument("--timeline", type=Path, metavar="PNG",
                   help="with --stream: plot the per-window scores to PNG (default: no plot)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: a bar on stderr)")
    add_decode_limit_options(p)
    ray = p.add_argument_group("scale-out on Ray (the ray extra; qclip_engine/cluster/batch.py)")
    ray.add_argument("--ray", metavar="ADDRESS",
                     help="score on a Ray cluster: local (a Ray of this process), auto (the cluster `ray start` runs "
                          "here, or RAY_ADDRESS) or a cluster address; the same records, in input order "
                          "(default: no Ray, this process scores)")
    ray.add_argument("--ray-actors", type=positive_int, default=1, metavar="N",
                     help="scoring actors, each with its own model (default: 1)")
    ray.add_argument("--ray-gpus-per-actor", type=non_negative_float, default=0.0, metavar="G",
                     help="GPUs each scoring actor takes (1 on GPU nodes: one actor per GPU; default: 0, CPU actors)")
    ray.add_argument("--ray-decode-cpus", type=positive_float, default=1.0, metavar="C",
                     help="CPUs each decode task takes (default: 1)")
    ray.add_argument("--ray-output", metavar="URI",
                     help="write the records where Ray writes (a directory, s3://…) as sharded files of "
                          "{id, input, record} instead of gathering them here (default: gathered, to --out or stdout)")
    ray.add_argument("--ray-output-format", default="jsonl", choices=("jsonl", "parquet"),
                     help="the files --ray-output writes (default: %(default)s)")
    return p


def _unwritable(path: Path) -> str | None:
    """Why ``path`` cannot be written as an output file, or None. Checked before a model loads,
    so a typo costs no model load and gives one line rather than a traceback."""
    try:
        return _why_unwritable(path)
    except (OSError, ValueError) as exc:  # a directory on the way that cannot be searched, a NUL byte
        return str(getattr(exc, "strerror", None) or exc)


def _why_unwritable(path: Path) -> str | None:
    if path.is_dir():
        return "is a directory"
    parent = path.parent
    if not parent.exists():
        return f"directory {parent} does not exist"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(path if path.exists() else parent, os.W_OK):
        return "permission denied"
    return None if path.exists() else cannot_create_in(parent)


def _same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file: by device and inode when both exist (hard and symbolic
    links, other spellings), else by their resolved paths (one to be created)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        try:
            return os.path.realpath(a) == os.path.realpath(b)
        except (OSError, ValueError):
            return False


def _usage_problem(args, items: list[str | InputError]) -> str | None:
    """The first argument that makes the run impossible (one line for stderr), or None."""
    for option, path in (("--out", args.out), ("--timeline", args.timeline)):
        if path is not None and (why := _unwritable(path)):
            return f"{option} {path}: {why}"
    # Writing opens (and truncates) the output before any input is read: an output that is an
    # input, or a list naming them, would be destroyed unscored.
    inputs = [item for item in items if not isinstance(item, InputError)]
    inputs += [arg[1:] for arg in args.inputs if arg.startswith("@")] + ([args.stream] if args.stream else [])
    for option, path in (("--out", args.out), ("--timeline", args.timeline)):
        if path is not None and (named := next((i for i in inputs if _same_file(i, path)), None)) is not None:
            return f"{option} {path}: is the input {named}, which writing would destroy before it is read"
    if args.weights is not None:
        weights = Path(args.weights).expanduser()  # as qclip_engine/artifact.py reads it
        if not weights.is_file():
            return f"--weights {args.weights}: {'not a file' if weights.exists() else 'no such file'}"
    return None


def _engine(args):
    from ..engine import QualityEngine

    limits = decode_limits(args)
    kwargs = dict(engine=args.engine, device=args.device, batch=args.batch, sampler=args.sampler, workers=args.workers,
                  strict=args.strict, precision=args.precision, decoder=args.decoder, torch_mode=args.torch_mode,
                  limits=limits)
    if args.artifact is not None:
        if args.weights:
            from ..artifact import load_artifact

            return QualityEngine(args.artifact, model=load_artifact(args.artifact, pretrained=args.weights), **kwargs)
        return QualityEngine(args.artifact, **kwargs)
    return QualityEngine(None, backbone=args.backbone, pretrained=args.weights or "meta", **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.inputs and not args.stream:
        parser.error("give INPUTS or --stream SOURCE")
    if args.timeline and not args.stream:
        parser.error("--timeline plots the windows of --stream")
    if args.ray and (args.stream or args.artifact is None or args.weights):
        parser.error("--ray scores files with an --artifact (its actors load it as it says; no --stream, no --weights)")
    items = [] if args.stream else list(expand_inputs(args.inputs))
    if problem := _usage_problem(args, items):
        print(f"qclip-score: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _score_on_ray(args, items) if args.ray else _score_here(args, items)
    except OutputError as exc:
        if exc.closed_pipe:  # no message: the reader that went away wanted no more
            return EXIT_CLOSED_PIPE
        print(f"qclip-score: {exc}", file=sys.stderr)
        return EXIT_OUTPUT_FAILED


def _score_here(args, items: list[str | InputError]) -> int:
    """Score in this process: the stream's windows, or every input's record."""
    try:
        engine = _engine(args)
    except (QCLIPError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"qclip-score: {exc}", file=sys.stderr)
        if isinstance(exc, WeightsUnavailableError) and not args.weights:
            print("qclip-score: on the command line, give that file with --weights FILE", file=sys.stderr)
        return EXIT_USAGE

    warned = 0
    with open_output(args.out) as (out, where):
        if args.stream:
            failed, total = _score_stream(engine, args, out, where)
        else:
            from tqdm import tqdm

            writer = RecordWriter(out, args.format, csv_columns(engine.levels), where)
            # Only real paths go to the engine, whose results come one each in input order
            # (qclip_engine/engine.py, QualityEngine.score); the InputErrors are written in between.
            paths = [item for item in items if not isinstance(item, InputError)]
            with (tqdm(total=len(items), unit="video", disable=args.quiet, file=sys.stderr) as bar,
                  contextlib.closing(engine.score(paths)) as results):
                failed, total, warned = _write_records(items, (r.to_record() for r in results), writer, bar)
    _report(failed, warned, total)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _report(failed: int, warned: int, total: int) -> None:
    if warned:
        print(f"qclip-score: {warned} of {total} input(s) scored with warnings (see their records)", file=sys.stderr)
    if failed:
        print(f"qclip-score: {failed} of {total} input(s) failed (see their error records)", file=sys.stderr)


def _write_records(items: list, records: Iterator[dict], writer: RecordWriter, bar) -> tuple[int, int, int]:
    """Each item's record in input order (the engine's for paths, in order; the InputErrors' own in
    between); (failed, total, warned) of the records written."""
    failed = total = warned = 0
    for item in items:
        record = writer.write(item.to_record() if isinstance(item, InputError) else next(records))
        total += 1
        failed += record.get("error") is not None
        warned += bool(record.get("warnings"))
        bar.update()
        bar.set_postfix(failed=failed, refresh=False)
    return failed, total, warned


def _score_on_ray(args, items: list[str | InputError]) -> int:
    """``--ray``: the same records through the Ray Data pipeline (``cluster/batch.py``)."""
    try:
        from ..cluster.batch import RayOptions, add_records, connect, ordered_records, score_dataset
    except ImportError as exc:
        print(f"qclip-score: --ray needs the ray extra (pip install 'qclip-engine[ray]'): {exc}", file=sys.stderr)
        return EXIT_USAGE
    from tqdm import tqdm

    options = RayOptions(engine=args.engine, device=args.device, precision=args.precision, batch=args.batch,
                         sampler=args.sampler, strict=args.strict, decoder="device" if args.decoder == "device" else "host",
                         actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor, decode_cpus=args.ray_decode_cpus,
                         max_pixels=args.max_pixels, max_frames=args.max_frames, max_decode_s=args.max_decode_s or None)
    try:
        from ..artifact import artifact_spec

        levels = artifact_spec(args.artifact).levels  # the CSV's level columns
        connect(args.ray)
        # ids are positions among all the inputs, so the InputErrors' records take their own places
        rows = [{"id": i, "path": item} for i, item in enumerate(items) if not isinstance(item, InputError)]
        done = score_dataset(rows, args.artifact, options) if rows else None
    except (QCLIPError, ValueError, FileNotFoundError, ConnectionError) as exc:
        print(f"qclip-score: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.ray_output:
        errors = [{"id": i, "input": item.input, "record": json.dumps(item.to_record())}
                  for i, item in enumerate(items) if isinstance(item, InputError)]
        if errors:
            done = add_records(done, errors)
        (done.write_parquet if args.ray_output_format == "parquet" else done.write_json)(args.ray_output)
        records = [json.loads(row["record"]) for row in done.iter_rows()]
        failed, warned = sum("error" in r for r in records), sum(bool(r.get("warnings")) for r in records)
        print(f"qclip-score: {len(records)} records written to {args.ray_output} ({args.ray_output_format}, "
              "one per input, by id)", file=sys.stderr)
    else:
        with open_output(args.out) as (out, where):
            writer = RecordWriter(out, args.format, csv_columns(levels), where)
            with tqdm(total=len(items), unit="video", disable=args.quiet, file=sys.stderr) as bar:
                records = iter(ordered_records(done) if done is not None else [])
                failed, _, warned = _write_records(items, records, writer, bar)
    _report(failed, warned, len(items))
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _score_stream(engine, args, out: TextIO, where: str) -> tuple[int, int]:
    from ..stream import stream_windows
    from .timeline import plot_timeline

    writer = RecordWriter(out, args.format, WINDOW_CSV_COLUMNS, where)
    records, failed = [], 0
    windows = stream_windows(engine, args.stream, window_s=args.window_s, hop_s=args.hop_s, threshold=args.threshold)
    for window in windows:
        record = writer.write(window.to_record())
        records.append(record)
        failed += record.get("error") is not None
        if not args.quiet:
            state = "ERROR" if record.get("error") else ("ALERT" if record.get("alert") else "")
            print(f"window {record.get('index')}: {record.get('start_s', 0):.1f}–{record.get('end_s', 0):.1f} s "
                  f"score {record.get('score')} {state}", file=sys.stderr)
    if args.timeline:
        try:
            plot_timeline(records, args.timeline, threshold=args.threshold, title=str(args.stream))
        except OSError as exc:
            raise OutputError(f"--timeline {args.timeline}", exc) from exc
        print(f"timeline: {args.timeline}", file=sys.stderr)
    return failed, max(len(records), 1)


if __name__ == "__main__":
    sys.exit(main())
