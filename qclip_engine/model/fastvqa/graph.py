"""The deployable FAST-VQA: what every backend runs and every export writes (the graph contract of
docs/architecture.md with L = 0 levels and a fixed frame count).

uint8 fragment frames ``[B, F, H, W, 3]`` in (F = ``num_frames``: the views are cut from it and
the backbone's windows are sized from it), ``(level_sims [B, 0], score [B])`` out. Inside: the cast
and ImageNet normalisation, the backbone and head of every view, the mean of each quality map
and of the views.

Reduced precision (``dtype`` FP16/BF16): backbone and head in ``dtype``; their LayerNorms, the
input scaling and the means (of each quality map and of the views) in FP32.
"""

from __future__ import annotations


import torch
from torch import nn

from ..clipvqa.recipe import PIXEL_MEAN, PIXEL_STD
from ..folded import at_precision
from ..pixels import register_pixel_affine
from .model import FASTVQA


class FASTVQAGraph(nn.Module):
    fixed_frames = True  # exported with a dynamic batch and F = num_frames

    def __init__(self, model: FASTVQA, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.image_size = tuple(model.image_size)
        self.num_frames = model.config.num_frames
        self.views = model.config.views
        self.levels = model.levels
        self.model = at_precision(model.eval(), dtype)
        self.compute_dtype = dtype
        register_pixel_affine(self, PIXEL_MEAN, PIXEL_STD)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = frames.to(torch.float32) * self.pixel_scale + self.pixel_shift
        x = x.movedim(-1, -3).to(self.compute_dtype)  # [B, F, 3, H, W]
        score = self.model.view_scores(x, self.views).float().mean(dim=1)
        return score.new_zeros((score.shape[0], 0)), score


def deployable(model: FASTVQA, dtype: torch.dtype = torch.float32) -> FASTVQAGraph:
    """The graph module of ``model`` at ``dtype`` (see the module docstring)."""
    return FASTVQAGraph(model, dtype)
