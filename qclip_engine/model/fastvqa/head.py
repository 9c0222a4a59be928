"""FAST-VQA's regression head (released ``VQAHead``): a per-position MLP over the backbone's
features, giving a local quality map; the caller averages it into a score."""

from __future__ import annotations

import torch
from torch import nn


class VQAHead(nn.Module):
    """``[B, C, D, H, W]`` → quality map ``[B, 1, D, H, W]``: Dropout → Conv3d 1×1×1 (C → hidden) →
    GELU → Dropout → Conv3d 1×1×1 (hidden → 1). Both dropouts are the same module, as released;
    parameter names (``fc_hid``, ``fc_last``) are the released ones."""

    def __init__(self, in_channels: int = 768, hidden_channels: int = 64, dropout: float = 0.5):
        super().__init__()
        self.in_channels, self.hidden_channels = in_channels, hidden_channels
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc_hid = nn.Conv3d(in_channels, hidden_channels, kernel_size=1)
        self.gelu = nn.GELU()
        self.fc_last = nn.Conv3d(hidden_channels, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_last(self.dropout(self.gelu(self.fc_hid(self.dropout(x)))))
