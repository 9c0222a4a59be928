"""Where training runs and at which precision."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when there is a GPU, else the CPU; any other name as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


PRECISIONS = ("fp32", "bf16")  # train.precision; fp32 is the official Q-CLIP code's


def check_precision(precision) -> str:
    """``precision`` if it is one of ``PRECISIONS``; :class:`ConfigError` naming the choices otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def autocast(device: torch.device, precision: str):
    """The context training and its evaluation run the model in: ``bf16`` autocasts to bfloat16 on
    ``device`` (CUDA or CPU); ``fp32`` runs in float32 (autocast off)."""
    if check_precision(precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)
