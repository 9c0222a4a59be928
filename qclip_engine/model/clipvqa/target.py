"""CLIPVQA's training target and loss, as the released training computes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .recipe import LEVEL_WORDS


def label_distribution(mos, levels: int = len(LEVEL_WORDS), scale: float = 1.0) -> torch.Tensor:
    """The training target ``q_k = exp(−(MOS/scale − k)²) / Σ_j exp(−(MOS/scale − j)²)``, k = 0 …
    levels−1, ``[B, levels]``.

    The released training uses the MOS exactly as the dataset's label file gives it (``scale=1``):
    right for 1–5 datasets (KoNViD-1k, LIVE-Qualcomm, YouTube-UGC). For 0–100 datasets its code
    says to divide by 20 (``scale=20``), which its SVR fit also does.
    """
    mos = torch.as_tensor(mos)
    if not mos.is_floating_point():
        mos = mos.float()
    centres = torch.arange(levels, dtype=mos.dtype, device=mos.device)
    return (-((mos.reshape(-1, 1) / scale - centres) ** 2)).softmax(dim=-1)


def clipvqa_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The released loss: ``CosineEmbeddingLoss`` with every pair labelled similar (y = 1), mean
    over the batch, i.e. ``mean_b(1 − cos(p_b, q_b))`` on the level probabilities ``p``."""
    ones = torch.ones(probs.shape[0], dtype=probs.dtype, device=probs.device)
    return F.cosine_embedding_loss(probs, target.to(probs.dtype), ones, reduction="mean")
