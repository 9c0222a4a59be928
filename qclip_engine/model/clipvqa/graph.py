"""The deployable CLIPVQA: what every backend runs and every export writes (the graph contract of
docs/architecture.md with L = 6 levels and a fixed frame count).

uint8 frames ``[B, F, H, W, 3]`` in (F = ``num_frames``: SAT's position embedding and the
temporal conv's kernel have that length), ``(level_sims [B, L], score [B])`` out. Inside: the
cast and ImageNet normalisation, the CLIP tower with its frame messages, SAT, the frozen temporal
conv and VAT (it depends on the video, so it stays in the graph); the text side is the constant
``text_features [L, D]`` (the frozen text tower run once: no text weight is in the graph) and
``e^{logit_scale}`` a constant. The score is the expectation ``Σ_k k · softmax(e^{s} · sims)_k``.

Reduced precision (``dtype`` FP16/BF16): the tower and the new modules in ``dtype``, their
LayerNorms, the input scaling and the head (cosines, softmax, score) in FP32.
"""

from __future__ import annotations

import torch
from torch import nn

from ..folded import at_precision, without_module
from ..pixels import register_pixel_affine
from .model import CLIPVQA, cosine_sims
from .recipe import PIXEL_MEAN, PIXEL_STD


class CLIPVQAGraph(nn.Module):
    fixed_frames = True  # exported with a dynamic batch and F = num_frames

    def __init__(self, model: CLIPVQA, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.image_size = tuple(model.image_size)
        self.num_frames = model.config.num_frames
        self.levels = model.levels
        scale = model.text.logit_scale.detach().float().exp().clone()
        self.model = at_precision(without_module(model.eval(), "text"), dtype)
        self.compute_dtype = dtype
        register_pixel_affine(self, PIXEL_MEAN, PIXEL_STD)
        self.register_buffer("logit_scale", scale)
        self.register_buffer("level_values", torch.arange(len(self.levels), dtype=torch.float32))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = frames.to(torch.float32) * self.pixel_scale + self.pixel_shift
        x = x.movedim(-1, -3).to(self.compute_dtype)  # [B, F, 3, H, W]
        sims = cosine_sims(*self.model.video_and_texts(x))  # the text constants: model.text_features
        score = (self.logit_scale * sims).softmax(dim=-1) @ self.level_values
        return sims, score


def deployable(model: CLIPVQA, dtype: torch.dtype = torch.float32) -> CLIPVQAGraph:
    """The graph module of ``model`` at ``dtype`` (see the module docstring)."""
    return CLIPVQAGraph(model, dtype)
