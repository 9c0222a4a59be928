"""What one input may cost to decode, and the stop of a decode no one waits for any more.

:class:`DecodeLimits` is configured once (``QualityEngine(limits=...)``, ``qclip-score`` and
``qclip-serve`` options; the defaults are ``defaults.MAX_*``):

* ``max_pixels``: a picture's coded width × height. Checked when a file is opened, before any
  frame is decoded (``picture_too_large``); FFmpeg's own ``max_pixels`` decoder option refuses
  a larger picture that appears later (a size change mid-stream), and the probe's decodes too.
* ``max_frames``: the video frames a file may declare or a pass over it may read
  (``too_many_frames``): an MP4 can declare millions of samples in a few bytes, and FFmpeg would
  build an index of them all before the first read (``video/iso_bmff.py`` reads the count first).
* ``max_seconds``: wall-clock seconds for one input (``decode_timeout``); None: no limit.
* ``budget_pixels``: pixels being decoded at once by one engine's decoders (None: no bound). A
  decode waits for its picture's share before it decodes its first frame, so several large
  pictures cannot add their decoder memory up.

:class:`Work` is one input's meter, made by the frame source for each decode: the readers call
:meth:`Work.packet` for every packet they read and :meth:`Work.picture` once the picture size is
known. Besides the limits it checks a ``cancel`` event (the service sets it when a request timed
out or its client went away: ``cancelled``), between packets, so a stopped request frees its
decode thread within a packet's decode.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..defaults import MAX_DECODE_S, MAX_PICTURE_PIXELS, MAX_VIDEO_FRAMES
from ..errors import DecodeCancelledError, DecodeTimeoutError, PictureTooLargeError, TooManyFramesError

_CHECK_EVERY = 32  # packets between two looks at the clock and the cancel event


@dataclass(frozen=True)
class DecodeLimits:
    """What one input may cost (module docstring); ``None`` turns a bound off."""

    max_pixels: int | None = MAX_PICTURE_PIXELS
    max_frames: int | None = MAX_VIDEO_FRAMES
    max_seconds: float | None = MAX_DECODE_S
    budget_pixels: int | None = None

    def __post_init__(self):
        for name in ("max_pixels", "max_frames", "budget_pixels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a whole number ≥ 1 (or None: no limit), got {value!r}")
        if self.max_seconds is not None and not (isinstance(self.max_seconds, (int, float))
                                                 and 0 < self.max_seconds < float("inf")):
            raise ValueError(f"max_seconds must be > 0 and finite (or None: no limit), got {self.max_seconds!r}")
        if self.budget_pixels is not None and self.max_pixels is not None and self.budget_pixels < self.max_pixels:
            raise ValueError(f"budget_pixels ({self.budget_pixels}) must be ≥ max_pixels ({self.max_pixels}): "
                             "a picture of the largest admitted size could never be decoded")


class PixelBudget:
    """At most ``total`` pixels being decoded at once; a waiting decode gives up when its work stops."""

    def __init__(self, total: int):
        self.total = total
        self.in_use = 0
        self._free = threading.Condition()

    def acquire(self, pixels: int, work: Work) -> None:
        pixels = min(pixels, self.total)
        with self._free:
            while self.in_use and self.in_use + pixels > self.total:
                self._free.wait(0.05)
                work.check()  # cancelled or out of time while waiting: raises
            self.in_use += pixels

    def release(self, pixels: int) -> None:
        with self._free:
            self.in_use -= min(pixels, self.total)
            self._free.notify_all()


class Work:
    """One input's decode: packets read, time spent, the pixels it holds of the budget.

    A context manager: leaving it gives back its share of the budget. ``where`` names the input in
    messages (the caller's name for it).
    """

    def __init__(self, limits: DecodeLimits | None = None, *, cancel: threading.Event | None = None,
                 budget: PixelBudget | None = None, where: str = ""):
        self.limits = limits or DecodeLimits()
        self.cancel = cancel
        self.budget = budget
        self.where = where
        self.started = time.monotonic()
        self.packets = 0  # packets read in the current pass (scan or decode)
        self._held = 0  # pixels of the budget held

    def __enter__(self) -> Work:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self._held and self.budget is not None:
            self.budget.release(self._held)
        self._held = 0

    @property
    def name(self) -> str:
        """The input as messages name it: a file by its name (the service rewrites that to the
        client's), a URL whole."""
        return self.where if "://" in self.where else Path(self.where).name

    def new_pass(self) -> None:
        """A new pass over the file (the scan, then the decode): its packets are counted anew."""
        self.packets = 0
        self.check()

    def check(self) -> None:
        """Raise if the work was cancelled or has run out of time."""
        if self.cancel is not None and self.cancel.is_set():
            raise DecodeCancelledError(f"{self.name}: decoding stopped (no one waits for the result any more)",
                                       path=self.where or None)
        limit = self.limits.max_seconds
        if limit is not None and time.monotonic() - self.started > limit:
            raise DecodeTimeoutError(f"{self.name}: decoding took longer than the limit of {limit:g} s",
                                     path=self.where or None)

    def packet(self) -> None:
        """One more packet of the video stream read."""
        self.packets += 1
        limit = self.limits.max_frames
        if limit is not None and self.packets > limit:
            raise TooManyFramesError(f"{self.name}: more than {limit} frames (the limit of frames per video)",
                                     path=self.where or None)
        if self.packets % _CHECK_EVERY == 0:
            self.check()

    def declared_frames(self, count: int | None, how: str = "declares") -> None:
        """Refuse a file that declares more frames than the limit, before reading them."""
        limit = self.limits.max_frames
        if count and limit is not None and count > limit:
            raise TooManyFramesError(f"{self.name}: the file {how} {count} frames, more than the limit of {limit} "
                                     "frames per video", path=self.where or None)

    def picture(self, width: int, height: int) -> None:
        """The picture size is known: refuse it past ``max_pixels``; else take its budget share
        (once per input; waits while larger decodes run)."""
        pixels = max(0, int(width)) * max(0, int(height))
        limit = self.limits.max_pixels
        if limit is not None and pixels > limit:
            raise PictureTooLargeError(
                f"{self.name}: a {width}×{height} picture ({pixels} pixels) is larger than the limit of {limit} pixels",
                path=self.where or None)
        if self.budget is not None and not self._held and pixels:
            self.budget.acquire(pixels, self)
            self._held = min(pixels, self.budget.total)
