"""What an MP4/MOV (ISO base media file) says about itself, read from its box headers without FFmpeg.

Two questions FFmpeg cannot answer cheaply:

* :func:`declared_video_samples` — how many samples its video tracks declare, in the sample
  tables (``stsz``/``stz2`` counts and ``stts`` runs) and in the fragments' ``trun`` boxes.
  FFmpeg indexes every declared sample when it opens the file (about 36 bytes each), and one
  ``stts`` run of 12 bytes may declare billions, so the engine reads the count first and refuses
  a file past its frame limit before FFmpeg opens it (``video/limits.py``).
* :func:`iso_bmff_cut` — whether the last top-level box runs past the end of the file (a
  fragmented MP4 cut inside a fragment's header otherwise reads as complete: ``video/scan.py``).

Boxes are walked by their headers (seeks, no payload read but the few fields needed), so a large
``mdat`` or sample table costs nothing to pass over.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

ISO_BMFF_BOX = b"ftyp"  # the first box's type: bytes 4..8 of an MP4/MOV
_STTS_CHUNK_ENTRIES = 65536  # stts entries read at once (8 bytes each)


def is_iso_bmff(head: bytes) -> bool:
    """Whether a file starting with ``head`` is ISO BMFF (an ``ftyp`` box first)."""
    return head[4:8] == ISO_BMFF_BOX


def _boxes(f: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """``(type, payload start, payload end)`` of the boxes between ``start`` and ``end``; stops at
    the first header that does not fit (a cut or malformed file: FFmpeg judges those)."""
    offset = start
    while offset + 8 <= end:
        f.seek(offset)
        header = f.read(16)
        if len(header) < 8:
            return
        size, kind = struct.unpack(">I4s", header[:8])
        payload = offset + 8
        if size == 1:  # a 64-bit size follows the type
            if len(header) < 16:
                return
            size = struct.unpack(">Q", header[8:16])[0]
            payload = offset + 16
        elif size == 0:  # the box runs to the end of its parent
            size = end - offset
        if size < payload - offset or offset + size > end:
            return
        yield kind, payload, offset + size
        offset += size


def _fields(f: BinaryIO, start: int, end: int, fmt: str) -> tuple | None:
    n = struct.calcsize(fmt)
    if end - start < n:
        return None
    f.seek(start)
    return struct.unpack(fmt, f.read(n))


def _stts_total(f: BinaryIO, start: int, end: int) -> int:
    """The samples an ``stts`` box's runs add up to (entries past the box's end are not counted)."""
    head = _fields(f, start, end, ">II")
    if head is None:
        return 0
    entries = min(head[1], (end - start - 8) // 8)
    total, done = 0, 0
    f.seek(start + 8)
    while done < entries:
        n = min(entries - done, _STTS_CHUNK_ENTRIES)
        data = f.read(8 * n)
        total += sum(struct.unpack(f">{2 * n}I", data)[0::2])
        done += n
    return total


def _track(f: BinaryIO, start: int, end: int) -> tuple[int | None, bool, int]:
    """``(track id, is video, declared samples)`` of a ``trak`` box."""
    track_id, video, samples = None, False, 0
    for kind, s, e in _boxes(f, start, end):
        if kind == b"tkhd":
            version = _fields(f, s, e, ">B")
            fields = _fields(f, s, e, ">I16xI" if version and version[0] == 1 else ">I8xI")
            track_id = fields[1] if fields else None
        elif kind == b"mdia":
            for kind2, s2, e2 in _boxes(f, s, e):
                if kind2 == b"hdlr":
                    handler = _fields(f, s2, e2, ">8x4s")
                    video = bool(handler) and handler[0] == b"vide"
                elif kind2 == b"minf":
                    for kind3, s3, e3 in _boxes(f, s2, e2):
                        if kind3 == b"stbl":
                            samples = _sample_table(f, s3, e3)
    return track_id, video, samples


def _sample_table(f: BinaryIO, start: int, end: int) -> int:
    """The largest sample count an ``stbl`` declares: its sizes' count or its time runs' total."""
    counts = [0]
    for kind, s, e in _boxes(f, start, end):
        if kind == b"stsz":
            fields = _fields(f, s, e, ">4xII")
            counts.append(fields[1] if fields else 0)
        elif kind == b"stz2":
            fields = _fields(f, s, e, ">4x4xI")
            counts.append(fields[0] if fields else 0)
        elif kind == b"stts":
            counts.append(_stts_total(f, s, e))
    return max(counts)


def _fragment_samples(f: BinaryIO, start: int, end: int, totals: dict[int | None, int]) -> None:
    """Add a ``moof`` box's ``trun`` sample counts to ``totals`` by track id."""
    for kind, s, e in _boxes(f, start, end):
        if kind != b"traf":
            continue
        track_id = None
        for kind2, s2, e2 in _boxes(f, s, e):
            if kind2 == b"tfhd":
                fields = _fields(f, s2, e2, ">4xI")
                track_id = fields[0] if fields else None
            elif kind2 == b"trun":
                fields = _fields(f, s2, e2, ">4xI")
                totals[track_id] = totals.get(track_id, 0) + (fields[0] if fields else 0)


def declared_video_samples(path: str | Path) -> int:
    """The most samples any video track of an ISO BMFF file declares (sample table plus
    fragments); 0 when it declares none or is not ISO BMFF."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        if not is_iso_bmff(f.read(8)):
            return 0
        tracks: dict[int | None, int] = {}
        video: set[int | None] = set()
        fragments: dict[int | None, int] = {}
        for kind, s, e in _boxes(f, 0, size):
            if kind == b"moov":
                for kind2, s2, e2 in _boxes(f, s, e):
                    if kind2 == b"trak":
                        track_id, is_video, samples = _track(f, s2, e2)
                        if is_video:
                            video.add(track_id)
                            tracks[track_id] = samples
            elif kind == b"moof":
                _fragment_samples(f, s, e, fragments)
    return max((tracks.get(t, 0) + fragments.get(t, 0) for t in video), default=0)


def iso_bmff_cut(path: str | Path) -> str | None:
    """Whether an MP4/MOV's last top-level box runs past the end of the file (a fragmented MP4 cut
    inside a fragment's header reads as complete otherwise): how, or None."""
    path = Path(path)
    size = path.stat().st_size
    offset = 0
    with path.open("rb") as f:
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            box_size, box_type = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if box_size == 1 and len(header) == 16:  # a 64-bit size follows the type
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:  # the box runs to the end of the file
                return None
            if box_size < 8:
                return None  # not a box structure we can follow: no claim either way
            if offset + box_size > size:
                return f"its last box ({box_type!r}) runs {offset + box_size - size} bytes past the end of the file"
            offset += box_size
    if 0 < size - offset < 8:  # cut inside the next box's 8-byte header
        return f"it ends {size - offset} bytes into a box header"
    return None
