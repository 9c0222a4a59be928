"""Checkpoints of the official Q-CLIP code (``train.py``'s ``.pth``) → artifacts of this engine.

The official ``QCLIP`` module saves ``{"state_dict": model.state_dict(), "validation_results": …}``
(keys possibly ``module.``-prefixed). Its tensors and where they go:

==========================================  ==================================================
official                                    here
==========================================  ==================================================
``clip_model.*`` (Meta's PE layout)         the frozen backbone (``model/pe_weights.py``)
``vit.*``, ``text_encoder.*``               aliases of ``clip_model.visual`` / ``.transformer``
                                            (checked equal, not stored twice)
``encoder_adapters.{i}.{down_proj,up_proj,  ``escma.layers.{i-start}.{down,up,ln}`` for blocks
ln}``                                       ``i ≥ adapter_start_layer``; the others are unused
``shared_core.{0,2}``                       ``escma.core.{0,2}``
``proj_adapter.{0,1,3}``                    ``pscma.{down,mid,up}``
``image_/text_adapter_weight``              ``escma.alpha_visual`` / ``alpha_text``
``image_/text_proj_adapter_weight``         ``pscma.alpha_visual`` / ``alpha_text``
``context_tokens`` ``[1, n, w]``            ``prompts.context`` ``[n, w]``
``prompt_prefix``, ``prompt_suffix``        derived here from the tokenizer; checked equal
``score_proj`` ``[5, 1]``                   ``level_weights`` ``[5]``
==========================================  ==================================================

The official code applies adapters to both towers by block index, so both towers need the same
depth and width (PE-Core-L-14-336: 24 blocks of 1024). ``adapter_start_layer`` is not saved; the
blocks before it never train, so their adapter LayerNorms keep their initial ones and zeros, and the
first block whose LayerNorm moved is where adapters start. The converted model takes what the official
code trained with: ``rope="qclip_official"``, ``preprocessing="reference"``, ``sampler="uniform"``,
8 frames.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch

from ..artifact import save_artifact, staged_directory, write_artifact_file
from ..errors import ConversionError
from ..model.backbone import weights_loaded_after
from ..model.pe_weights import WRAPPERS, load_torch_file, meta_pe_to_open_clip, unwrap_state_dict
from ..model.qclip import QCLIP, QCLIPConfig

BACKBONE_PREFIX = "clip_model."
ALIASES = {"vit.": "visual.", "text_encoder.": "transformer."}  # module attributes the official model repeats
ADAPTER_PARTS = {"down_proj": "down", "up_proj": "up", "ln": "ln"}
LINEARS = {
    "shared_core.0": "escma.core.0",
    "shared_core.2": "escma.core.2",
    "proj_adapter.0": "pscma.down",
    "proj_adapter.1": "pscma.mid",
    "proj_adapter.3": "pscma.up",
}
SCALARS = {
    "image_adapter_weight": "escma.alpha_visual",
    "text_adapter_weight": "escma.alpha_text",
    "image_proj_adapter_weight": "pscma.alpha_visual",
    "text_proj_adapter_weight": "pscma.alpha_text",
}
DERIVED = {"prompt_prefix": "prompts.prefix", "prompt_suffix": "prompts.suffix"}
OFFICIAL_SETTINGS = {"num_frames": 8, "sampler": "uniform", "rope": "qclip_official", "preprocessing": "reference"}
BACKBONE_FILE = "backbone.safetensors"


@dataclass
class OfficialCheckpoint:
    """An official checkpoint read and renamed: what goes where, and what was left out."""

    backbone_state: dict[str, torch.Tensor]  # open_clip layout
    trained: dict[str, torch.Tensor]  # this engine's names
    derived: dict[str, torch.Tensor]  # buffers this engine derives itself; checked, not loaded
    backbone: str
    adapter_start_layer: int
    depth: int
    shared_dim: int
    context_tokens: int
    mapped: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    validation_results: dict[str, Any] | None = None

    def config(self, backbone_weights: str | None, **overrides) -> QCLIPConfig:
        return QCLIPConfig(
            backbone=self.backbone,
            pretrained=backbone_weights,
            adapter_layers=self.depth - self.adapter_start_layer,
            shared_dim=self.shared_dim,
            context_tokens=self.context_tokens,
            **{**OFFICIAL_SETTINGS, **overrides},
        )


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _may_fit(name: str, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Image size and text tower by the model's config (cheap) before a build compares every shape."""
    cfg = open_clip.get_model_config(name) or {}
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    patch = shapes.get("visual.trunk.patch_embed.proj.weight", (0, 0, 0, 0))[-1]
    grid = round((shapes.get("visual.trunk.pos_embed", (1, 1, 0))[1] - 1) ** 0.5)
    layers = sum(1 for k in shapes if k.startswith("text.transformer.resblocks.") and k.endswith(".ln_1.weight"))
    return (vision.get("image_size") == grid * patch and text.get("width") == shapes.get("text.ln_final.weight", (0,))[0]
            and text.get("layers") == layers)


def match_backbone(backbone_state: dict[str, torch.Tensor], name: str | None = None) -> str:
    """The open_clip PE-Core model whose state dict has exactly these keys and shapes (``name``
    checks one). Models are built on the ``meta`` device: no memory, no init."""
    wanted = _shapes(backbone_state)
    names = [name] if name else [m for m in open_clip.list_models() if m.startswith("PE-Core") and _may_fit(m, wanted)]
    misfits = []
    for candidate in names:
        if candidate not in open_clip.list_models():
            raise ConversionError(f"unknown open_clip model {candidate!r}")
        with weights_loaded_after():  # shapes only, compared below; no model of random weights is used
            have = _shapes(open_clip.create_model(candidate, pretrained=None, device="meta").state_dict())
        diff = sorted(k for k in set(have) | set(wanted) if have.get(k) != wanted.get(k))
        if not diff:
            return candidate
        misfits.append(f"{candidate}: {len(diff)} keys differ, e.g. " + ", ".join(
            f"{k} {wanted.get(k)} vs {have.get(k)}" for k in diff[:3]))
    raise ConversionError("the checkpoint's clip_model.* fits no open_clip PE-Core model:\n  " + "\n  ".join(misfits))


def _adapter_start(adapters: dict[int, dict[str, torch.Tensor]]) -> int | None:
    """The first block whose adapter LayerNorm left its init (ones, zeros), or None if none did."""
    for i in sorted(adapters):
        w, b = adapters[i].get("ln.weight"), adapters[i].get("ln.bias")
        if w is None or b is None:
            continue  # an incomplete block: listed as such by the caller
        if w.is_meta:  # shapes only (a dry run on the meta device): no values to read
            return None
        if not (torch.all(w == 1) and torch.all(b == 0)):
            return i
    return None


def _non_string_keys(checkpoint: dict) -> list:
    """The keys that are not strings in the dict ``unwrap_state_dict`` takes the tensors from (its
    ``WRAPPERS`` entry, else the checkpoint itself): a state dict names its tensors, and a key of
    another type (a hand-made or damaged file) names none."""
    state = next((checkpoint[key] for key in WRAPPERS if isinstance(checkpoint.get(key), dict)), checkpoint)
    return [key for key in state if not isinstance(key, str)]


def read_official(
    checkpoint: str | os.PathLike | dict,
    *,
    adapter_start_layer: int | None = None,
    backbone: str | None = None,
) -> OfficialCheckpoint:
    """Read an official checkpoint (a path or the loaded object) and rename its tensors; raises
    ``ConversionError`` listing every key or shape that does not fit."""
    if not isinstance(checkpoint, dict):
        path = Path(checkpoint)
        if not path.is_file():
            raise ConversionError(f"checkpoint not found: {path}", code="not_found")
        try:
            checkpoint = load_torch_file(path)
        except Exception as exc:  # pickle, zip and torch errors alike
            raise ConversionError(f"{path} is not a readable torch checkpoint: {exc}") from exc
    if isinstance(checkpoint, dict) and (unnamed := _non_string_keys(checkpoint)):
        raise ConversionError(f"not an official Q-CLIP checkpoint: its state dict has keys that are not tensor "
                              f"names (not strings): {unnamed[:6]!r}")
    try:
        state = unwrap_state_dict(checkpoint)
    except ValueError as exc:
        raise ConversionError(f"not an official Q-CLIP checkpoint: {exc}") from exc
    results = checkpoint.get("validation_results") if isinstance(checkpoint, dict) else None

    backbone_meta = {k.removeprefix(BACKBONE_PREFIX): v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    if not backbone_meta:
        raise ConversionError("the checkpoint has no clip_model.* tensors: not an official Q-CLIP checkpoint "
                              f"(its first keys: {sorted(state)[:6]})")
    backbone_state, unknown_backbone = meta_pe_to_open_clip(backbone_meta)
    problems = [f"clip_model.{k}: unknown in Meta's PE layout" for k in unknown_backbone]
    name = match_backbone(backbone_state, backbone)
    notes = [f"backbone: clip_model.* ({len(backbone_meta)} tensors, Meta's PE layout) → open_clip {name}"]

    adapters: dict[int, dict[str, torch.Tensor]] = {}
    trained: dict[str, torch.Tensor] = {}
    derived: dict[str, torch.Tensor] = {}
    mapped: list[tuple[str, str, tuple[int, ...]]] = []
    aliases = 0
    for key, value in state.items():
        if key.startswith(BACKBONE_PREFIX):
            continue
        alias = next((a for a in ALIASES if key.startswith(a)), None)
        m = re.fullmatch(r"encoder_adapters\.(\d+)\.(down_proj|up_proj|ln)\.(weight|bias)", key)
        linear = re.fullmatch(r"(shared_core\.[02]|proj_adapter\.[013])\.(weight|bias)", key)
        if alias is not None:
            source = BACKBONE_PREFIX + ALIASES[alias] + key[len(alias):]
            same = source in state and (state[source].shape == value.shape if value.is_meta else torch.equal(state[source], value))
            if not same:
                problems.append(f"{key}: should repeat {source}, but differs or is missing")
            aliases += 1
        elif m:
            adapters.setdefault(int(m.group(1)), {})[f"{m.group(2)}.{m.group(3)}"] = value
        elif linear:
            target = f"{LINEARS[linear.group(1)]}.{linear.group(2)}"
            trained[target] = value
            mapped.append((key, target, tuple(value.shape)))
        elif key in SCALARS:
            if value.numel() != 1:  # one number in the official model; listed with the other misfits
                problems.append(f"{key}: {tuple(value.shape)}, expected one number")
                continue
            trained[SCALARS[key]] = value.reshape(())
            mapped.append((key, SCALARS[key], tuple(value.shape)))
        elif key == "context_tokens":
            trained["prompts.context"] = value.reshape(value.shape[-2:]) if value.ndim == 3 and value.shape[0] == 1 else value
            mapped.append((key, "prompts.context", tuple(value.shape)))
        elif key == "score_proj":
            trained["level_weights"] = value.reshape(-1)
            mapped.append((key, "level_weights", tuple(value.shape)))
        elif key in DERIVED:
            derived[DERIVED[key]] = value
        else:
            problems.append(f"{key}: not a tensor of the official Q-CLIP model")
    if aliases:
        notes.append(f"vit.*, text_encoder.*: {aliases} aliases of clip_model.visual / .transformer, equal")

    visual_blocks = sum(1 for k in backbone_state if re.fullmatch(r"visual\.trunk\.blocks\.\d+\.norm1\.weight", k))
    text_blocks = sum(1 for k in backbone_state if re.fullmatch(r"text\.transformer\.resblocks\.\d+\.ln_1\.weight", k))
    if visual_blocks != text_blocks:
        problems.append(f"the towers have {visual_blocks} and {text_blocks} blocks; the official model needs equal depths")
    depth = visual_blocks
    if sorted(adapters) != list(range(depth)) or any(len(a) != 6 for a in adapters.values()):
        problems.append(f"encoder_adapters: expected blocks 0…{depth - 1} with down_proj, up_proj, ln (weight, bias); "
                        f"found blocks {sorted(adapters)}")
    inferred = _adapter_start(adapters)
    if adapter_start_layer is None:
        if inferred is None:
            problems.append("every encoder adapter LayerNorm is at its init (an untrained checkpoint?): "
                            "say where adapters start with --adapter-start-layer")
            raise ConversionError("the checkpoint does not fit the official Q-CLIP model:\n  " + "\n  ".join(problems))
        adapter_start_layer = inferred
        notes.append(f"adapter_start_layer: {inferred} (the first block whose adapter LayerNorm was trained)")
    elif inferred is not None and inferred != adapter_start_layer:
        notes.append(f"adapter_start_layer {adapter_start_layer} as asked, although block {inferred}'s adapter "
                     "LayerNorm is the first that was trained")
    if not 0 <= adapter_start_layer < depth:
        problems.append(f"adapter_start_layer {adapter_start_layer} outside 0…{depth - 1}")
    for i in sorted(adapters):
        if i < adapter_start_layer:
            continue
        for part, value in adapters[i].items():
            name_, kind = part.split(".")
            target = f"escma.layers.{i - adapter_start_layer}.{ADAPTER_PARTS[name_]}.{kind}"
            trained[target] = value
            mapped.append((f"encoder_adapters.{i}.{part}", target, tuple(value.shape)))
    unused = [f"encoder_adapters.{i}.*" for i in sorted(adapters) if i < adapter_start_layer]
    if problems:
        raise ConversionError("the checkpoint does not fit the official Q-CLIP model:\n  " + "\n  ".join(problems))
    shared = trained.get("escma.core.0.weight")
    context = trained.get("prompts.context")
    if shared is None or context is None:
        raise ConversionError("the checkpoint lacks shared_core.0 or context_tokens")
    return OfficialCheckpoint(
        backbone_state=backbone_state, trained=trained, derived=derived, backbone=name,
        adapter_start_layer=adapter_start_layer, depth=depth, shared_dim=int(shared.shape[0]),
        context_tokens=int(context.shape[0]), mapped=mapped, unused=unused, notes=notes,
        validation_results=results if isinstance(results, dict) else None,
    )


def official_name(name: str, adapter_start_layer: int) -> str:
    """The official checkpoint's key of this engine's tensor ``name`` (the table above, read backwards)."""
    adapter = re.fullmatch(r"escma\.layers\.(\d+)\.(down|up|ln)\.(weight|bias)", name)
    if adapter:
        part = {ours: theirs for theirs, ours in ADAPTER_PARTS.items()}[adapter.group(2)]
        return f"encoder_adapters.{int(adapter.group(1)) + adapter_start_layer}.{part}.{adapter.group(3)}"
    module, _, leaf = name.rpartition(".")
    linears = {ours: theirs for theirs, ours in LINEARS.items()}
    if module in linears:
        return f"{linears[module]}.{leaf}"
    singles = {ours: theirs for theirs, ours in (*SCALARS.items(), *DERIVED.items())}
    return singles.get(name) or {"prompts.context": "context_tokens", "level_weights": "score_proj"}.get(name, name)


def official_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the official checkpoint holds for this engine's tensor ``name`` of ``shape``."""
    return {"level_weights": (*shape, 1), "prompts.context": (1, *shape)}.get(name, shape)


def load_official(ckpt: OfficialCheckpoint, backbone_weights: str | None, **overrides) -> QCLIP:
    """The engine's model holding an official checkpoint's tensors, on the backbone from
    ``backbone_weights`` (a file with the checkpoint's own backbone weights, in either layout)."""
    model = QCLIP(ckpt.config(backbone_weights, **overrides))
    expected = dict(model.named_parameters())
    source = {dst: (src, shape) for src, dst, shape in ckpt.mapped}  # messages name the checkpoint's keys
    problems = []
    for name, value in ckpt.trained.items():
        key, shape = source.get(name, (name, tuple(value.shape)))
        if name not in expected or not expected[name].requires_grad:
            problems.append(f"{key}: no such trained tensor in the model")
        elif value.shape != expected[name].shape:
            problems.append(f"{key}: {shape}, expected {official_shape(name, tuple(expected[name].shape))}")
    missing = sorted(set(model.trainable_state_dict()) - set(ckpt.trained))
    problems += [f"{official_name(name, ckpt.adapter_start_layer)}: not in the checkpoint" for name in missing]
    buffers = dict(model.named_buffers())
    for name, value in ckpt.derived.items():
        mine = buffers[name]
        if value.shape != mine.shape or not torch.allclose(value.to(mine.dtype), mine, atol=1e-6):
            problems.append(f"{official_name(name, ckpt.adapter_start_layer)}: the checkpoint's prompt embeddings "
                            "differ from the quality prompts here (other prompt texts or tokenizer)")
    if problems:
        raise ConversionError("the checkpoint does not fit the model:\n  " + "\n  ".join(problems))
    with torch.no_grad():
        for name, value in ckpt.trained.items():
            expected[name].copy_(value)
    return model.eval()


def convert_official(
    checkpoint: str | os.PathLike | dict,
    out: str | os.PathLike,
    *,
    adapter_start_layer: int | None = None,
    backbone: str | None = None,
    backbone_weights: str | None = None,
    **overrides,
) -> tuple[Path, OfficialCheckpoint]:
    """Convert an official checkpoint into the artifact directory ``out``.

    The backbone goes into the artifact as ``backbone.safetensors`` (open_clip layout; the artifact
    names it relative to itself) unless ``backbone_weights`` names a file holding the same weights
    (Meta's ``PE-Core-*.pt`` or open_clip's safetensors): then the artifact refers to that file, after
    checking that every tensor equals the checkpoint's ``clip_model.*``.
    """
    from safetensors.torch import save_file

    ckpt = read_official(checkpoint, adapter_start_layer=adapter_start_layer, backbone=backbone)
    out = Path(out)
    with staged_directory(out) as stage:  # a refusal below leaves nothing behind
        if backbone_weights is None:
            weights_path = stage / BACKBONE_FILE
            backbone_state = {k: v.contiguous() for k, v in ckpt.backbone_state.items()}
            write_artifact_file(weights_path, lambda p: save_file(backbone_state, str(p)))
            model = load_official(ckpt, str(weights_path), **overrides)
            ckpt.notes.append(f"backbone weights written to {out / BACKBONE_FILE}")
        else:
            model = load_official(ckpt, backbone_weights, **overrides)
            loaded = model.backbone.state_dict()
            if any(not torch.equal(loaded[k], v.to(loaded[k].dtype)) for k, v in ckpt.backbone_state.items()):
                raise ConversionError(f"{backbone_weights} holds other backbone weights than the checkpoint's clip_model.*")
            ckpt.notes.append(f"backbone weights: {backbone_weights} (every tensor equal to the checkpoint's clip_model.*)")
        save_artifact(model, stage)
    return out, ckpt
