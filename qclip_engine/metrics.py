"""The correlation metrics video-quality work reports, on scipy.

* ``srocc`` — Spearman rank correlation (ties get average ranks);
* ``krocc`` — Kendall's tau-b (tie-corrected);
* ``plcc`` — Pearson correlation of the raw predictions (linear);
* ``plcc_logistic`` — Pearson correlation after the standard 4-parameter logistic
  mapping of predictions onto the targets (VQEG practice);
* ``rmse`` — after the official linear rescale of predictions to the target
  mean/std (``rescale``), as the official Q-CLIP evaluation does.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize, special, stats


def _pair(pred, target) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(target, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"predictions ({p.size}) and targets ({t.size}) differ in length")
    if p.size < 2:
        raise ValueError("correlations need at least two samples")
    return p, t


def rescale(pred, target=None) -> np.ndarray:
    """The official linear rescale: standardise ``pred``, then give it ``target``'s mean/std.

    Constant predictions map to the target mean (or 0 without a target).
    """
    p = np.asarray(pred, dtype=np.float64)
    std = np.std(p)
    if std < 1e-8:
        return np.full_like(p, np.mean(target) if target is not None else 0.0)
    z = (p - np.mean(p)) / std
    if target is None:
        return z
    t = np.asarray(target, dtype=np.float64)
    return z * np.std(t) + np.mean(t)


def srocc(pred, target) -> float:
    p, t = _pair(pred, target)
    return float(stats.spearmanr(p, t).statistic)


def krocc(pred, target) -> float:
    p, t = _pair(pred, target)
    return float(stats.kendalltau(p, t, variant="b").statistic)


def plcc(pred, target) -> float:
    p, t = _pair(pred, target)
    return float(stats.pearsonr(p, t).statistic)


def logistic_4(x, beta1, beta2, beta3, beta4):
    """``β2 + (β1 − β2) / (1 + exp(−(x − β3) / |β4|))``: the VQEG 4-parameter logistic."""
    return beta2 + (beta1 - beta2) * special.expit((x - beta3) / np.abs(beta4))


def _logistic_4_jacobian(x, beta1, beta2, beta3, beta4):
    # Analytic: finite differences stall on a parameter that starts at exactly 0 (β3 = mean of
    # centred predictions), because their step is relative to the parameter's value.
    s = special.expit((x - beta3) / np.abs(beta4))
    slope = (beta1 - beta2) * s * (1 - s)
    return np.stack(
        [s, 1 - s, -slope / np.abs(beta4), -slope * (x - beta3) / beta4**2 * np.sign(beta4)], axis=-1
    )


def fit_logistic(pred, target) -> np.ndarray:
    """Least-squares fit of ``logistic_4`` mapping predictions onto targets; returns the βs."""
    p, t = _pair(pred, target)
    scale = np.std(p) or 1.0
    beta0 = [np.max(t), np.min(t), np.mean(p), scale]
    beta, _ = optimize.curve_fit(logistic_4, p, t, p0=beta0, jac=_logistic_4_jacobian, maxfev=20000)
    return beta


def plcc_logistic(pred, target) -> float:
    """PLCC after the 4-parameter logistic mapping.

    Falls back to the linear PLCC (with a warning) for four samples or fewer and when
    the fit does not converge (degenerate prediction sets, e.g. two distinct values).
    """
    p, t = _pair(pred, target)
    if p.size <= 4:  # four parameters: no fit to speak of
        warnings.warn(f"{p.size} samples are too few for a 4-parameter fit; reporting linear PLCC", RuntimeWarning, stacklevel=2)
        return plcc(p, t)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            beta = fit_logistic(p, t)
    except RuntimeError as exc:
        warnings.warn(f"logistic fit did not converge ({exc}); reporting linear PLCC", RuntimeWarning, stacklevel=2)
        return plcc(p, t)
    return plcc(logistic_4(p, *beta), t)


def rmse(pred, target) -> float:
    """RMSE of the linearly rescaled predictions against the targets."""
    p, t = _pair(pred, target)
    return float(np.sqrt(np.mean((rescale(p, t) - t) ** 2)))


def all_metrics(pred, target) -> dict[str, float]:
    return {
        "srocc": srocc(pred, target),
        "plcc": plcc(pred, target),
        "plcc_logistic": plcc_logistic(pred, target),
        "krocc": krocc(pred, target),
        "rmse": rmse(pred, target),
    }
