"""The PyTorch Q-CLIP model (defined once; used by train/, export/ and the torch backend)."""

from .prompts import QUALITY_LEVELS
from .qclip import QCLIP, SAMPLERS, QCLIPConfig

__all__ = ["QCLIP", "QCLIPConfig", "QUALITY_LEVELS", "SAMPLERS"]
