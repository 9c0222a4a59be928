"""Training losses of the official Q-CLIP code: ``plcc_loss + 0.3 · rank_loss`` (``QCLIP.training_loss``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

RANK_WEIGHT = 0.3


def plcc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Standardise both, then ``(MSE(p, y) + MSE(ρ·p, y)) / 8`` with ``ρ`` their correlation.

    Zero when predictions are a positive affine map of the targets.
    """
    pred, target = pred.reshape(-1).float(), target.reshape(-1).float()
    sigma_hat, mean_hat = torch.std_mean(pred, unbiased=False)
    p = (pred - mean_hat) / (sigma_hat + 1e-8)
    sigma, mean = torch.std_mean(target, unbiased=False)
    y = (target - mean) / (sigma + 1e-8)
    loss0 = F.mse_loss(p, y) / 4
    rho = torch.mean(p * y)
    loss1 = F.mse_loss(rho * p, y) / 4
    return (loss0 + loss1) / 2


def rank_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pairwise hinge on mis-ordered pairs, normalised by ``n(n−1)`` and ``1 + max``; 0 if ordered."""
    p, y = pred.reshape(-1, 1).float(), target.reshape(-1, 1).float()
    n = p.shape[0]
    if n < 2:
        return p.new_zeros(())
    ranking = F.relu((p - p.t()) * torch.sign(y.t() - y))
    scale = 1 + torch.max(ranking)
    return torch.sum(ranking) / n / (n - 1) / scale


def qclip_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return plcc_loss(pred, target) + RANK_WEIGHT * rank_loss(pred, target)
