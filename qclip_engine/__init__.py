"""qclip-engine: train, export and serve Q-CLIP, a no-reference video quality model."""

from importlib.metadata import PackageNotFoundError, version

from .artifact import load_artifact, save_artifact
from .engine import QualityEngine, VideoResult
from .errors import ArtifactError, BackboneError, QCLIPError, WeightsUnavailableError
from .model import QCLIP, QUALITY_LEVELS, QCLIPConfig

try:
    __version__ = version("qclip-engine")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "QCLIP",
    "QCLIPConfig",
    "QUALITY_LEVELS",
    "QualityEngine",
    "VideoResult",
    "save_artifact",
    "load_artifact",
    "QCLIPError",
    "BackboneError",
    "WeightsUnavailableError",
    "ArtifactError",
    "__version__",
]
