"""Model families: the registry that artifacts, training, export and scoring dispatch on.

A family is a model class built from one config dataclass, in the style of timm's and
open_clip's registries (``register_family``, ``create_model(family, **config)``). The model
class carries what the rest of the engine asks of it:

* ``config`` (the dataclass, with ``to_dict()``) holding the input spec: ``num_frames``,
  ``sampler`` (``video/sampling.py``), ``preprocessing`` (``defaults.PREPROCESSINGS``: resize,
  or short side + centre crop); ``image_size`` (H, W) and ``normalize(uint8 [..., H, W, 3])``
  (its mean/std) on the model;
* ``levels`` (names, lowest first), ``level_sims(video) -> [B, L]``, ``score_from_sims(sims) ->
  [B]``; ``forward(video, *, output="score" | "sims")``; ``calibration`` (the artifact's, or None);
* training: ``trainable_parameters()``, ``param_groups(lr, weight_decay)`` (AdamW's groups),
  ``training_output`` (what ``forward`` gives the loss) and ``training_loss(outputs, mos) ->
  (loss, score)``, ``evaluation_inputs()`` (inputs constant over an evaluation, e.g. text features);
* ``artifact_tensors()`` / ``load_artifact_tensors(tensors)``: what an artifact stores, and
  ``rebuilt_state()``: the tensors an artifact does NOT store because ``config`` rebuilds them
  (the frozen backbone), fingerprinted so an artifact refuses another backbone;
* ``artifact_info()``: the family's descriptive fields of ``config.json``.

The :class:`Family` record adds what is known without a model: the quality levels (names,
lowest first), its deployable module (``deployable(model, dtype)``: uint8 frames ``[B, F, H, W,
3]`` → ``(level_sims [B, L], score [B])``, with ``image_size``, ``num_frames``, ``levels`` and
``fixed_frames``: what every backend runs and every export writes) and how to turn a stored
config into the one to build on load (``loading_config``: e.g. no pretrained weights to fetch
when the artifact stores them all) and the name of the file an artifact stores its tensors in
(``stored_file``: ``adapters.safetensors`` for Q-CLIP's trained tensors, ``model.safetensors`` for a
family that stores every tensor).

Adding a family: its own module under ``model/`` and one ``register_family`` line below.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
from torch import nn

from ..contract import QUALITY_LEVELS
from . import folded
from .clipvqa import CLIPVQA, LEVEL_WORDS, CLIPVQAConfig
from .clipvqa import graph as clipvqa_graph
from .dvlta import DVLTA, DVLTAConfig
from .dvlta import graph as dvlta_graph
from .fastvqa import FASTVQA, FASTVQAConfig
from .fastvqa import graph as fastvqa_graph
from .qclip import QCLIP, QCLIPConfig

DEFAULT_FAMILY = "qclip"  # what an artifact or a training config without "family" is
ADAPTERS_FILE = "adapters.safetensors"  # what every family's artifact stored its tensors in before stored_file
MODEL_FILE = "model.safetensors"


@dataclass(frozen=True)
class Family:
    name: str
    config: type
    model: type[nn.Module]
    levels: tuple[str, ...]
    deployable: Callable[[nn.Module, torch.dtype], nn.Module]
    loading_config: Callable[[dict[str, Any]], dict[str, Any]] = lambda cfg: cfg
    stored_file: str = ADAPTERS_FILE  # the artifact's tensors, named for what they are
    stores_every_tensor: bool = False  # its models build with no weights on load and get every tensor from the file

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


def deployable(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """``model``'s deployable module at ``dtype`` (the family's; see the module docstring)."""
    return family_of(model).deployable(model, dtype)


register_family(Family("qclip", QCLIPConfig, QCLIP, tuple(QUALITY_LEVELS), folded.deployable))
register_family(Family("clipvqa", CLIPVQAConfig, CLIPVQA, tuple(LEVEL_WORDS), clipvqa_graph.deployable,
                       loading_config=lambda cfg: cfg | {"pretrained": None},  # its artifacts store every tensor
                       stored_file=MODEL_FILE, stores_every_tensor=True))
register_family(Family("fastvqa", FASTVQAConfig, FASTVQA, (), fastvqa_graph.deployable,  # no levels: it regresses
                       stored_file=MODEL_FILE, stores_every_tensor=True))
register_family(Family("dvlta", DVLTAConfig, DVLTA, DVLTA.levels, dvlta_graph.deployable,
                       # its artifacts store every tensor: nothing to fetch or read on load
                       loading_config=lambda cfg: cfg | {"pretrained": None, "ventral_pretrained": None},
                       stored_file=MODEL_FILE, stores_every_tensor=True))
