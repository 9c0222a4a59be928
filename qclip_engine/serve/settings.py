"""``ServeSettings``: what ``qclip-serve`` was started with.

The defaults come from :mod:`qclip_engine.defaults` (stated once there, torch-free, so that
``qclip-serve --help`` shows the same numbers the service uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import defaults
from ..video.limits import DecodeLimits


@dataclass(frozen=True)
class ServeSettings:
    """What ``qclip-serve`` was started with (see ``qclip-serve --help``)."""

    artifact: Path | None
    engine: str = "auto"  # one of defaults.ENGINES
    device: str = defaults.DEVICE
    precision: str = defaults.PRECISION
    torch_mode: str = defaults.TORCH_MODE  # one of defaults.TORCH_MODES (CUDA)
    decoder: str = defaults.DECODER  # one of defaults.DECODERS (qclip_engine/video/frames.py)
    batch: int = defaults.BATCH
    workers: int | None = None  # decode threads; None: the engine's default (defaults.decode_workers)
    allow_dirs: tuple[Path, ...] = ()  # roots for path requests; none: uploads only
    max_upload_bytes: int = int(defaults.MAX_UPLOAD_MB * 2**20)
    queue: int | None = None  # requests in flight before 503; None: QUEUE_PER_BATCH × batch
    timeout_s: float = defaults.REQUEST_TIMEOUT_S
    batch_wait_s: float = defaults.SERVE_BATCH_WAIT_S
    upload_dir: Path | None = None  # None: the system temp directory
    max_uploads: int = defaults.MAX_UPLOADS  # multipart uploads received at once before 503 (JSON requests: none)
    min_upload_bytes_per_s: float = defaults.MIN_UPLOAD_KIBPS * 1024  # 0: no minimum rate
    upload_grace_s: float = defaults.UPLOAD_GRACE_S  # before the minimum rate applies
    strict: bool = False  # a file cut short is 422 truncated, not a score with a warning
    # What one video may cost to decode (qclip_engine/video/limits.py); None: no limit.
    max_pixels: int | None = defaults.MAX_PICTURE_PIXELS
    max_frames: int | None = defaults.MAX_VIDEO_FRAMES
    max_decode_s: float | None = defaults.MAX_DECODE_S
    decode_budget_pixels: int | None = None  # pixels decoded at once; None: SERVE_DECODE_BUDGET_PICTURES × max_pixels
    # Connections and receives per client address (qclip_engine/serve/connections.py, serve/service.py).
    header_timeout_s: float = defaults.HEADER_TIMEOUT_S
    max_connections_per_client: int = defaults.MAX_CONNECTIONS_PER_CLIENT
    max_receives_per_client: int = defaults.MAX_RECEIVES_PER_CLIENT

    @property
    def queue_limit(self) -> int:
        return self.queue if self.queue is not None else defaults.QUEUE_PER_BATCH * self.batch

    @property
    def decode_limits(self) -> DecodeLimits:
        """The engine's decode limits: those above, and the budget of pixels decoded at once."""
        budget = self.decode_budget_pixels
        if budget is None and self.max_pixels is not None:
            budget = defaults.SERVE_DECODE_BUDGET_PICTURES * self.max_pixels
        return DecodeLimits(max_pixels=self.max_pixels, max_frames=self.max_frames, max_seconds=self.max_decode_s,
                            budget_pixels=budget)
