"""Model families: the registry that artifacts, training and conversion dispatch on.

A family is a model class built from one config dataclass, in the style of timm's and
open_clip's registries (``register_family``, ``create_model(family, **config)``). The model
class carries what the rest of the engine asks of it:

* ``config`` (the dataclass, with ``to_dict()``) and ``normalize(uint8 [..., H, W, 3])``;
* ``level_sims(video) -> [B, L]`` and ``score_from_sims(sims) -> [B]`` (``forward`` = both);
* ``trainable_parameters()``;
* ``artifact_tensors()`` / ``load_artifact_tensors(tensors)``: what an artifact stores, and
  ``rebuilt_state()``: the tensors an artifact does NOT store because ``config`` rebuilds them
  (the frozen backbone), fingerprinted so an artifact refuses another backbone;
* ``artifact_info()``: the family's descriptive fields of ``config.json``.

The :class:`Family` record adds what is known without a model: the quality levels (names,
lowest first) and how to turn a stored config into the one to build on load
(``loading_config``: e.g. no pretrained weights to fetch when the artifact stores them all).

Adding a family: its own module under ``model/`` and one ``register_family`` line below.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

from torch import nn

from ..contract import QUALITY_LEVELS
from ..errors import ArtifactError
from .clipvqa import CLIPVQA, LEVEL_WORDS, CLIPVQAConfig
from .qclip import QCLIP, QCLIPConfig

DEFAULT_FAMILY = "qclip"  # what an artifact or a training config without "family" is
# The families QualityEngine (and so qclip-score, qclip-serve, Ray), qclip-export and train.run
# run today; the others load (load_artifact, qclip-convert) but are refused there by name.
ENGINE_FAMILIES = ("qclip",)


@dataclass(frozen=True)
class Family:
    name: str
    config: type
    model: type[nn.Module]
    levels: tuple[str, ...]
    loading_config: Callable[[dict[str, Any]], dict[str, Any]] = lambda cfg: cfg

    def config_fields(self) -> set[str]:
        return {f.name for f in fields(self.config)}

    def create(self, **config: Any) -> nn.Module:
        """The model of ``config`` (the family's settings; TypeError/ValueError for bad ones)."""
        unknown = sorted(set(config) - self.config_fields())
        if unknown:
            raise ValueError(f"unknown {self.name} settings {unknown}; known: {sorted(self.config_fields())}")
        return self.model(self.config(**config))


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"model family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}") from None


def create_model(family: str = DEFAULT_FAMILY, **config: Any) -> nn.Module:
    """``create_model("clipvqa", num_frames=8, pretrained=None)``: a model of a registered family."""
    return get_family(family).create(**config)


def family_of(model: nn.Module) -> Family:
    for family in FAMILIES.values():
        if isinstance(model, family.model):
            return family
    raise ValueError(f"{type(model).__name__} is not the model of a registered family ({sorted(FAMILIES)})")


def require_engine_family(family: str | nn.Module, what: str) -> None:
    """ArtifactError (``artifact_invalid``) when ``what`` cannot run this family (a name, e.g. an
    artifact's ``artifact.artifact_family``, checked before building anything; or a model) yet."""
    name = family if isinstance(family, str) else family_of(family).name
    if name not in ENGINE_FAMILIES:
        raise ArtifactError(
            f"{what} runs {', '.join(ENGINE_FAMILIES)} models; this one is of the {name!r} family, which loads "
            "(load_artifact) but is not wired into scoring, export and training yet"
        )


register_family(Family("qclip", QCLIPConfig, QCLIP, tuple(QUALITY_LEVELS)))
register_family(Family("clipvqa", CLIPVQAConfig, CLIPVQA, tuple(LEVEL_WORDS),
                       loading_config=lambda cfg: cfg | {"pretrained": None}))  # its artifacts store every tensor
