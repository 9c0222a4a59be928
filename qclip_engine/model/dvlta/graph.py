"""The deployable DVLTA-VQA: what every backend runs and every export writes (the graph contract of
docs/architecture.md with L = 2 levels, the negative and the positive prompt, and a fixed frame
count).

One input, uint8 frames ``[B, F, S, 2S, 3]``: the ventral fragments (left half) and the dorsal crop
(right half) of the same decoded frames, made by ``fragments_and_crop`` (``video/resize.py``);
the graph splits them. Out: ``(level_sims [B, 2], score [B])``. Inside: the cast and ImageNet
normalisation, the branches, the fusion and the prompt score; the text side is constant (the
prompt embeddings are buffers: no text weight is in the graph).

Reduced precision (``dtype`` FP16/BF16): the towers and the branches' new modules in ``dtype``;
their LayerNorms, the input scaling, eq. 6's temporal pool and the head — the text adapter, the
fusion's cosines and weighted sum, the prompt embeddings and the score — in FP32.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..clipvqa.recipe import PIXEL_MEAN, PIXEL_STD
from ..folded import at_precision, without_module
from ..pixels import register_pixel_affine
from .model import DVLTA


class DVLTAGraph(nn.Module):
    fixed_frames = True  # exported with a dynamic batch and F = num_frames

    def __init__(self, model: DVLTA, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.image_size = tuple(model.image_size)
        self.num_frames = model.config.num_frames
        self.levels = model.levels
        self.model = at_precision(without_module(model.eval(), "text"), dtype)
        if dtype != torch.float32:  # the head stays FP32: eq. 10's cosines, the weighted sum, eq. 12–13
            self.model.fusion = copy.deepcopy(model.fusion).float().requires_grad_(False)
            self.model.quality = copy.deepcopy(model.quality).float().requires_grad_(False)
        self.compute_dtype = dtype
        register_pixel_affine(self, PIXEL_MEAN, PIXEL_STD)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = frames.to(torch.float32) * self.pixel_scale + self.pixel_shift
        x = x.movedim(-1, -3).to(self.compute_dtype)  # [B, F, 3, S, 2S]
        sims = self.model.level_sims(x)  # FP32 (level_sims casts the fused feature)
        return sims, self.model.score_from_sims(sims)


def deployable(model: DVLTA, dtype: torch.dtype = torch.float32) -> DVLTAGraph:
    """The graph module of ``model`` at ``dtype`` (see the module docstring)."""
    return DVLTAGraph(model, dtype)
