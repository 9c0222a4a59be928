"""Writing into the user cache (``runtime/base.py:cache_root``) when several processes share it.

Three ``qclip-score`` runs started together on an empty cache all want the same exported graph
and the same CPU choice. Two rules keep them from reading each other's half-written files:

* **Whole or absent.** A cache file is written in a directory of the writer's own beside it
  (``.<name>.<pid>.<random>``), under its final name, so files a writer puts beside it (ONNX
  external data, named after the graph) keep the names the file refers to; then each file is
  renamed into place (``os.replace``, atomic within a file system), the entry itself last. A
  reader that finds the entry finds it complete, and its sidecars already there.
* **Built once.** Building an entry holds an exclusive lock (``fcntl.flock``) on
  ``<entry>.lock`` beside it. A second process wanting the same entry waits for the lock, then
  finds the entry built and uses it. The kernel drops the lock when its holder exits, so a
  builder that crashed leaves no stale lock: the next one builds, and first removes the private
  directories of that entry it finds (under the lock, only a dead builder's can be there). Lock
  files stay (removing one would let a third process lock a fresh file while the second still
  holds the old one).

Without ``fcntl`` (Windows) there is no lock: processes that start together each build the
entry under their own names and the renames make one complete copy win — work done twice, never
a partial file read (a sidecar may then come from the other build of the same model). A lock
file that cannot be created (a read-only cache) is the same case.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (module docstring)
    fcntl = None

log = logging.getLogger("qclip_engine.runtime")


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` writes the file (and any sidecar beside it) at ``tmp``, a path of the same
    name in a directory of this process's own; the files then move into ``path``'s directory,
    ``path`` last. Nothing is left behind if ``write`` fails. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    private = path.parent / f"{_private_prefix(path)}{os.getpid()}.{secrets.token_hex(6)}"
    private.mkdir()
    try:
        write(private / path.name)
        if not (private / path.name).is_file():
            raise FileNotFoundError(f"{write!r} wrote no {path.name}")
        for sidecar in sorted(p for p in private.iterdir() if p.is_file() and p.name != path.name):
            os.replace(sidecar, path.parent / sidecar.name)
        os.replace(private / path.name, path)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return path


def _private_prefix(path: Path) -> str:
    return f".{path.name}."


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[bool]:
    """Hold the exclusive lock of the cache entry ``path`` (``<path>.lock``) while the block runs;
    waits for another holder, saying so. Yields whether it holds one: not without ``fcntl`` or a
    writable directory."""
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666) if fcntl is not None else None
    except OSError as exc:
        log.info("cache entry %s is built without a lock (%s)", path, exc)
        fd = None
    if fd is None:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process building %s", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # releases the lock


def build_once(path: Path, build: Callable[[Path], object]) -> Path:
    """``path``, built by ``build(tmp)`` (as :func:`atomic_write` calls it) unless it is there: one
    process builds, the others wait for it and use its file. Returns ``path``."""
    path = Path(path)
    if path.is_file():
        return path
    with entry_lock(path) as locked:
        if not path.is_file():  # not built while this process waited
            if locked:  # what a builder killed mid-write left (a live one would hold the lock)
                for leftover in path.parent.glob(glob.escape(_private_prefix(path)) + "*"):
                    shutil.rmtree(leftover, ignore_errors=True)
            atomic_write(path, build)
    return path
