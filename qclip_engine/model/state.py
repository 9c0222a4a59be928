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


class StoresEveryTensor:
    """The artifact methods (model/families.py) of a family whose artifacts store every tensor
    (``Family.stores_every_tensor``): CLIPVQA, FAST-VQA and DVLTA-VQA, whose frozen parts come from
    files the config cannot rebuild them from (a converted checkpoint, the user's weights). Mixed
    into an ``nn.Module``."""

    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        """Every persistent tensor, detached on the CPU."""
        return {name: t.detach().to("cpu") for name, t in self.state_dict().items()}

    def load_artifact_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load what :meth:`artifact_tensors` gave; ValueError listing every missing and unexpected
        name and every shape that differs."""
        check_state(self.state_dict(), tensors)
        self.load_state_dict(tensors, strict=True)

    def rebuilt_state(self) -> dict[str, torch.Tensor]:
        """What ``config`` rebuilds on load rather than the artifact storing it: nothing."""
        return {}
