"""uint8 RGB frames → the model's normalised input: the checks every family makes, and the
normalisation on the 0–255 scale that CLIPVQA, FAST-VQA and DVLTA share (ImageNet's mean/std), both as
a function (the models) and as graph buffers (their deployable modules)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def check_frames(frames: torch.Tensor, image_size: Sequence[int]) -> None:
    """ValueError unless ``frames`` are uint8 RGB ``[..., H, W, 3]`` at ``image_size``."""
    if frames.dtype != torch.uint8 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB frames [..., H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    if tuple(frames.shape[-3:-1]) != tuple(image_size):
        raise ValueError(f"frames are {tuple(frames.shape[-3:-1])}, the model takes {tuple(image_size)}")


def normalize_0_255(frames: torch.Tensor, image_size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                    dtype: torch.dtype) -> torch.Tensor:
    """uint8 RGB ``[..., H, W, 3]`` → float ``[..., 3, H, W]``: ``(x − mean) / std`` on the 0–255 scale."""
    check_frames(frames, image_size)
    m = torch.tensor(mean, dtype=dtype, device=frames.device)
    s = torch.tensor(std, dtype=dtype, device=frames.device)
    return ((frames.to(dtype) - m) / s).movedim(-1, -3)


def register_pixel_affine(module: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """``pixel_scale`` and ``pixel_shift`` FP32 buffers on ``module``: ``(x − mean)/std = x · scale + shift``,
    the graph's first step on the 0–255 scale."""
    m = torch.tensor(mean, dtype=torch.float32)
    s = torch.tensor(std, dtype=torch.float32)
    module.register_buffer("pixel_scale", 1.0 / s)
    module.register_buffer("pixel_shift", -m / s)
