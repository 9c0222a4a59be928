"""The PyTorch Q-CLIP model (defined once; used by training, export and every backend).

``qclip.py`` is the trainable model, ``folded.py`` its deployable form. Imported on first
use, so that importing a torch-free sibling never loads torch.
"""

from __future__ import annotations

import importlib

from ..contract import QUALITY_LEVELS

_LAZY = {
    "QCLIP": ".qclip",
    "QCLIPConfig": ".qclip",
    "FoldedQCLIP": ".folded",
    "fold": ".folded",
    "reduced_precision": ".folded",
}

__all__ = [*_LAZY, "QUALITY_LEVELS"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
