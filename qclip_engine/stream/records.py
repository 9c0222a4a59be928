"""What a stream yields: one ``WindowResult`` per window, a score or an error record."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import error_record


@dataclass
class WindowResult:
    """One window's outcome: a score, or an error record (never both)."""

    index: int
    start_s: float
    end_s: float
    score: float | None = None
    mos: float | None = None
    levels: dict[str, float] | None = None
    frames_in_window: int = 0  # frames the sampler chose from (after the memory cap)
    partial: bool = False  # the media ended before end_s
    alert: bool = False  # score < threshold (only when a threshold is given)
    error: dict | None = None  # {"code", "message"}
    frames: list[int] | None = None  # source frame numbers (from 0) the model saw
    frame_times: list[float] | None = None  # their times, seconds from the first frame
    backend: str | None = None  # what scored it (engine-precision, as in VideoResult)
    # {"code", "message"}: clock_jump (the source's clock jumped back inside it), truncated (the last
    # window of a source cut short); kept on an error record too
    warnings: list[dict] | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_record(self) -> dict:
        record = {
            "index": self.index,
            "start_s": round(self.start_s, 6),
            "end_s": round(self.end_s, 6),
            "frames_in_window": self.frames_in_window,
            "partial": self.partial,
            "alert": self.alert,
        }
        if not self.ok:
            warned = {"warnings": self.warnings} if self.warnings else {}
            return record | warned | {"error": self.error, "timing_ms": self.timing_ms}
        for key in ("score", "mos", "levels", "frames", "frame_times", "backend", "warnings"):
            value = getattr(self, key)
            if value is not None:
                record[key] = value
        record["timing_ms"] = self.timing_ms
        return record


def error_window(index: int, start_s: float, end_s: float, frames_in_window: int, exc: BaseException) -> WindowResult:
    """The record of a window that failed: a ``QCLIPError`` keeps its code, anything else is
    ``internal_error`` (the shared rule of :func:`qclip_engine.errors.error_record`)."""
    return WindowResult(index=index, start_s=start_s, end_s=end_s, frames_in_window=frames_in_window,
                        error=error_record(exc))
