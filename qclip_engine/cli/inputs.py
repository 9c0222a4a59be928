"""``qclip-score``'s inputs: files, directories, globs and ``@list`` files → one input string (or one
``InputError``) each, in order.

A directory is walked with ``os.walk(onerror=...)``, so a directory that cannot be read is its own
``permission_denied`` record rather than a silent skip; ``@list`` files are read in
``LIST_READ_BYTES`` pieces within ``MAX_LIST_BYTES`` and ``MAX_LIST_LINE_BYTES`` (a NUL byte: not a
list), expanded with a stack (no recursion limit), and a list named again inside its own expansion
is one ``invalid_input`` record. Every refusal is an ``InputError`` in that input's place: one
record per input, the others go on.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, NamedTuple

from ..errors import PermissionDeniedError, QCLIPError, error_record
from ..video.container import VIDEO_SUFFIXES

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
