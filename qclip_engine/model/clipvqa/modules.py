"""CLIPVQA's building blocks beyond the CLIP tower: the per-block frame messages, SAT (the video
feature from the summary tokens) and VAT (the video-adapted level texts). What each computes, and
where the released code does something unusual, is in this package's ``__init__.py``."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import nn

from .config import SAT_ATTENTIONS


def _heads(dim: int) -> int:
    """Heads of the new modules' attention: one per 64 channels, as released (at least one)."""
    return max(1, dim // 64)


def _quick_mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("fc", nn.Linear(dim, 4 * dim)),
        ("act", QuickGELU()),
        ("proj", nn.Linear(4 * dim, dim)),
    ]))


def _small_normal_init(module: nn.Module) -> None:
    """Linear weights ~ truncated N(0, 0.02²), zero biases (what the released SAT/VAT init does;
    LayerNorms keep torch's ones/zeros and attention in-projections torch's Xavier init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class FrameMessages(nn.Module):
    """One block's cross-frame message: the class tokens ``[N·F, W]`` of F frames per video become
    one message token per frame, ``m = fc(cls)``, ``m ← m + MHA(LN(m))`` across the F frames."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, cls: torch.Tensor, frames: int) -> torch.Tensor:
        width = cls.shape[-1]
        m = self.fc(cls).reshape(-1, frames, width)
        h = self.norm(m)
        m = m + self.attn(h, h, h, need_weights=False)[0]
        return m.reshape(-1, width)


def _value_path(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """``attn(x, x, x)`` when each query's only key is itself: softmax over one score is 1, so the
    result is the out-projection of the value projection."""
    d = attn.embed_dim
    v = F.linear(x, attn.in_proj_weight[2 * d:], None if attn.in_proj_bias is None else attn.in_proj_bias[2 * d:])
    return attn.out_proj(v)


class SATBlock(nn.Module):
    """Pre-LN transformer block of SAT. ``across="batch"``: attention over dim 0 of ``[B, S, D]``
    (the videos) at each position, as the released code's sequence-first attention does;
    ``"alone"``: each video as the only one of its batch."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _quick_mlp(dim)

    def forward(self, x: torch.Tensor, across: str = "alone") -> torch.Tensor:
        h = self.norm1(x)
        if across == "batch":
            h = h.transpose(0, 1)
            a = self.attn(h, h, h, need_weights=False)[0].transpose(0, 1)
        else:
            a = _value_path(self.attn, h)
        x = x + a
        return x + self.mlp(self.norm2(x))


class SpatioTemporalAggregation(nn.Module):
    """SAT: summary tokens ``[B, S, D]`` (frame after frame) → video feature ``[B, D]``.

    The first ``frames`` tokens of the list get ``frame_pos`` and the blocks; the other
    ``S − frames`` are multiplied by ``alpha``; the result is the mean over all S tokens.
    ``across`` (one of :data:`SAT_ATTENTIONS`): ``"alone"`` makes a video's feature independent
    of the rest of its batch; ``"batch"`` is the released attention across the batch.
    """

    def __init__(self, dim: int, frames: int, layers: int, heads: int | None = None, across: str = "alone"):
        super().__init__()
        if across not in SAT_ATTENTIONS:
            raise ValueError(f"across must be one of {SAT_ATTENTIONS}, got {across!r}")
        self.frames = frames
        self.across = across
        self.frame_pos = nn.Parameter(torch.empty(1, frames, dim))
        self.blocks = nn.ModuleList(SATBlock(dim, heads or _heads(dim)) for _ in range(layers))
        self.alpha = nn.Parameter(torch.ones(dim))
        nn.init.trunc_normal_(self.frame_pos, std=0.02)
        _small_normal_init(self.blocks)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] < self.frames:
            raise ValueError(f"SAT needs at least {self.frames} tokens, got {tokens.shape[1]}")
        head = tokens[:, : self.frames] + self.frame_pos
        for block in self.blocks:
            head = block(head, self.across)
        rest = tokens[:, self.frames:] * self.alpha
        return torch.cat([rest, head], dim=1).mean(dim=1)


class PatchCrossAttention(nn.Module):
    """Multi-head attention of queries ``[B, K, D]`` over keys/values ``[B, M, D]``; q/k/v
    projections without bias, output projection with bias."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, k, d = query.shape
        hd = d // self.heads

        def split(x):
            return x.reshape(b, -1, self.heads, hd).transpose(1, 2)

        q, key, v = split(self.q(query)), split(self.k(memory)), split(self.v(memory))
        weights = (q @ key.transpose(-2, -1) * hd**-0.5).softmax(dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(b, k, d))


class VATLayer(nn.Module):
    """``t ← t + CrossAttn(LN(t), patches)``, then ``t ← t + MLP(LN(t))``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_query = nn.LayerNorm(dim)
        self.cross = PatchCrossAttention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = _quick_mlp(dim)

    def forward(self, text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        text = text + self.cross(self.norm_query(text), patches)
        return text + self.mlp(self.norm_mlp(text))


class VideoAwareText(nn.Module):
    """VAT: text ``[B, K, D]`` and patch tokens ``[B, M, D]`` → the text update ``α · t_L``, where
    ``t_0 = text`` and each layer cross-attends to ``LN(patches)``. The caller adds it to the text."""

    def __init__(self, dim: int, layers: int, alpha: float, heads: int | None = None):
        super().__init__()
        self.norm_patches = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(VATLayer(dim, heads or _heads(dim)) for _ in range(layers))
        self.alpha = nn.Parameter(torch.full((dim,), float(alpha)))
        _small_normal_init(self.layers)

    def forward(self, text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        patches = self.norm_patches(patches)
        for layer in self.layers:
            text = layer(text, patches)
        return self.alpha * text

