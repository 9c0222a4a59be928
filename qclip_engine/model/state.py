"""Checking a set of tensors against the ones a model expects (artifacts, checkpoints, conversions)."""

from __future__ import annotations

import torch


def check_state(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> None:
    """ValueError listing every missing and unexpected name and every shape that differs."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = [f"{name}: {tuple(given[name].shape)}, expected {tuple(expected[name].shape)}"
              for name in sorted(set(expected) & set(given)) if given[name].shape != expected[name].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"the tensors do not fit the model: missing {missing}, unexpected {unexpected}, shapes {shapes}")
