"""Checkpoints of the released FAST-VQA code (``FAST_VQA_B_1_4.pth``, ``FAST_VQA_3D_1_1.pth``,
``FAST_VQA_M_1_4.pth``) → FAST-VQA models (``qclip_engine/model/fastvqa/``) and artifacts.

The released training saves ``{"state_dict": model.state_dict(), "validation_results": (SROCC,
PLCC, KROCC, RMSE)}`` of its ``DiViDeAddEvaluator``: the backbone under ``fragments_backbone.``,
the head under ``vqa_head.``; inside them the names are this engine's (``swin3d.py`` and
``head.py`` keep them), so the map is one prefix each (``PREFIXES``). The checkpoint also holds
each attention's ``relative_position_index``, a buffer that follows from the window: it is
checked against the one the window gives here and not stored. It is read with
``torch.load(weights_only=True)`` (the validation results are numpy scalars, allowed by name):
nothing in the file runs.

The backbone is read off the shapes (:func:`fastvqa_config`): ``embed_dim`` from the patch
embedding, ``depths`` by counting blocks, the heads and the window from the bias tables, the
fragment biases from which stages have a fragment table. What the weights do not say — the
fragment grid, frames, views and temporal fragments — is the variant's (``VARIANTS``): named with
``variant``, else by the file name (``FAST_VQA_3D`` → FasterVQA, ``FAST_VQA_M`` → FAST-VQA-M,
``FAST_VQA_B`` → FAST-VQA-B), else the only variant the weights fit (:func:`choose_variant`).
The weights tell FAST-VQA-M (other windows, no fragment tables) from the other two, which the
chosen variant is checked against; FAST-VQA-B and FasterVQA have the same tensors, so a file
named neither way must be given its variant.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifact import save_artifact, staged_directory
from ..errors import ConversionError
from ..model.fastvqa import FASTVQA, VARIANTS, FASTVQAConfig
from ..model.fastvqa.swin3d import relative_position_index
from ..model.pe_weights import load_torch_file

PREFIXES = (("fragments_backbone.", "backbone."), ("vqa_head.", "head."))  # released → here
INDEX_BUFFER = "relative_position_index"
# What a weights-only load may build besides tensors: the numpy scalars of "validation_results",
# pickled by numpy 1 (``numpy.core``, the released files) or numpy 2 (``numpy._core``).
_SCALAR = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar  # numpy 2 / numpy 1
NUMPY_GLOBALS = [(_SCALAR, "numpy.core.multiarray.scalar"), (_SCALAR, "numpy._core.multiarray.scalar"), np.dtype,
                 *(type(np.dtype(t)) for t in (np.float64, np.float32))]


def ours(name: str) -> str | None:
    """This engine's name of a released tensor name (None: not the released model's)."""
    for released, here in PREFIXES:
        if name.startswith(released):
            return here + name[len(released):]
    return None


def released(name: str) -> str | None:
    """The released name of one of this engine's tensor names."""
    for rel, here in PREFIXES:
        if name.startswith(here):
            return rel + name[len(here):]
    return None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The released checkpoint, loaded weights-only; ConversionError (one line) if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path}", code="not_found")
    try:
        with torch.serialization.safe_globals(NUMPY_GLOBALS):
            checkpoint = load_torch_file(path)
    except Exception as exc:  # zip, pickle framing and torch errors alike
        lines = [line.strip() for line in str(exc).split("WeightsUnpickler error:", 1)[-1].splitlines() if line.strip()]
        raise ConversionError(f"{path} is not a readable torch checkpoint "
                              f"({lines[0] if lines else type(exc).__name__})") from exc
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


def read_fastvqa(checkpoint: str | os.PathLike | dict) -> dict[str, torch.Tensor]:
    """The model's tensors of a released checkpoint (a path, the loaded dict or a bare state dict),
    without a ``module.`` prefix."""
    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise ConversionError(f"the checkpoint's 'state_dict' entry is a {type(state).__name__}, not a state dict")
    tensors = {str(k).removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    others = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if others or not tensors:
        raise ConversionError(f"not a released FAST-VQA state dict: {len(tensors)} tensors"
                              + (f", entries that are not tensors: {others[:6]}" if others else ""))
    return tensors


def _blocks(state: dict[str, torch.Tensor]) -> dict[int, list[int]]:
    found: dict[int, set[int]] = {}
    for key in state:
        if m := re.match(r"fragments_backbone\.layers\.(\d+)\.blocks\.(\d+)\.", key):
            found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return {stage: sorted(blocks) for stage, blocks in sorted(found.items())}


def _window(rows: int) -> tuple[int, int, int] | None:
    """The window whose bias table has ``rows`` rows, among the released variants' windows."""
    for variant in VARIANTS.values():
        wd, wh, ww = variant["window_size"]
        if (2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1) == rows:
            return tuple(variant["window_size"])
    return None


def guess_variant(path: str | os.PathLike | None) -> str | None:
    """The released variant a checkpoint's file name names (its README's file names), or None."""
    name = Path(path).name.upper() if path is not None else ""
    if "FAST_VQA_3D" in name or "FASTERVQA" in name:
        return "fastervqa"
    if "FAST_VQA_M" in name:
        return "fast-vqa-m"
    if "FAST_VQA_B" in name:
        return "fast-vqa-b"
    return None


def _variants_fitting(state: dict[str, torch.Tensor]) -> list[str]:
    """The variants whose window and fragment biases the weights have (FAST-VQA-B and FasterVQA
    share every tensor: the weights cannot tell them apart)."""
    fits = []
    for name, preset in VARIANTS.items():
        wd, wh, ww = preset["window_size"]
        rows = (2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1)
        tables = [k for k in state if k.endswith(".attn.relative_position_bias_table")]
        frag = [f"fragments_backbone.layers.{i}.blocks.0.attn.fragment_position_bias_table" in state
                for i in range(len(preset["frag_biases"]))]
        if tables and all(state[k].shape[0] == rows for k in tables) and tuple(frag) == tuple(preset["frag_biases"]):
            fits.append(name)
    return fits


def choose_variant(state: dict[str, torch.Tensor], path: str | os.PathLike | None = None,
                   asked: str | None = None) -> tuple[str, str]:
    """(variant, how it was chosen): ``asked``; else the one the file name names; else the only
    one the weights fit. ConversionError when the weights fit several and nothing names one."""
    if asked is not None:
        return asked, "as given"
    named = guess_variant(path)
    if named is not None:
        return named, "from the file name"
    fits = _variants_fitting(state)
    if len(fits) == 1:
        return fits[0], "the only one the weights fit"
    raise ConversionError(f"the weights fit the variants {fits or sorted(VARIANTS)} alike and the file name names none: "
                          "name it with --variant (FAST-VQA-B and FasterVQA have the same tensors but take "
                          "different frames)")


def fastvqa_config(state: dict[str, torch.Tensor], variant: str = "fast-vqa-b", **overrides) -> FASTVQAConfig:
    """The :class:`FASTVQAConfig` of a released state dict: the backbone read off the shapes, the
    input spec of ``variant``; ``overrides`` set other fields (``views``, ``num_frames``).
    ConversionError listing everything that does not fit."""
    if variant not in VARIANTS:
        raise ConversionError(f"unknown FAST-VQA variant {variant!r}; choose one of {sorted(VARIANTS)}")
    problems: list[str] = []
    embed = state.get("fragments_backbone.patch_embed.proj.weight")
    blocks = _blocks(state)
    if embed is None or embed.ndim != 5 or not blocks:
        raise ConversionError("not a released FAST-VQA checkpoint: it lacks fragments_backbone.patch_embed.proj.weight "
                              "or the backbone's blocks")
    if list(blocks) != list(range(len(blocks))):
        problems.append(f"fragments_backbone.layers.*: stages {list(blocks)}, expected 0 … {len(blocks) - 1}")
    depths, heads, frag_biases, windows = [], [], [], set()
    for stage, found in blocks.items():
        if found != list(range(len(found))):
            problems.append(f"fragments_backbone.layers.{stage}.blocks.*: {found}, expected 0 … {len(found) - 1}")
        depths.append(len(found))
        table = state.get(f"fragments_backbone.layers.{stage}.blocks.0.attn.relative_position_bias_table")
        if table is None or table.ndim != 2:
            problems.append(f"fragments_backbone.layers.{stage}.blocks.0.attn.relative_position_bias_table: missing")
            heads.append(1)
        else:
            heads.append(table.shape[1])
            windows.add(_window(table.shape[0]))
        frag_biases.append(f"fragments_backbone.layers.{stage}.blocks.0.attn.fragment_position_bias_table" in state)
    window = windows.pop() if len(windows) == 1 else None
    if window is None:
        problems.append("the bias tables fit none of the released windows "
                        f"({sorted({tuple(v['window_size']) for v in VARIANTS.values()})})")
    preset = VARIANTS[variant]
    if window is not None and window != tuple(preset["window_size"]):
        problems.append(f"the weights have window {window}, variant {variant!r} has {tuple(preset['window_size'])}")
    if tuple(frag_biases) != tuple(preset["frag_biases"]):
        problems.append(f"the weights have fragment biases {tuple(frag_biases)}, variant {variant!r} has "
                        f"{tuple(preset['frag_biases'])}")
    hidden = state.get("vqa_head.fc_hid.weight")
    if hidden is None or hidden.ndim != 5:
        problems.append("vqa_head.fc_hid.weight: missing or not a Conv3d weight")
    if problems:
        raise ConversionError("the checkpoint does not fit the released FAST-VQA model:\n  " + "\n  ".join(problems))
    settings = {k: preset[k] for k in ("image_size", "num_frames", "views", "sampler", "window_size", "aligned")}
    settings |= {"embed_dim": embed.shape[0], "depths": tuple(depths), "num_heads": tuple(heads),
                 "frag_biases": tuple(frag_biases), "head_hidden": hidden.shape[0]}
    if "views" in overrides and "num_frames" not in overrides:  # the same frames per view, more or fewer views
        overrides["num_frames"] = preset["num_frames"] // preset["views"] * overrides["views"]
        per_view = int(preset["sampler"].split(":")[1]) // preset["views"]
        overrides.setdefault("sampler", f"temporal_fragments:{per_view * overrides['views']}")
    try:
        return FASTVQAConfig(**(settings | overrides))
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"the FAST-VQA settings do not fit: {exc}") from None


@dataclass
class Converted:
    model: FASTVQA
    checked: list[str]  # buffers checked against ours and not stored
    config: FASTVQAConfig
    variant: str
    chosen: str  # how the variant was chosen (choose_variant)


def load_fastvqa(checkpoint: str | os.PathLike | dict, variant: str | None = None, **overrides) -> Converted:
    """The FAST-VQA model holding a released checkpoint's tensors. Strict: ConversionError listing
    every unknown, missing or unexpected tensor, every shape that differs and every position index
    that is not the window's."""
    path = None if isinstance(checkpoint, dict) else checkpoint
    state = read_fastvqa(checkpoint)
    variant, how = choose_variant(state, path, variant)
    config = fastvqa_config(state, variant, **overrides)
    model = FASTVQA(replace(config))
    expected = model.state_dict()
    problems, mapped, checked = [], {}, []
    for key, value in state.items():
        if key.endswith("." + INDEX_BUFFER):
            stage = int(m.group(1)) if (m := re.match(r"fragments_backbone\.layers\.(\d+)\.", key)) else None
            if stage is None or not torch.equal(value.cpu().long(), relative_position_index(config.window_size)):
                problems.append(f"{key}: not the relative position index of window {config.window_size}")
            checked.append(key)
            continue
        name = ours(key)
        if name is None:
            problems.append(f"{key}: not a tensor of the released FAST-VQA model")
            continue
        mapped[name] = value
    problems += [f"{released(k)} (→ {k}): not in the checkpoint" for k in expected if k not in mapped]
    problems += [f"{released(k)} (→ {k}): no such tensor in this backbone" for k in mapped if k not in expected]
    problems += [f"{released(k)} {tuple(v.shape)} (→ {k}): the model has {tuple(expected[k].shape)}"
                 for k, v in mapped.items() if k in expected and v.shape != expected[k].shape]
    if problems:
        raise ConversionError(f"the checkpoint does not fit the model ({len(problems)} problems):\n  "
                              + "\n  ".join(problems))
    model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    return Converted(model.eval(), checked, config, variant, how)


def convert_fastvqa(checkpoint: str | os.PathLike | dict, out: str | os.PathLike, variant: str | None = None,
                    **overrides) -> Path:
    """Convert a released checkpoint into the artifact directory ``out`` (every tensor stored)."""
    converted = load_fastvqa(checkpoint, variant, **overrides)
    with staged_directory(out) as stage:
        save_artifact(converted.model, stage)
    return Path(out)
