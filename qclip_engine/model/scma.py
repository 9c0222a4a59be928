"""Shared Cross-Modal Adapters: E-SCMA between encoder blocks, P-SCMA on the pooled feature.

E-SCMA after adapted block ``j`` (one of the last K of a tower)::

    x ← x + α_mod · LN_j(Up_j(Core(Down_j(x))))

``Core`` (Linear → GELU → Linear in the shared r-dim space) is one module for every
layer of both towers. ``Down_j, Up_j, LN_j`` are shared by the two towers when their
widths are equal (PE-Core-B/L/G) and per tower when they differ (PE-Core-T/S, classic
ViTs); ``Core`` stays shared either way.

P-SCMA on the pooled feature ``p`` of a tower, beside the frozen projection::

    out = proj(p) + α_proj_mod · A(p),   A = Linear(d, r) → Linear(r, r) → GELU → Linear(r, D)

one ``A`` for both towers; its first Linear becomes per tower when the widths differ.
"""

from __future__ import annotations

import torch
from torch import nn

MODALITIES = ("visual", "text")
ALPHA_INIT = 0.1


class SharedCore(nn.Sequential):
    """The r → r bottleneck shared by every E-SCMA layer of both towers."""

    def __init__(self, shared_dim: int):
        super().__init__(nn.Linear(shared_dim, shared_dim), nn.GELU(), nn.Linear(shared_dim, shared_dim))


class ESCMALayer(nn.Module):
    """Per-layer projections into and out of the shared space, and the output LayerNorm."""

    def __init__(self, width: int, shared_dim: int):
        super().__init__()
        self.down = nn.Linear(width, shared_dim)
        self.up = nn.Linear(shared_dim, width)
        self.ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, core: nn.Module) -> torch.Tensor:
        return self.ln(self.up(core(self.down(x))))


def _alpha() -> nn.Parameter:
    return nn.Parameter(torch.tensor(ALPHA_INIT))


class ESCMA(nn.Module):
    """E-SCMA for the K adapted layers of both towers."""

    def __init__(self, visual_width: int, text_width: int, shared_dim: int, num_layers: int):
        super().__init__()
        self.shared_across_modalities = visual_width == text_width
        self.core = SharedCore(shared_dim)
        if self.shared_across_modalities:
            self.layers = nn.ModuleList(ESCMALayer(visual_width, shared_dim) for _ in range(num_layers))
        else:
            self.visual_layers = nn.ModuleList(ESCMALayer(visual_width, shared_dim) for _ in range(num_layers))
            self.text_layers = nn.ModuleList(ESCMALayer(text_width, shared_dim) for _ in range(num_layers))
        self.alpha_visual = _alpha()
        self.alpha_text = _alpha()

    def layer(self, modality: str, index: int) -> ESCMALayer:
        if self.shared_across_modalities:
            return self.layers[index]
        return (self.visual_layers if modality == "visual" else self.text_layers)[index]

    def alpha(self, modality: str) -> nn.Parameter:
        return self.alpha_visual if modality == "visual" else self.alpha_text

    def forward(self, x: torch.Tensor, modality: str, index: int) -> torch.Tensor:
        """Adapt the output of the ``index``-th adapted block (0 = block L-K) of ``modality``."""
        return x + self.alpha(modality) * self.layer(modality, index)(x, self.core)

    def extra_repr(self) -> str:
        if self.shared_across_modalities:
            return "Down/Up/LN shared by both towers, Core shared"
        return "tower widths differ: Down/Up/LN per tower, Core shared"


class PSCMA(nn.Module):
    """P-SCMA: a learned correction beside each tower's frozen projection."""

    def __init__(self, visual_dim: int, text_dim: int, shared_dim: int, embed_dim: int):
        super().__init__()
        self.shared_across_modalities = visual_dim == text_dim
        if self.shared_across_modalities:
            self.down = nn.Linear(visual_dim, shared_dim)
        else:
            self.down_visual = nn.Linear(visual_dim, shared_dim)
            self.down_text = nn.Linear(text_dim, shared_dim)
        self.mid = nn.Linear(shared_dim, shared_dim)
        self.act = nn.GELU()
        self.up = nn.Linear(shared_dim, embed_dim)
        self.alpha_visual = _alpha()
        self.alpha_text = _alpha()

    def first_linear(self, modality: str) -> nn.Linear:
        if self.shared_across_modalities:
            return self.down
        return self.down_visual if modality == "visual" else self.down_text

    def alpha(self, modality: str) -> nn.Parameter:
        return self.alpha_visual if modality == "visual" else self.alpha_text

    def adapter(self, pooled: torch.Tensor, modality: str) -> torch.Tensor:
        """``A(p)``."""
        return self.up(self.act(self.mid(self.first_linear(modality)(pooled))))

    def forward(self, pooled: torch.Tensor, projected: torch.Tensor, modality: str) -> torch.Tensor:
        return projected + self.alpha(modality) * self.adapter(pooled, modality)

    def extra_repr(self) -> str:
        if self.shared_across_modalities:
            return "A shared by both towers"
        return "tower widths differ: first Linear per tower, rest of A shared"
