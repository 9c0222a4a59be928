"""Per-source health signals: frozen and black pictures, motion, brightness, dropped frames.

Pure (numpy and :func:`qclip_engine.video.frame_mse.frame_pair_mse`), fed by the monitor with one
source's frames in decode order on the window timeline (``stream/windowing.py``: ``Windower``'s
``on_frame``): :meth:`HealthTracker.frame` for every decoded frame, :meth:`HealthTracker.pixels`
for the kept ones (uint8 RGB at model size).

Frozen. A run starts at a kept frame (its *reference*) and holds while the kept frames after it
stay within ``freeze_mse`` (pair MSE, as ``pair_mse``) of that reference; it ends at the first
kept frame that does not — whose picture becomes the next reference. Comparing with the run's
first frame, not with the previous one, is ffmpeg freezedetect's rule: slow real motion drifts
away from the reference and ends the run, however little each frame moves. Black frames never
belong to a frozen run (a black screen repeats itself exactly; it is reported as black only).

Black. A kept frame is black when its mean luma (BT.601 ``Y' = 0.299 R + 0.587 G + 0.114 B``,
over 255) is ≤ ``black_luma``; a black run starts at its first black frame and ends at the
first frame that is not black.

Spans. A run is reported once it has lasted ``freeze_s`` / ``black_s`` (from its first frame to
the latest kept frame of the run; a run that ended, to the frame that ended it): a ``start`` span
event then, an ``end`` event when it ends (or at :meth:`HealthTracker.finish`: runs still open
end at the media's end, and one that reaches its minimum there is reported then, start and end).
Shorter runs give no events; they still count in a window's ``frozen_s`` / ``black_s``.

Window summary (:meth:`HealthTracker.window`, a window record's ``health``): ``frozen`` /
``black``: a reported run (one that had lasted its minimum when the window closed) overlaps the
window; ``frozen_s`` / ``black_s``: seconds of the window inside runs of any length (an open run
reaching the latest frame received); ``motion``: the mean pair MSE of the kept pairs whose later
frame lies in the window; ``luma``: the mean luma of its kept frames; ``frames``: the frames
received in it; ``expected_frames``: the part of it the media covers (first frame to one step past
the latest) over the frame step (the median of the latest 32 steps: lost frames and jitter do not
move it); ``dropped_frames``: expected minus received, if positive (lost packets, a stall).

Cost per kept frame: one pair MSE with the previous kept frame (the ``motion`` signal, which is
also the reference distance outside a run), one more with the reference while a frozen run is
open and the picture is not an exact repeat (an exact repeat has MSE 0 with the previous frame,
so its reference distance is the previous frame's), and one mean per colour channel (luma).
Memory: per-frame stats within ``horizon_s`` of the latest frame, two frame references.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..video.frame_mse import frame_pair_mse

_EPS = 1e-9  # seconds: times are pts differences, window bounds k·hop products
_RECENT_STEPS = 32  # the frame step is the median of this many latest steps forward (drop- and jitter-proof)
_LUMA = np.array([0.299, 0.587, 0.114])  # BT.601 luma weights of R, G, B
# What HealthTracker.window() returns: a window record's "health" (monitor/source.py puts it there).
HEALTH_KEYS = ("frozen", "frozen_s", "black", "black_s", "motion", "luma", "frames", "expected_frames",
               "dropped_frames")


@dataclass(frozen=True)
class HealthSettings:
    """What counts as frozen and black. Defaults, and why:

    * ``freeze_mse = 5.0``: a kept frame within MSE 5 of the run's first frame (PSNR ≥ 41 dB at
      model size, an RMS difference of 2.2 levels: the same picture to the eye) repeats it. The
      bound must pass the encoder's re-coding of an unchanged picture: x264 repeats it exactly in
      skipped P-frames but re-quantizes it at every keyframe, and live streams have one every
      1–2 s, so a 2 s freeze holds one or two. Measured on noisy 360p–1080p x264 encodes with 1 s
      GOPs: a freeze stays within MSE 2.8 of its first frame at CRF 23 (model size 224–384), 4.6
      at CRF 30 at 224 but up to 7.8 at 384, 9–21 at CRF 38 — raise the bound for such streams.
      Slow real motion leaves the first frame by more within 2 s: a patch of 0.3 % of the picture
      swinging ±30 levels by MSE ≥ 7 (CRF 23; ≥ 12 at CRF 30), a ¼-pixel-a-frame pan by > 1000. ffmpeg
      freezedetect's default (−60 dB: mean |difference| ≤ 0.1 % of full scale, at source size)
      is broken by those keyframes (−46 to −49 dB on the same 720p encodes).
    * ``black_luma = 0.10``: ffmpeg blackdetect's pixel threshold default; here it bounds the
      frame's mean luma (full-range ``Y'`` from RGB).
    * ``freeze_s = black_s = 2.0``: ffmpeg freezedetect's duration default (blackdetect's is 2 too).
    * ``horizon_s``: per-frame stats kept this far behind the latest frame (the monitor sets
      ``window_s + 2·hop_s``): a window closing at its end still finds its frames.
    """

    freeze_s: float = 2.0
    freeze_mse: float = 5.0
    black_s: float = 2.0
    black_luma: float = 0.10
    horizon_s: float = 4.0

    def __post_init__(self):
        for name in ("freeze_s", "black_s", "horizon_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if not (isinstance(self.freeze_mse, (int, float)) and math.isfinite(self.freeze_mse) and self.freeze_mse >= 0):
            raise ValueError(f"freeze_mse must be a number ≥ 0, got {self.freeze_mse!r}")
        if not (isinstance(self.black_luma, (int, float)) and 0 <= self.black_luma <= 1):
            raise ValueError(f"black_luma must lie in [0, 1], got {self.black_luma!r}")


class _Run:
    """One frozen or black run: ``[start, end)``, ``end`` None while open; ``started`` once reported."""

    __slots__ = ("start", "end", "started")

    def __init__(self, start: float):
        self.start, self.end, self.started = start, None, False


class HealthTracker:
    """The health of one source's frames (one connection: the monitor makes one per connection)."""

    def __init__(self, settings: HealthSettings | None = None):
        self.settings = settings or HealthSettings()
        self.received: deque = deque()  # times of every frame (frame())
        self.kept: deque = deque()  # (t, luma, pair MSE with the previous kept frame or None) of kept frames
        self.runs = {"frozen": deque(), "black": deque()}  # _Run, oldest first; the last may be open
        self.steps: deque = deque(maxlen=_RECENT_STEPS)
        self.first_t: float | None = None
        self.last_t: float | None = None  # the latest frame's time (frame())
        self.kept_t: float | None = None  # the latest kept frame's time (pixels())
        self.prev: np.ndarray | None = None  # the previous kept frame
        self.ref: np.ndarray | None = None  # the frozen reference: the open run's first frame, else prev (None after black)
        self.ref_t: float | None = None
        self.ref_mse = 0.0  # the previous kept frame's MSE with the reference

    # -- input ------------------------------------------------------------------------------------
    def frame(self, t: float) -> None:
        """A decoded frame's time (every frame, kept or not: the count behind ``dropped_frames``)."""
        t = float(t)
        if self.last_t is not None and t < self.last_t - self._late_tolerance():
            self._restart()  # a new timeline (the windower re-bases clock jumps: only a reused tracker)
        if self.last_t is None:
            self.first_t = t
        else:
            if t > self.last_t + _EPS:
                self.steps.append(t - self.last_t)
            self._trim(self.last_t - self.settings.horizon_s)  # behind the frame before: windows it closes keep theirs
        self.received.append(t)
        self.last_t = t if self.last_t is None else max(self.last_t, t)

    def pixels(self, t: float, rgb: np.ndarray) -> list[dict]:
        """A kept frame's uint8 RGB ``[H, W, 3]`` (after ``frame(t)``): the span events it causes.

        The tracker keeps a reference to ``rgb`` (the previous frame, a frozen run's first frame), not
        a copy: the array must not be changed afterwards (the windower's never are)."""
        t = float(t)
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
            raise ValueError(f"expected a uint8 RGB frame [H, W, 3], got {getattr(rgb, 'dtype', type(rgb))} "
                             f"{getattr(rgb, 'shape', '')}")
        luma = _mean_luma(rgb)
        if self.kept_t is not None and t < self.kept_t - _EPS:  # a late frame: brightness only
            self.kept.append((t, luma, None))
            return []
        pair = None
        if self.prev is not None and self.prev.shape == rgb.shape:
            pair = frame_pair_mse(self.prev, rgb)
        self.kept.append((t, luma, pair))
        self.kept_t = t
        events = self._freeze(t, rgb, pair, luma <= self.settings.black_luma + _EPS)
        events += self._black(t, luma <= self.settings.black_luma + _EPS)
        self.prev = rgb
        return events

    def finish(self, end_s: float) -> list[dict]:
        """The end of the media or of the connection at ``end_s`` (one frame past the last): runs still
        open end there; their end events (start and end for one that reaches its minimum only now)."""
        events = []
        for kind in ("frozen", "black"):
            run = self._open(kind)
            if run is not None:
                events += self._close(kind, run, max(float(end_s), run.start))
        self.prev = self.ref = self.ref_t = None
        self.ref_mse = 0.0
        return events

    # -- the window summary ---------------------------------------------------------------------
    def window(self, start_s: float, end_s: float) -> dict:
        """The health of window ``[start_s, end_s)`` (keys: the module's ``HEALTH_KEYS``)."""
        lo, hi = start_s - _EPS, end_s - _EPS
        frames = sum(1 for t in self.received if lo <= t < hi)
        step = float(statistics.median(self.steps)) if self.steps else None
        if step is None or self.first_t is None:
            expected = frames
        else:
            span = min(end_s, self.last_t + step) - max(start_s, self.first_t)
            expected = int(round(max(0.0, span) / step))
        inside = [(luma, pair) for t, luma, pair in self.kept if lo <= t < hi]
        pairs = [pair for _, pair in inside if pair is not None]
        return {
            "frozen": self._flagged("frozen", start_s, end_s),
            "frozen_s": round(self._covered("frozen", start_s, end_s), 6),
            "black": self._flagged("black", start_s, end_s),
            "black_s": round(self._covered("black", start_s, end_s), 6),
            "motion": round(float(np.mean(pairs)), 4) if pairs else 0.0,
            "luma": round(float(np.mean([luma for luma, _ in inside])), 4) if inside else 0.0,
            "frames": frames,
            "expected_frames": expected,
            "dropped_frames": max(0, expected - frames),
        }

    # -- runs -----------------------------------------------------------------------------------
    def _freeze(self, t: float, rgb: np.ndarray, pair: float | None, black: bool) -> list[dict]:
        run = self._open("frozen")
        if black or pair is None:  # a black frame (or a new size) ends a run and cannot start one
            events = self._close("frozen", run, t) if run is not None else []
            self.ref, self.ref_t, self.ref_mse = (None, None, 0.0) if black else (rgb, t, 0.0)
            return events
        if self.ref is None:  # the first non-black frame after black: the next reference
            self.ref, self.ref_t, self.ref_mse = rgb, t, 0.0
            return []
        if self.ref is self.prev:
            distance = pair
        elif pair == 0.0:  # an exact repeat of the previous frame: the same distance to the reference
            distance = self.ref_mse
        else:
            distance = frame_pair_mse(self.ref, rgb)
        if distance <= self.settings.freeze_mse:
            if run is None:
                run = _Run(self.ref_t)
                self.runs["frozen"].append(run)
            self.ref_mse = distance
            return self._check_start("frozen", run, t)
        events = self._close("frozen", run, t) if run is not None else []
        self.ref, self.ref_t, self.ref_mse = rgb, t, 0.0
        return events

    def _black(self, t: float, black: bool) -> list[dict]:
        run = self._open("black")
        if black:
            if run is None:
                run = _Run(t)
                self.runs["black"].append(run)
            return self._check_start("black", run, t)
        return self._close("black", run, t) if run is not None else []

    def _minimum(self, kind: str) -> float:
        return self.settings.freeze_s if kind == "frozen" else self.settings.black_s

    def _check_start(self, kind: str, run: _Run, now: float) -> list[dict]:
        if not run.started and now - run.start >= self._minimum(kind) - _EPS:
            run.started = True
            return [{"kind": kind, "status": "start", "start_s": run.start}]
        return []

    def _close(self, kind: str, run: _Run, end: float) -> list[dict]:
        events = self._check_start(kind, run, end)
        run.end = end
        if run.started:
            events.append({"kind": kind, "status": "end", "start_s": run.start, "end_s": end,
                           "duration_s": round(end - run.start, 6)})
        return events

    def _open(self, kind: str) -> _Run | None:
        runs = self.runs[kind]
        return runs[-1] if runs and runs[-1].end is None else None

    def _flagged(self, kind: str, start_s: float, end_s: float) -> bool:
        """Whether a reported run (one that reached its minimum) overlaps ``[start_s, end_s)``."""
        return any(run.started and run.start < end_s - _EPS and (run.end is None or run.end > start_s + _EPS)
                   for run in self.runs[kind])

    def _covered(self, kind: str, start_s: float, end_s: float) -> float:
        """Seconds of ``[start_s, end_s)`` inside runs of any length; an open one reaches the latest frame
        received (its picture showed at least until then)."""
        latest = max((t for t in (self.last_t, self.kept_t) if t is not None), default=0.0)
        total = 0.0
        for run in self.runs[kind]:
            end = run.end if run.end is not None else max(run.start, latest)
            total += max(0.0, min(end, end_s) - max(run.start, start_s))
        return total

    # -- bookkeeping ----------------------------------------------------------------------------
    def _late_tolerance(self) -> float:
        """How far behind the latest frame a frame may be and still be late, not a new timeline: two
        frame steps, as the windower's ``REORDER_STEPS``."""
        return 2 * float(statistics.median(self.steps)) + _EPS if self.steps else _EPS  # per frame: not numpy's

    def _trim(self, cut: float) -> None:
        while self.received and self.received[0] < cut:
            self.received.popleft()
        while self.kept and self.kept[0][0] < cut:
            self.kept.popleft()
        for runs in self.runs.values():
            while runs and runs[0].end is not None and runs[0].end < cut:
                runs.popleft()

    def _restart(self) -> None:
        """Forget the old timeline (its open runs end unreported: the monitor calls finish() first)."""
        self.__init__(self.settings)


def _mean_luma(rgb: np.ndarray) -> float:
    """Mean BT.601 luma of a uint8 RGB frame, 0..1 (exact channel sums, then the weights)."""
    # Column sums of the rows first (contiguous, uint32: exact below 16 M rows), then per channel.
    sums = rgb.reshape(rgb.shape[0], -1).sum(axis=0, dtype=np.uint32).reshape(-1, 3).sum(axis=0, dtype=np.int64)
    return float(sums @ _LUMA) / (255.0 * (rgb.shape[0] * rgb.shape[1]))
