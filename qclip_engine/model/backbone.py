"""Frozen open_clip backbones and step-by-step access to their two towers.

Q-CLIP inserts adapters between transformer blocks and after the pooled feature, so it
needs each tower as a sequence of stages rather than one ``encode_*`` call. Two tower
families are supported:

* PE-Core (open_clip ``TimmModel`` wrapping a timm ``Eva`` with RoPE and attention
  pooling), Meta's Perception Encoder — the default backbone;
* classic CLIP ViTs (open_clip ``VisionTransformer``), e.g. ``ViT-B-32``.

Each tower object here is a thin view over the open_clip modules (it owns no
parameters), and running its stages in order reproduces open_clip's ``encode_image`` /
``encode_text`` exactly; the tests hold it to that.
"""

from __future__ import annotations

import contextlib
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import open_clip
import torch
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, text_global_pool
from torch import nn

from ..errors import BackboneError, WeightsUnavailableError
from .pe_weights import is_meta_pe_layout, load_meta_pe, load_torch_file, unwrap_state_dict

WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")


class VisualTower(ABC):
    """Stages of an image tower: ``embed`` → ``blocks[i]`` → ``pool`` → ``project``."""

    width: int
    blocks: nn.ModuleList

    @abstractmethod
    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Patch/position embedding; returns tokens and the keyword arguments every block takes."""

    def run_block(self, index: int, x: torch.Tensor, block_kwargs: dict[str, Any]) -> torch.Tensor:
        return self.blocks[index](x, **block_kwargs)

    @abstractmethod
    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and pooling: the feature P-SCMA sees, before the projection."""

    @abstractmethod
    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """The tower's projection into the joint embedding space."""


def official_rope_order(rope: torch.Tensor) -> torch.Tensor:
    """The patches' rotations ``[P, 2D]`` (timm's sin‖cos rows) in the order the official Q-CLIP code
    applies them to the *whole* sequence ``[class, patch 0 … P-1]``: token ``s`` gets row ``s``, so
    the class token takes patch 0's rotation, patch ``p`` takes patch ``p+1``'s and the last patch
    none (sin 0, cos 1). That code vendors an early copy of Meta's PE RoPE, which appends the class
    token's zero rotation after the patches although the class token comes first; Meta fixed it
    later, and timm (``rope="pe"``) leaves the class token unrotated and gives each patch its own.
    Adapters trained by the official code saw this order, so their checkpoints need it."""
    half = rope.shape[-1] // 2
    identity = torch.cat([rope.new_zeros(half), rope.new_ones(half)]).unsqueeze(0)
    return torch.cat([rope, identity], dim=0)


class PEVisualTower(VisualTower):
    """open_clip ``TimmModel`` around a timm ``Eva`` (PE-Core): RoPE blocks, ``map`` pooling.

    ``rope="qclip_official"`` rotates the class token too, in :func:`official_rope_order`; the
    blocks' attention then treats no token as an unrotated prefix.
    """

    def __init__(self, visual: nn.Module, rope: str = "pe"):
        trunk = visual.trunk
        if type(trunk).__name__ != "Eva":
            raise BackboneError(
                f"timm vision trunk {type(trunk).__name__!r} is not supported; "
                "supported are PE-Core (timm Eva) and classic open_clip ViTs"
            )
        if getattr(trunk, "rope_mixed", False):
            raise BackboneError("timm Eva with per-block (mixed) RoPE is not supported")
        self.visual = visual
        self.trunk = trunk
        self.blocks = trunk.blocks
        self.width = trunk.embed_dim
        self.rope = rope
        if rope == "qclip_official":
            if trunk.rope is None or trunk.num_prefix_tokens != 1:
                raise BackboneError("rope='qclip_official' needs a PE tower with RoPE and one class token")
            for block in trunk.blocks:  # this model's own copy of the backbone: no one else runs it
                block.attn.num_prefix_tokens = 0

    def embed(self, images):
        x = self.trunk.patch_embed(images)
        x, rope = self.trunk._pos_embed(x)
        if self.rope == "qclip_official":
            rope = official_rope_order(rope)
        x = self.trunk.norm_pre(x)
        return x, {"rope": rope}

    def pool(self, x):
        x = self.trunk.norm(x)
        return self.trunk.forward_head(x, pre_logits=True)

    def project(self, pooled):
        return self.visual.head(self.trunk.head(pooled))


class ClassicVisualTower(VisualTower):
    """open_clip ``VisionTransformer`` (OpenAI-style CLIP ViT)."""

    def __init__(self, visual: nn.Module):
        self.visual = visual
        self.blocks = visual.transformer.resblocks
        self.width = visual.transformer.width
        self.batch_first = visual.transformer.batch_first

    def embed(self, images):
        x = self.visual._embeds(images)
        if not self.batch_first:
            x = x.transpose(0, 1)
        return x, {}

    def pool(self, x):
        if not self.batch_first:
            x = x.transpose(0, 1)
        pooled, _ = self.visual._pool(x)
        return pooled

    def project(self, pooled):
        proj = self.visual.proj
        return pooled if proj is None else pooled @ proj


class TextTower:
    """Stages of an open_clip text tower, fed with token *embeddings* (so prompts can be learned).

    ``source`` is the open_clip ``CLIP`` (text modules live on the model) or a
    ``TextTransformer`` (``CustomTextCLIP.text``); both name the modules alike.
    """

    def __init__(self, source: nn.Module):
        if getattr(source, "cls_emb", None) is not None:
            raise BackboneError("text towers with an appended class token (CoCa) are not supported")
        self.source = source
        self.token_embedding = source.token_embedding
        self.blocks = source.transformer.resblocks
        self.width = source.transformer.width
        self.batch_first = source.transformer.batch_first
        self.pool_type = getattr(source, "text_pool_type", None) or source.pool_type
        self.eos_id = getattr(source, "text_eos_id", None) or getattr(source, "eos_id", None)
        self.use_pad_mask = bool(getattr(source, "use_pad_mask", False))

    def embed(self, token_embeddings: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        seq_len = tokens.shape[1]
        x = token_embeddings + self.source.positional_embedding[:seq_len].to(token_embeddings.dtype)
        attn_mask = self.source.attn_mask
        if attn_mask is not None:
            attn_mask = attn_mask[:seq_len, :seq_len]
        if self.use_pad_mask:
            pad_mask = self.source._build_additive_mask(tokens, seq_len, x.dtype)
            attn_mask = pad_mask if attn_mask is None else attn_mask.unsqueeze(0) + pad_mask
        if not self.batch_first:
            x = x.transpose(0, 1)
        return x, {"attn_mask": attn_mask}

    def run_block(self, index: int, x: torch.Tensor, block_kwargs: dict[str, Any]) -> torch.Tensor:
        return self.blocks[index](x, **block_kwargs)

    def pool(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = self.source.ln_final(x)
        return text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        proj = self.source.text_projection
        if proj is None:
            return pooled
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj


@dataclass
class Backbone:
    """A frozen open_clip model with its towers, tokenizer and preprocessing."""

    clip: nn.Module
    visual: VisualTower
    text: TextTower
    tokenizer: Callable[[list[str]], torch.Tensor]
    embed_dim: int
    image_size: tuple[int, int]
    preprocess: dict[str, Any]


def _visual_tower(visual: nn.Module, rope: str) -> VisualTower:
    kind = type(visual).__name__
    if kind == "TimmModel":
        return PEVisualTower(visual, rope)
    if kind == "VisionTransformer":
        if rope != "pe":
            raise BackboneError(f"rope={rope!r} applies to PE-Core towers only; {kind} has no RoPE")
        return ClassicVisualTower(visual)
    raise BackboneError(
        f"vision tower {kind!r} is not supported; supported are PE-Core (timm Eva) and classic open_clip ViTs"
    )


def _text_source(clip: nn.Module) -> nn.Module:
    return clip.text if hasattr(clip, "text") else clip


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith(WEIGHT_FILE_SUFFIXES) or value.startswith(("~", "."))


def _offline_hint(backbone: str, pretrained: str) -> str:
    return (
        f"Could not obtain pretrained weights {pretrained!r} for backbone {backbone!r} "
        "(the Hugging Face hub is unreachable or HF_HUB_OFFLINE=1 is set, and they are not in the local cache). "
        "Pass a local weights file instead: QCLIPConfig(backbone=..., pretrained='/path/to/open_clip_model.safetensors') "
        "— for PE-Core that file is 'open_clip_model.safetensors' of the hub repository 'timm/<backbone>', "
        "downloaded once on a connected machine."
    )


def preprocess_config(backbone: str, pretrained: str | None, clip: nn.Module) -> dict[str, Any]:
    """Mean/std/interpolation/resize mode the backbone's weights expect.

    Random-init and local-file backbones take the configuration of the model's first
    published tag (PE: squash, bilinear, mean = std = 0.5), so a model trained on one
    and served on the other sees identically prepared frames.
    """
    cfg = dict(open_clip.get_model_preprocess_cfg(clip))
    tag = pretrained
    if tag is None or _looks_like_path(tag) or tag.startswith("hf-hub:"):
        tags = open_clip.list_pretrained_tags_by_model(backbone)
        tag = tags[0] if tags else None
    if tag is not None:
        tag_cfg = open_clip.get_pretrained_cfg(backbone, tag) or {}
        for key in ("mean", "std", "interpolation", "resize_mode"):
            if key in tag_cfg:
                cfg[key] = tag_cfg[key]
    return {
        "image_size": [int(s) for s in cfg["size"]],
        "mean": [float(m) for m in cfg["mean"]],
        "std": [float(s) for s in cfg["std"]],
        "interpolation": cfg.get("interpolation", "bilinear"),
        "resize_mode": cfg.get("resize_mode", "squash"),
    }


def _has_timm_tower(backbone: str) -> bool:
    """Whether open_clip builds ``backbone``'s visual tower from timm (PE-Core does; OpenAI-layout ViTs do not)."""
    config = open_clip.get_model_config(backbone) or {}
    return bool(config.get("vision_cfg", {}).get("timm_model_name"))


def _meta_pe_weights(path: str) -> dict[str, torch.Tensor] | None:
    """The tensors of a weights file in Meta's PE layout (``PE-Core-*.pt``), or None for any other
    file (open_clip loads those itself)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(path, framework="pt") as f:
                keys = set(f.keys())
            return load_file(path) if is_meta_pe_layout(dict.fromkeys(keys)) else None
        if not path.endswith((".pt", ".pth", ".bin")):
            return None
        tensors = unwrap_state_dict(load_torch_file(path))
    except Exception as exc:  # torch and safetensors raise their own types for unreadable files
        raise WeightsUnavailableError(f"could not load backbone weights from {path}: {exc}") from exc
    return tensors if is_meta_pe_layout(tensors) else None


RANDOM_INIT_WARNING = "No pretrained weights loaded for model"  # open_clip's factory.create_model, pretrained=None


def _not_random_init_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(RANDOM_INIT_WARNING)


@contextlib.contextmanager
def weights_loaded_after() -> Iterator[None]:
    """Builds in this block get their weights right after (a Meta ``.pt``, a converted checkpoint, an
    artifact storing every tensor): open_clip's "… Model initialized randomly." warning, which it logs
    through the root logger for every ``pretrained=None`` build, would be false there and is dropped.
    A model that stays random keeps it (``create_clip(backbone, None)``)."""
    root = logging.getLogger()
    root.addFilter(_not_random_init_warning)
    try:
        yield
    finally:
        root.removeFilter(_not_random_init_warning)


def create_clip(
    backbone: str,
    pretrained: str | None,
    *,
    image_size: int | None = None,
    init_seed: int = 0,
) -> nn.Module:
    """Build the open_clip model: random init (seeded), a local weights file (open_clip's layout, or
    Meta's PE layout converted on load: ``pe_weights``), or a hub name/tag.

    Random init is seeded so that an artifact trained on a random backbone reloads the
    very same backbone. The model is built on the current default device (``meta``
    builds are instant, for counting parameters).
    """
    device = torch.get_default_device()
    kwargs: dict[str, Any] = {"device": device}
    if image_size is not None:
        kwargs["force_image_size"] = image_size
    if pretrained is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            return open_clip.create_model(backbone, pretrained=None, **kwargs)
    if pretrained.startswith("hf-hub:"):
        model_name, weights = pretrained, None
    else:
        model_name, weights = backbone, pretrained
        if _looks_like_path(weights):
            path = Path(weights).expanduser()
            if not path.is_file():
                raise WeightsUnavailableError(f"backbone weights file not found: {path}", code="not_found")
            weights = str(path)
        elif not open_clip.get_pretrained_cfg(backbone, weights):
            tags = open_clip.list_pretrained_tags_by_model(backbone)
            raise WeightsUnavailableError(
                f"{weights!r} is neither a weights file nor a published tag of {backbone!r} (tags: {tags})"
            )
    # Meta's PE layout shares its top-level names with OpenAI's (visual.conv1, token_embedding): only a
    # backbone with a timm tower (open_clip's PE-Core) reads a file as Meta's; an OpenAI-layout ViT's
    # weights file (e.g. qclip-convert vificlip's) goes to open_clip's own loader.
    meta_pe = (_meta_pe_weights(weights) if weights is not None and Path(weights).is_file() and _has_timm_tower(backbone)
               else None)
    if meta_pe is not None:
        # as open_clip loads its own files: at the weights' native size, then resized (set_input_size);
        # the throw-away init leaves the global RNG as it was (training seeds stay meaningful)
        with torch.random.fork_rng(devices=[]), weights_loaded_after():
            clip = open_clip.create_model(backbone, pretrained=None, device=device)
        try:
            load_meta_pe(clip, meta_pe, weights)
        except ValueError as exc:
            raise WeightsUnavailableError(str(exc)) from exc
        if image_size is not None:
            clip.visual.set_input_size(image_size)
        return clip
    try:
        return open_clip.create_model(model_name, pretrained=weights, require_pretrained=True, **kwargs)
    except Exception as exc:  # open_clip, huggingface_hub and safetensors each raise their own types
        if weights is not None and Path(weights).is_file():
            raise WeightsUnavailableError(f"could not load backbone weights from {weights}: {exc}") from exc
        raise WeightsUnavailableError(_offline_hint(backbone, pretrained)) from exc


def create_openai_layout_clip(backbone: str, pretrained: str | None, *, image_size: int | None, init_seed: int,
                              quick_gelu: bool, needed_by: str) -> nn.Module:
    """:func:`create_clip`, checked to hold an OpenAI-layout ViT (open_clip ``VisionTransformer``,
    class-token pooling, a projection: what CLIPVQA and DVLTA-VQA build on; ``BackboneError``
    naming ``needed_by`` otherwise), with QuickGELU in every block when ``quick_gelu`` (the
    activation the OpenAI weights were trained with; open_clip's ``ViT-B-16`` builds GELU)."""
    if backbone not in open_clip.list_models():
        raise BackboneError(f"unknown open_clip model {backbone!r}")
    clip = create_clip(backbone, pretrained, image_size=image_size, init_seed=init_seed)
    visual = clip.visual
    kind = type(visual).__name__
    ok = (
        kind == "VisionTransformer"
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", "tok") == "tok"
        and visual.proj is not None
        and all(isinstance(b, ResidualAttentionBlock) for b in visual.transformer.resblocks)
    )
    if not ok:
        raise BackboneError(f"{needed_by} needs an OpenAI-layout open_clip ViT (class-token pooling and a projection); "
                            f"{backbone!r} has a {kind}")
    if quick_gelu:
        for module in clip.modules():
            if isinstance(module, ResidualAttentionBlock) and isinstance(getattr(module.mlp, "gelu", None), nn.GELU):
                module.mlp.gelu = QuickGELU()
    return clip


def load_backbone(
    backbone: str,
    pretrained: str | None,
    *,
    image_size: int | None = None,
    init_seed: int = 0,
    rope: str = "pe",
) -> Backbone:
    """Build, freeze and wrap an open_clip backbone (``rope``: see :class:`PEVisualTower`)."""
    if backbone not in open_clip.list_models():
        raise BackboneError(f"unknown open_clip model {backbone!r}")
    clip = create_clip(backbone, pretrained, image_size=image_size, init_seed=init_seed)
    clip.requires_grad_(False)
    clip.eval()
    visual = _visual_tower(clip.visual, rope)
    text = TextTower(_text_source(clip))
    tokenizer = open_clip.get_tokenizer(backbone)
    prep = preprocess_config(backbone, pretrained, clip)
    embed_dim = int(open_clip.get_model_config(backbone)["embed_dim"])
    return Backbone(
        clip=clip,
        visual=visual,
        text=text,
        tokenizer=tokenizer,
        embed_dim=embed_dim,
        image_size=tuple(prep["image_size"]),
        preprocess=prep,
    )
