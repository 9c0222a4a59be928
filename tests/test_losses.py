"""The training losses against values worked out by hand."""

import math

import pytest
import torch

from qclip_engine.model.qclip_losses import plcc_loss, qclip_loss, rank_loss


def test_plcc_loss_by_hand():
    # pred [1, 2, 3] → standardised [-√1.5, 0, √1.5]; target [1, 3, 2] → [-√1.5, √1.5, 0]
    # loss0 = mean((p − y)²)/4 = ((0)² + (−√1.5)² + (√1.5)²)/3/4 = 3/12 = 0.25
    # ρ = mean(p·y) = (1.5 + 0 + 0)/3 = 0.5; loss1 = mean((0.5p − y)²)/4
    #   = ((−0.5√1.5 + √1.5)² + (−√1.5)² + (0.5√1.5)²)/3/4 = (0.375 + 1.5 + 0.375)/12 = 0.1875
    expected = (0.25 + 0.1875) / 2
    got = plcc_loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0]))
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_plcc_loss_is_zero_for_an_affine_prediction():
    y = torch.tensor([3.0, 1.0, 4.0, 1.5, 5.0])
    assert plcc_loss(2 * y + 7, y).item() == pytest.approx(0.0, abs=1e-6)


def test_rank_loss_by_hand():
    # pred [1, 2, 3], target [1, 3, 2]: mis-ordered pair (2, 3): |3 − 2| = 1, counted twice in
    # the n × n matrix → sum 2; max 1 → scale 2; 2 / 3 / 2 / 2 = 1/6
    got = rank_loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0]))
    assert got.item() == pytest.approx(1 / 6, abs=1e-7)


def test_rank_loss_is_zero_for_a_perfectly_ordered_batch():
    y = torch.tensor([0.2, 0.9, 0.5, 0.1])
    assert rank_loss(y * 10, y).item() == 0.0
    assert rank_loss(torch.tensor([1.0]), torch.tensor([2.0])).item() == 0.0


def test_total_loss_weights_rank_by_0_3_and_has_gradients():
    pred = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    target = torch.tensor([1.0, 3.0, 2.0])
    loss = qclip_loss(pred, target)
    assert loss.item() == pytest.approx(0.21875 + 0.3 / 6, abs=1e-6)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert not math.isnan(loss.item())
