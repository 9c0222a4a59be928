"""``ServeSettings``: what ``qclip-serve`` was started with.

The defaults come from :mod:`qclip_engine.defaults` (stated once there, torch-free, so that
``qclip-serve --help`` shows the same numbers the service uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import defaults


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
    max_uploads: int = defaults.MAX_UPLOADS  # bodies received at once before 503
    min_upload_bytes_per_s: float = defaults.MIN_UPLOAD_KIBPS * 1024  # 0: no minimum rate
    upload_grace_s: float = defaults.UPLOAD_GRACE_S  # before the minimum rate applies
    strict: bool = False  # a file cut short is 422 truncated, not a score with a warning

    @property
    def queue_limit(self) -> int:
        return self.queue if self.queue is not None else defaults.QUEUE_PER_BATCH * self.batch
