"""Meta's Perception Encoder weight files (``PE-Core-*.pt``) in open_clip's layout.

Meta's release (and the official Q-CLIP code, which loads it) names a PE CLIP model its own way:
the vision tower as ``visual.{conv1, class_embedding, positional_embedding, ln_pre,
transformer.resblocks.i.{ln_1, attn.in_proj_*, attn.out_proj, ls_1.gamma, ln_2, mlp.c_fc, mlp.c_proj,
ls_2.gamma}, ln_post, attn_pool.*, proj}`` and the text tower at the top level
(``token_embedding``, ``positional_embedding``, ``transformer.resblocks.i.*``, ``ln_final``,
``text_projection``). open_clip's PE-Core models hold the vision tower as a timm ``Eva`` under
``visual.trunk`` and the text tower under ``text``. timm converts the vision tower
(``timm.models.eva.checkpoint_filter_fn``); the text tower only moves under ``text.``, whose module
names already match. The result loads strictly into open_clip's model, so its fingerprint
(``artifact.backbone_fingerprint``) is that of the same weights in open_clip's safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
OTHER_KEYS = ("logit_scale",)
WRAPPERS = ("state_dict", "weights", "model")


def load_torch_file(path: str | Path) -> Any:
    """``torch.load`` of a checkpoint, tensors only (``weights_only``), memory-mapped so that a 2 GB
    file is not read twice into memory; files in torch's legacy (pre-zip) format cannot be mapped."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=True)


def unwrap_state_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    """The tensors of a saved checkpoint: inside a ``state_dict``/``weights``/``model`` entry or
    at the top, keys without DataParallel's ``module.`` prefix."""
    if not isinstance(checkpoint, dict):
        raise ValueError(f"expected a dict of tensors, got {type(checkpoint).__name__}")
    for key in WRAPPERS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    tensors = {k.removeprefix("module."): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError("no tensors in the checkpoint")
    return tensors


def is_meta_pe_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    """Meta's PE CLIP layout: a ``visual.conv1`` patch embedding and a top-level text tower."""
    return "visual.conv1.weight" in state_dict and "token_embedding.weight" in state_dict


def meta_pe_to_open_clip(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the open_clip ``CustomTextCLIP`` state dict, the keys it did not know) of a Meta PE CLIP state dict."""
    from timm.models.eva import checkpoint_filter_fn

    visual = {k: v for k, v in state_dict.items() if k.startswith("visual.")}
    out = {f"visual.trunk.{k}": v for k, v in checkpoint_filter_fn(visual, None).items()}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("visual."):
            continue
        if key.startswith(TEXT_KEYS):
            out[f"text.{key}"] = value
        elif key in OTHER_KEYS:
            out[key] = value
        else:
            unknown.append(key)
    return out, unknown


def load_meta_pe(clip: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load a Meta-layout PE state dict into an open_clip PE-Core model, strictly.

    Raises ``ValueError`` listing the keys that do not fit (unknown, missing, misshapen)."""
    if not hasattr(clip, "text") or type(clip.visual).__name__ != "TimmModel":
        raise ValueError(f"{source} holds Meta PE weights; the backbone must be an open_clip PE-Core model")
    converted, unknown = meta_pe_to_open_clip(state_dict)
    expected = clip.state_dict()
    missing = sorted(set(expected) - set(converted))
    unknown += sorted(set(converted) - set(expected))
    misshapen = [
        f"{k} {tuple(v.shape)} (model: {tuple(expected[k].shape)})"
        for k, v in converted.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unknown or misshapen:
        raise ValueError(
            f"{source} does not fit this backbone: missing {missing[:8]}{' …' if len(missing) > 8 else ''}, "
            f"unknown {unknown[:8]}{' …' if len(unknown) > 8 else ''}, misshapen {misshapen[:8]}"
        )
    clip.load_state_dict(converted, strict=True)
