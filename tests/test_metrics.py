"""Metrics against values worked out by hand (ties included)."""

import math

import numpy as np
import pytest

from qclip_engine import metrics

# Predictions with a tie (2, 2); targets without ties.
PRED = [1.0, 2.0, 2.0, 3.0]
TARGET = [1.0, 3.0, 2.0, 6.0]


def test_srocc_with_ties_uses_average_ranks():
    # ranks: pred [1, 2.5, 2.5, 4], target [1, 3, 2, 4] → Pearson of ranks = 4.5 / sqrt(4.5 · 5)
    assert metrics.srocc(PRED, TARGET) == pytest.approx(3 / math.sqrt(10), abs=1e-12)


def test_krocc_is_tau_b_with_tie_correction():
    # 6 pairs: 5 concordant, 0 discordant, 1 tied in pred only → 5 / sqrt((6 − 1) · 6)
    assert metrics.krocc(PRED, TARGET) == pytest.approx(5 / math.sqrt(30), abs=1e-12)


def test_plcc_linear():
    # deviations pred [-1, 0, 0, 1], target [-2, 0, -1, 3] → 5 / sqrt(2 · 14)
    assert metrics.plcc(PRED, TARGET) == pytest.approx(5 / math.sqrt(28), abs=1e-12)


def test_rmse_after_official_linear_rescale():
    # rescaled pred = 3 + [-√2, 0, 0, √2] · √3.5 = [3 − √7, 3, 3, 3 + √7]
    # squared errors sum to 28 − 10√7 over 4 samples
    assert metrics.rmse(PRED, TARGET) == pytest.approx(math.sqrt(7 - 2.5 * math.sqrt(7)), abs=1e-12)


def test_rescale_matches_target_moments_and_handles_constant_predictions():
    out = metrics.rescale(PRED, TARGET)
    assert np.mean(out) == pytest.approx(np.mean(TARGET))
    assert np.std(out) == pytest.approx(np.std(TARGET))
    np.testing.assert_array_equal(metrics.rescale([2.0, 2.0, 2.0], TARGET[:3]), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(metrics.rescale([1.0, 3.0]), [-1.0, 1.0])


def test_plcc_logistic_recovers_an_exact_logistic_relation():
    pred = np.linspace(-4, 4, 41)
    target = metrics.logistic_4(pred, 5.0, 1.0, 0.5, 0.8)
    assert metrics.plcc(pred, target) < 0.97  # the relation is far from linear …
    assert metrics.plcc_logistic(pred, target) == pytest.approx(1.0, abs=1e-6)  # … but exactly logistic


def test_plcc_logistic_is_invariant_to_an_affine_change_of_prediction_scale():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=200)
    target = 1 + 4 / (1 + np.exp(-2 * pred)) + rng.normal(scale=0.3, size=200)
    a = metrics.plcc_logistic(pred, target)
    b = metrics.plcc_logistic(pred * 1e-3 + 7, target)  # raw Q-CLIP scores live on tiny scales
    assert a == pytest.approx(b, abs=1e-6)
    assert a > metrics.plcc(pred, target)


def test_plcc_logistic_with_too_few_samples_falls_back_to_linear():
    with pytest.warns(RuntimeWarning, match="too few"):
        assert metrics.plcc_logistic(PRED, TARGET) == metrics.plcc(PRED, TARGET)


def test_all_metrics_and_input_checks():
    with pytest.warns(RuntimeWarning):
        out = metrics.all_metrics(PRED, TARGET)
    assert set(out) == {"srocc", "plcc", "plcc_logistic", "krocc", "rmse"}
    with pytest.raises(ValueError, match="differ in length"):
        metrics.srocc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least two"):
        metrics.plcc([1], [1])
