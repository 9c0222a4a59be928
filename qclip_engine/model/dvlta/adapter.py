"""DVLTA-VQA's Video-Based Temporal CLIP (Sec. III-A, eqs. 1–4): per-frame CLIP features averaged over
time (eq. 2), refined by a convolutional adapter mixed back with a residual weight α (eqs. 3–4), pooled
to the clip vector F_vbtc that the text-guided fusion weighs (eq. 10).

``ConvAdapter(dim, reduction=4, alpha=0.4, kernel_size=1)``: ``Z [B, D, H, W]`` →
``α · A(Z) + (1 − α) · Z`` with ``A = Conv1 ∘ Conv2``, ``Conv2 = ReLU(BN(Conv2d(D → D/r)))``,
``Conv1 = ReLU(BN(Conv2d(D/r → D)))``.

``TemporalCLIPFeatures(dim, reduction=4, alpha=0.4, kernel_size=1)``: frame maps ``[B, T, D, H, W]``
(or frame vectors ``[B, T, D]``) → ``[B, D]``: mean over T (eq. 2), the adapter, mean over H and W.
``patch_tokens_to_maps`` turns a ViT's patch tokens ``[B, T, H·W, D]`` into those maps.

Choices (DVLTA-VQA has no released code):

* **α.** Paper says: α ∈ [0, 1], "set to 0.4" (Sec. IV-C). We chose: 0.4, a fixed constant (a
  constructor argument, not a learned parameter). Why: the paper reports a set value, and a learned α
  would be free to leave [0, 1].
* **Reduction r.** Paper says: D → D/r → D, r not given. We chose: r = 4. Why: eq. 4 is CLIP-Adapter's
  residual form (Gao et al., 2021), whose bottleneck uses r = 4; at D = 512 it adds 2 · 512 · 128
  weights, small beside the frozen CLIP.
* **Kernel size.** Paper says: "2D convolution", size not given. We chose: 1 × 1 (``kernel_size``,
  odd, padded to keep H × W). Why: a 1 × 1 conv is CLIP-Adapter's per-token MLP applied to every patch
  token — it keeps each token in CLIP's embedding space, which eq. 10 compares with text; 3 × 3 is an
  option.
* **Biases and the last ReLU.** Paper says: each Conv is "2D convolution, BN and ReLU". We chose: that
  literally — bias-free convs (BN follows and has the shift), and a ReLU after Conv1 too, so A(Z) ≥ 0.
  Why: it is the stated form; default PyTorch initialisation (BN γ = 1, β = 0).
* **What Z is.** Paper says: ``Z ∈ R^(D,H,W)`` and ``A(Z) = Conv1(Conv2(Z^T))`` — a transpose of a
  token sequence into a D × H × W map, read as ViT patch tokens ``[H·W, D]`` → ``[D, H, W]``. We
  chose: take the maps as given (``patch_tokens_to_maps`` does the transpose; the class token is not
  a patch and is dropped by the caller); a ``[B, T, D]`` input is a 1 × 1 map. Why: which tokens
  (before or after CLIP's ``ln_post``/``proj``) is the family's choice; for eq. 10 their D must be the
  text embedding's (e.g. patch tokens through ``ln_post`` and ``proj``, as MaskCLIP does).
* **To a vector.** Paper says: F_vbtc is compared with a text vector (eq. 10); how the D × H × W map
  becomes a vector is not said. We chose: the spatial mean after the adapter. Why: the same average
  pooling eq. 2 uses over time; no new parameters.
* **BatchNorm.** BN2d over batch and space; in training it needs more than one value per channel
  (B · H · W > 1); export runs it in eval mode (a per-channel affine map).
"""

from __future__ import annotations

import torch
from torch import nn


def patch_tokens_to_maps(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """ViT patch tokens ``[B, T, H·W, D]`` (row-major, class token already removed) → maps ``[B, T, D, H, W]``."""
    b, t, n, d = tokens.shape
    if n != height * width:
        raise ValueError(f"{n} tokens are not a {height} × {width} grid")
    return tokens.transpose(2, 3).reshape(b, t, d, height, width)


class ConvAdapter(nn.Module):
    """Eqs. 3–4: ``α · Conv1(Conv2(Z)) + (1 − α) · Z`` on ``Z [B, D, H, W]`` → ``[B, D, H, W]``."""

    def __init__(self, dim: int, reduction: int = 4, alpha: float = 0.4, kernel_size: int = 1,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        hidden = dim // reduction
        if hidden < 1:
            raise ValueError(f"dim // reduction must be at least 1, got {dim} // {reduction}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] (eq. 4), got {alpha}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (the map keeps its size), got {kernel_size}")
        self.dim, self.alpha = dim, float(alpha)
        pad = kernel_size // 2
        # Named after the paper: conv2 runs first (D → D/r), conv1 second (D/r → D).
        self.conv2 = nn.Sequential(nn.Conv2d(dim, hidden, kernel_size, padding=pad, bias=False),
                                   nn.BatchNorm2d(hidden, eps=bn_eps, momentum=bn_momentum), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv2d(hidden, dim, kernel_size, padding=pad, bias=False),
                                   nn.BatchNorm2d(dim, eps=bn_eps, momentum=bn_momentum), nn.ReLU())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.conv1(self.conv2(z)) + (1.0 - self.alpha) * z

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class TemporalCLIPFeatures(nn.Module):
    """F_vbtc: frame maps ``[B, T, D, H, W]`` (or vectors ``[B, T, D]``) → time mean (eq. 2) →
    :class:`ConvAdapter` (eqs. 3–4) → spatial mean → ``[B, D]``."""

    def __init__(self, dim: int, reduction: int = 4, alpha: float = 0.4, kernel_size: int = 1,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        self.adapter = ConvAdapter(dim, reduction, alpha, kernel_size, bn_eps, bn_momentum)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() == 3:
            frames = frames[..., None, None]  # [B, T, D] → a 1 × 1 map per frame
        if frames.dim() != 5:
            raise ValueError(f"expected [B, T, D, H, W] or [B, T, D], got {tuple(frames.shape)}")
        z = frames.mean(dim=1)  # eq. 2: Z = AvgPool over the T frames
        return self.adapter(z).mean(dim=(2, 3))
