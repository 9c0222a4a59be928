"""Pure sliding-window bookkeeping: timed frames in, closed windows out (no threads, no decoding).

Window ``k`` covers ``[k·hop_s, k·hop_s + window_s)`` seconds of the window timeline, whose
0 is the first frame. :class:`Windower` holds the frames of the open window (at most
``max_frames``, on a time grid), re-bases the timeline when the clock jumps backwards (more
than ``REORDER_STEPS`` frame steps: a looping or restarted source, noted on the next window as
a ``clock_jump`` warning), skips the empty windows of a forward gap and, at the end of the
media, closes the windows still open. The rules are stated in :mod:`qclip_engine.stream`'s
docstring.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# The stride rule of the motion-analysis candidates thins a window past its memory cap (the
# window then holds ≤ max_frames, which stream/loop.py keeps ≤ max_analysis_frames, and the
# engine's sampler picks among all of them: engine.sample_frames).
from ..video.sampling import candidate_indices

_EPS = 1e-9  # seconds: window bounds are computed, not accumulated, but k·hop is still a float
# A frame more than this many frame steps behind the latest one is a clock jump (the source
# looped or restarted), not a frame or two delivered out of order: the timeline is re-based.
REORDER_STEPS = 2
_RECENT_STEPS = 8  # the frame step is the median of this many latest steps forward (jitter-proof)
CLOCK_JUMP = "clock_jump"  # the warning code on the window after a re-base


@dataclass
class Window:
    """A closed window: its frames (uint8 ``[N, H, W, 3]``), their numbers and times."""

    index: int
    start_s: float
    end_s: float
    frames: np.ndarray
    numbers: np.ndarray  # source frame numbers, from 0
    times: np.ndarray  # seconds on the window timeline
    partial: bool  # the media ended before end_s
    closed_at: float  # perf_counter when the window closed (for the latency timing)
    # {"code", "message"}: clock_jump (re-based before its end; stream/loop.py adds truncated to the last)
    warnings: list[dict] | None = None


class Windower:
    """Holds the frames of the open window; says which windows a new frame closes."""

    def __init__(self, window_s: float, hop_s: float, max_frames: int, *, first_index: int = 0,
                 on_frame: Callable[[float, np.ndarray | None], None] | None = None):
        """``first_index``: the first window's index (its timeline starts at ``first_index · hop_s``: a
        monitored source's next connection goes on where the last one ended); ``on_frame(t, rgb)``: told
        of every frame's timeline time, with its pixels when kept (else None) — the monitor's health."""
        self.window_s, self.hop_s, self.max_frames = window_s, hop_s, max_frames
        self.grid = window_s / max_frames  # keep at most one frame per grid step
        self.k = first_index
        self.on_frame = on_frame
        self.held: deque = deque()  # (number, t, rgb), times ≥ the open window's start
        self.count = 0  # frames seen: the next frame's number
        self.last_slot = None
        self.origin = None  # the first frame's raw time
        self.offset = first_index * hop_s  # the timeline's start, plus what backwards clock jumps added
        self.last_t = None
        self.dt = None  # the last positive frame-to-frame step
        self.steps: deque = deque(maxlen=_RECENT_STEPS)  # the latest positive steps
        self.jumps: list[tuple[float, float, int]] = []  # (timeline t, seconds back, frame number), not yet reported

    def add(self, raw: float | None, convert: Callable[[], np.ndarray]) -> list[Window]:
        """One frame at raw time ``raw`` (None: unknown): the windows it closes.

        ``convert()`` gives its pixels; it is called only for a frame that is kept, so the
        frames the memory cap drops are never converted.
        """
        t = self.time_of(raw)
        self.observe(t)
        closed = self.close_before(t)
        rgb = None
        if self.wants(t):
            rgb = convert()
            self.push(self.count, t, rgb)
        self.count += 1
        if self.on_frame is not None:
            self.on_frame(t, rgb)
        return closed

    def bounds(self, k: int) -> tuple[float, float]:
        return k * self.hop_s, k * self.hop_s + self.window_s

    def time_of(self, raw: float | None) -> float:
        """A frame's raw time → seconds on the window timeline (first frame 0)."""
        if raw is None:  # no timestamp: one frame after the last
            return self.offset if self.last_t is None else self.last_t + (self.dt or 0.0)
        if self.origin is None:
            self.origin = raw
        t = raw - self.origin + self.offset
        if self.last_t is not None and self.last_t - t > self.reorder_tolerance():
            # The clock jumped back (a looping clip, a live source reconnecting, a wrapped pts):
            # the timeline goes on one step after the latest frame, so windows keep closing.
            self.jumps.append((self.last_t + (self.dt or 0.0), self.last_t - t, self.count))
            self.offset += self.last_t + (self.dt or 0.0) - t
            t = self.last_t + (self.dt or 0.0)
        return t

    def reorder_tolerance(self) -> float:
        """How far behind the latest frame a frame may lie and still be a late frame (``wants``
        keeps it or drops it), not a clock jump: ``REORDER_STEPS`` frame steps (the median of the
        latest steps); before any step is known, no distance at all."""
        # statistics.median: numpy's value (the middle step, or the mean of the two middle ones) at a
        # tenth of its cost on a few steps — this runs for every frame of every stream
        return REORDER_STEPS * float(statistics.median(self.steps)) + _EPS if self.steps else _EPS

    def observe(self, t: float) -> None:
        if self.last_t is not None and t > self.last_t + _EPS:
            self.dt = t - self.last_t
            self.steps.append(self.dt)
        self.last_t = t if self.last_t is None else max(self.last_t, t)

    def close_before(self, t: float) -> list[Window]:
        """The windows that a frame at ``t`` closes (it lies at or past their end)."""
        closed = []
        while t >= self.bounds(self.k)[1] - _EPS:
            window = self._take(partial=False)
            if window is not None:
                closed.append(window)
            self._advance(self.k + 1)
            if not self.held:  # skip the empty windows of a gap in one step
                skip_to = math.floor((t - self.window_s) / self.hop_s + _EPS) + 1
                if skip_to > self.k:
                    self._advance(skip_to)
        return closed

    def wants(self, t: float) -> bool:
        """Whether a frame at ``t`` (after ``close_before(t)``) is kept: in the open window, on a new grid step."""
        if t < self.bounds(self.k)[0] - _EPS:
            return False
        slot = math.floor(t / self.grid + 1e-3)
        return self.last_slot is None or slot > self.last_slot

    def push(self, number: int, t: float, rgb: np.ndarray) -> None:
        self.last_slot = math.floor(t / self.grid + 1e-3)
        self.held.append((number, t, rgb))

    def finish(self, nominal_dt: float | None = None) -> list[Window]:
        """End of media: the open windows up to the first that reaches the media's end.

        The media ends one frame after the last frame: one measured step, or ``nominal_dt``
        (the source's nominal frame duration) when no step was seen (a one-frame stream).
        """
        if self.last_t is None:
            return []
        self.dt = self.dt or nominal_dt
        media_end = self.last_t + (self.dt or 0.0)
        tol = 0.25 * (self.dt or 0.0) + 1e-6
        closed = []
        while self.held:
            end = self.bounds(self.k)[1]
            window = self._take(partial=end > media_end + tol)
            if window is not None:
                closed.append(window)
            if end >= media_end - tol:
                break
            self._advance(self.k + 1)
        return closed

    def current(self) -> tuple[int, float, float, int]:
        """The open window: index, start, end and the frames held inside it."""
        start, end = self.bounds(self.k)
        return self.k, start, end, sum(start - _EPS <= t < end - _EPS for _, t, _ in self.held)

    def _take(self, partial: bool) -> Window | None:
        start, end = self.bounds(self.k)
        inside = sorted((item for item in self.held if start - _EPS <= item[1] < end - _EPS), key=lambda x: x[1])
        if not inside:
            return None
        if len(inside) > self.max_frames:  # grid alignment can let one or two extra in
            keep = candidate_indices(len(inside), self.max_frames)
            inside = [inside[i] for i in keep]
        return Window(
            index=self.k,
            start_s=start,
            end_s=end,
            frames=np.stack([rgb for _, _, rgb in inside]),
            numbers=np.array([n for n, _, _ in inside], dtype=np.int64),
            times=np.array([t for _, t, _ in inside], dtype=np.float64),
            partial=partial,
            closed_at=time.perf_counter(),
            warnings=self._jump_warnings(end),
        )

    def _jump_warnings(self, end: float) -> list[dict] | None:
        """The ``clock_jump`` warning of the jumps re-based before ``end`` not yet reported (the
        first window closed after a jump carries it), or None."""
        jumps = [j for j in self.jumps if j[0] < end - _EPS]
        if not jumps:
            return None
        self.jumps = self.jumps[len(jumps):]
        t, back, number = jumps[0]
        if len(jumps) == 1:
            message = f"the source's clock jumped back {back:.3f} s at frame {number} ({t:.3f} s)"
        else:
            message = (f"the source's clock jumped back {len(jumps)} times (first {back:.3f} s at frame {number}, "
                       f"{t:.3f} s): a looping or restarting source")
        return [{"code": CLOCK_JUMP, "message": message + "; the frames after it are timed on from the frame before"}]

    def _advance(self, k: int) -> None:
        self.k = k
        start = self.bounds(k)[0]
        while self.held and self.held[0][1] < start - _EPS:
            self.held.popleft()
        if self.held and any(t < start - _EPS for _, t, _ in self.held):  # out-of-order stragglers
            self.held = deque(item for item in self.held if item[1] >= start - _EPS)
