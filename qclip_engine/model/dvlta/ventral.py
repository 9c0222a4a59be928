"""DVLTA-VQA's ventral stream, the Basic Visual Feature Extraction Module (Sec. III-C, eqs. 8–9):
the frozen FAST-VQA backbone on fragments, then ``Conv3D_2(GELU(Conv3D_1(F_local)))`` and a mean
→ F_bvfe ``[B, D]``.

* ``VentralHead(channels, hidden, dim)``: eq. 9, ``Conv3d(C → hidden, 1×1×1) → GELU →
  Conv3d(hidden → D, 1×1×1)`` on ``[N, C, T, H, W]``, then the mean over T, H, W.
* ``ventral_backbone(config, weights)``: the FAST-VQA Swin-T 3D of ``config`` (a
  :class:`~qclip_engine.model.fastvqa.FASTVQAConfig`) with the backbone tensors of a
  ``qclip-convert fastvqa`` artifact (its directory or ``model.safetensors``), or random (seeded
  by ``config.init_seed``) when ``weights`` is None; frozen.

Choices (DVLTA-VQA has no released code): the paper's own words for each are in this package's
``__init__.py``; in short, eq. 9 is FAST-VQA's quality-map head with its single output widened to
the text embedding's D, and its convs are trained while the Swin-T stays frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ...errors import BackboneError, WeightsUnavailableError
from ..fastvqa import FASTVQA, FASTVQAConfig
from ..fastvqa.swin3d import SwinTransformer3D
from ..state import check_state

WEIGHTS_FILE = "model.safetensors"  # what a qclip-convert fastvqa artifact stores every tensor in


class VentralHead(nn.Module):
    """Eq. 9 then the mean: ``[N, C, T, H, W]`` → ``[N, D]``."""

    def __init__(self, channels: int, hidden: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv3d(channels, hidden, 1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv3d(hidden, dim, 1)

    def forward(self, local: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(local))).mean(dim=(2, 3, 4))


def _weights_path(weights: str) -> Path:
    path = Path(weights).expanduser()
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsUnavailableError(f"FAST-VQA weights not found: {path} (give the directory qclip-convert fastvqa "
                                      f"wrote, or its {WEIGHTS_FILE})", code="not_found")
    return path


def ventral_backbone(config: FASTVQAConfig, weights: str | None = None) -> SwinTransformer3D:
    """The frozen FAST-VQA backbone of ``config``, with the backbone tensors of ``weights`` (a
    ``qclip-convert fastvqa`` artifact); ``BackboneError`` listing every misfit when its tensors
    are not a FAST-VQA of ``config``."""
    fastvqa = FASTVQA(config)
    if weights is not None:
        path = _weights_path(weights)
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise WeightsUnavailableError(f"could not read FAST-VQA weights from {path}: {exc}") from exc
        try:
            check_state(fastvqa.state_dict(), tensors)
        except ValueError as exc:
            raise BackboneError(f"{path} is not a FAST-VQA of the ventral settings (set model.ventral to the variant "
                                f"it was converted as): {exc}") from None
        fastvqa.load_state_dict(tensors, strict=True)
    return fastvqa.backbone.requires_grad_(False).eval()
