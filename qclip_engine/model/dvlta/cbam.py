"""CBAM ("CBAM: Convolutional Block Attention Module", Woo et al., ECCV 2018) on clip features
``[B, C, T, H, W]``: the last step of DVLTA-VQA's Temporal Context Module (its eq. 7,
``F_tcm = F_agg · M_channel(F_agg) · M_spatial(F_agg)``).

``M_channel = σ(MLP(AvgPool(F)) + MLP(MaxPool(F)))`` with one MLP ``C → C/r → C`` (ReLU between) shared
by both pooled vectors; ``M_spatial = σ(conv_k×k([mean over C; max over C]))``.

Choices the DVLTA paper leaves open:

* **Channel pooling.** Paper says: CBAM on "key spatiotemporal regions", nothing about how a 2-D
  module meets a clip. We chose: average and max over T, H and W — one weight per channel per clip.
  Why: F_agg is a clip feature (time already mixed by the 3-D CNN, TAdaConv's routing and the temporal
  pooling of eq. 6), and a channel's importance is a property of the clip.
* **Spatial attention.** Paper says: nothing of its kernel or of time. We chose: Woo et al.'s 2-D
  conv (weight ``[1, 2, k, k]``, default 7 × 7) applied to every frame's ``[mean; max]`` map, giving
  ``[B, 1, T, H, W]`` (run as a Conv3d of kernel ``(1, k, k)``). Why: it is the module the paper
  cites, with its parameters and receptive field; time is mixed before it; a 2-D CBAM weight loads
  unchanged.
* **Order.** Paper says (eq. 7): both maps written as functions of F_agg. We chose: Woo et al.'s
  sequential order, ``F' = F · M_c(F)``, ``F'' = F' · M_s(F')`` — the spatial map is computed on the
  channel-refined feature. Why: the paper names and cites CBAM, whose definition and every release
  are sequential; eq. 7 reads as shorthand.
* **Biases.** Woo et al.'s formulas have none; their released code has biased Linear layers in the MLP
  and a bias-free conv + BatchNorm in the spatial branch. We chose biases in both: the MLP's as
  released, the spatial conv's standing for that BatchNorm at evaluation (its scale folds into the
  weight, its shift is the bias). Zero biases give the paper's formulas.
* **Pooled-map order.** ``[mean; max]`` as the CBAM paper writes it; the released CBAM code
  concatenates ``[max; mean]`` — swap the conv weight's two input channels to load such a weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
    """``M_channel``: ``[B, C, T, H, W]`` → weights ``[B, C, 1, 1, 1]`` in (0, 1)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = channels // reduction
        if hidden < 1:
            raise ValueError(f"channels // reduction must be at least 1, got {channels} // {reduction}")
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (2, 3, 4)
        pooled = torch.stack((x.mean(dim=dims), x.amax(dim=dims)))  # [2, B, C]: one MLP call for both
        return torch.sigmoid(self.mlp(pooled).sum(dim=0))[:, :, None, None, None]


class SpatialAttention(nn.Module):
    """``M_spatial``: ``[B, C, T, H, W]`` → weights ``[B, 1, T, H, W]`` in (0, 1), a 2-D conv per frame."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (the map keeps the frame's size), got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)  # Woo et al.'s 2-D weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat((x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)), dim=1)  # [B, 2, T, H, W]
        pad = self.kernel_size // 2
        # Kernel 1 in time: the 2-D conv on every frame, without moving T beside B.
        logits = F.conv3d(maps, self.conv.weight.unsqueeze(2), self.conv.bias, padding=(0, pad, pad))
        return torch.sigmoid(logits)


class CBAM(nn.Module):
    """``x · M_c(x)``, then that times its ``M_s``: ``[B, C, T, H, W]`` → ``[B, C, T, H, W]``."""

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7):
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(spatial_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)
