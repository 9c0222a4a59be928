"""qclip-engine: train, export and serve Q-CLIP, a no-reference video quality model.

Names are imported on first use (PEP 562), so ``import qclip_engine`` — and the CLIs'
``--help`` — load neither torch nor open_clip until a model is needed.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

from .contract import QUALITY_LEVELS
from .errors import ArtifactError, BackboneError, QCLIPError, VideoError, WeightsUnavailableError

try:
    __version__ = version("qclip-engine")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

_LAZY = {
    "QCLIP": ".model",
    "QCLIPConfig": ".model",
    "FoldedQCLIP": ".model",
    "fold": ".model",
    "QualityEngine": ".engine",
    "VideoResult": ".engine",
    "save_artifact": ".artifact",
    "load_artifact": ".artifact",
}

__all__ = [
    *_LAZY,
    "QUALITY_LEVELS",
    "QCLIPError",
    "BackboneError",
    "WeightsUnavailableError",
    "ArtifactError",
    "VideoError",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # the next access skips this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
