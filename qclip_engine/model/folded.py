"""The folded model: a trained Q-CLIP rewritten into the deployable form every backend runs.

Each fold is a pure function returning new tensors/modules (the model is left untouched)
and is exact in real arithmetic; the equality tests hold them to fp32 round-off:

* ``fold_scale_into_layernorm``: ``α · LN(z)`` is ``LN(z)`` with ``γ' = αγ, β' = αβ``;
* ``merge_linears``: ``second(first(x))`` with no nonlinearity between is one Linear;
* ``scale_linear``: ``α · lin(x)`` is ``lin(x)`` with ``W' = αW, b' = αb``;
* ``text_constants``: the text tower run once — the five L2-normalised level-prompt
  features ``T [5, D]``; no text weight reaches the exported graph.

:class:`FoldedQCLIP` puts them together: uint8 frames ``[B, F, H, W, 3]`` in,
``(level_sims [B, 5], score [B])`` out, with cast, scaling, normalisation and
NHWC→NCHW inside the graph. It shares the frozen visual backbone with the model it was
folded from (no copy) and holds its own folded adapters.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .qclip import QCLIP, level_score, run_tower
from .scma import ESCMA, PSCMA


# -- the folds -------------------------------------------------------------------------------
def _scaled_copy(module: nn.Module, scale: torch.Tensor | float):
    """A copy of an affine module (weight, bias) whose output is ``scale`` times the original's."""
    out = copy.deepcopy(module)
    with torch.no_grad():
        out.weight.mul_(scale)
        if out.bias is not None:
            out.bias.mul_(scale)
    return out


def fold_scale_into_layernorm(ln: nn.LayerNorm, scale: torch.Tensor | float) -> nn.LayerNorm:
    """A LayerNorm computing ``scale · ln(x)``: γ' = scale·γ, β' = scale·β."""
    return _scaled_copy(ln, scale)


def merge_linears(first: nn.Linear, second: nn.Linear) -> nn.Linear:
    """One Linear computing ``second(first(x))``: ``W = W₂W₁``, ``b = W₂b₁ + b₂``."""
    w1, w2 = first.weight.detach(), second.weight.detach()
    merged = nn.Linear(first.in_features, second.out_features, bias=True, device=w1.device, dtype=w1.dtype)
    with torch.no_grad():
        # float64 products so the merge adds no round-off of its own beyond the final cast
        merged.weight.copy_((w2.double() @ w1.double()).to(w1.dtype))
        b = second.bias.detach().double() if second.bias is not None else torch.zeros(second.out_features, dtype=torch.float64)
        if first.bias is not None:
            b = b + w2.double() @ first.bias.detach().double()
        merged.bias.copy_(b.to(w1.dtype))
    return merged


def scale_linear(linear: nn.Linear, scale: torch.Tensor | float) -> nn.Linear:
    """A Linear computing ``scale · linear(x)``: W' = scale·W, b' = scale·b."""
    return _scaled_copy(linear, scale)


@torch.no_grad()
def text_constants(model: QCLIP) -> torch.Tensor:
    """The five L2-normalised level-prompt features ``T [5, D]`` (the text tower, run once)."""
    return F.normalize(model.forward_text().float(), dim=-1)


# -- folded modules -------------------------------------------------------------------------------
class FoldedESCMALayer(nn.Module):
    """``x + LN'(Up(Core(Down(x))))`` with α inside ``LN'``."""

    def __init__(self, down: nn.Linear, core: nn.Module, up: nn.Linear, ln: nn.LayerNorm):
        super().__init__()
        self.down, self.core, self.up, self.ln = down, core, up, ln

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ln(self.up(self.core(self.down(x))))


def fold_escma(escma: ESCMA, modality: str = "visual") -> nn.ModuleList:
    """The K adapted layers of one tower, α folded into each output LayerNorm."""
    alpha = escma.alpha(modality).detach()
    core = copy.deepcopy(escma.core)  # one shared module, as in the model
    layers = []
    for index in range(len(escma.layers if escma.shared_across_modalities else escma.visual_layers)):
        layer = escma.layer(modality, index)
        layers.append(
            FoldedESCMALayer(
                copy.deepcopy(layer.down), core, copy.deepcopy(layer.up), fold_scale_into_layernorm(layer.ln, alpha)
            )
        )
    return nn.ModuleList(layers)


class FoldedPSCMA(nn.Module):
    """``A'(p) = Up'(GELU(Mid∘Down (p)))`` with α in ``Up'``; the caller adds the frozen projection."""

    def __init__(self, first: nn.Linear, up: nn.Linear):
        super().__init__()
        self.first, self.act, self.up = first, nn.GELU(), up

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.first(pooled)))


def fold_pscma(pscma: PSCMA, modality: str = "visual") -> FoldedPSCMA:
    return FoldedPSCMA(
        merge_linears(pscma.first_linear(modality), pscma.mid),
        scale_linear(pscma.up, pscma.alpha(modality).detach()),
    )


class FoldedQCLIP(nn.Module):
    """The deployable Q-CLIP: visual tower + folded adapters + constant head.

    ``forward(frames)``: uint8 RGB ``[B, F, H, W, 3]`` at model size →
    ``(level_sims [B, 5] float32, score [B] float32)``.
    """

    fixed_frames = False  # any frame count: the frame features are averaged

    def __init__(self, model: QCLIP):
        super().__init__()
        model = model.eval()
        self.zero_shot = bool(model.zero_shot)
        self.tower = model.visual_tower  # plain object: embed/blocks/pool/project of the modules below
        self.visual = model.visual_tower.visual  # the frozen visual backbone, shared with `model`
        self.image_size = tuple(model.image_size)
        self.num_frames = model.config.num_frames
        self.levels = model.levels
        self.first_adapted = model.adapted_blocks("visual").start
        self.adapters = None if self.zero_shot else fold_escma(model.escma, "visual")
        self.pscma = None if self.zero_shot else fold_pscma(model.pscma, "visual")
        mean = torch.tensor(model.preprocess["mean"], dtype=torch.float32)
        std = torch.tensor(model.preprocess["std"], dtype=torch.float32)
        # (x/255 − mean)/std = x · scale + shift, per channel, broadcast over [..., H, W, 3]
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std))
        self.register_buffer("pixel_shift", -mean / std)
        self.register_buffer("text", text_constants(model))  # [5, D]
        if self.zero_shot:
            weights = model.zero_shot_level_values.float()
        else:
            weights = model.level_weights.detach().float()
        self.register_buffer("level_weights", weights.clone())
        self.compute_dtype = torch.float32  # of the visual tower; the input scaling and the head stay FP32
        for p in self.parameters():
            p.requires_grad_(False)

    def frame_features(self, images: torch.Tensor) -> torch.Tensor:
        tower = self.tower
        x, block_kwargs = tower.embed(images)
        adapt = None if self.adapters is None else (lambda j, h: self.adapters[j](h))
        x = run_tower(tower, x, block_kwargs, adapt, self.first_adapted)
        pooled = tower.pool(x)
        projected = tower.project(pooled)
        if self.pscma is None:
            return projected
        return projected + self.pscma(pooled)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, f, h, w, c = frames.shape
        x = frames.to(self.pixel_scale.dtype) * self.pixel_scale + self.pixel_shift
        x = x.reshape(b * f, h, w, c).permute(0, 3, 1, 2).to(self.compute_dtype)
        features = self.frame_features(x).float()
        video = F.normalize(features.reshape(b, f, -1).mean(dim=1), dim=-1)
        sims = video @ self.text.T
        return sims, level_score(sims, self.level_weights, self.zero_shot)


class FP32LayerNorm(nn.Module):
    """A LayerNorm evaluated in FP32 inside a reduced-precision tower (its statistics need the range)."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.ln = ln.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.float()).to(x.dtype)


def at_precision(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` itself at FP32; else a frozen copy in ``dtype`` whose LayerNorms run in FP32 (the
    deployable modules' reduced precision: the FP32 graph shares the model's tensors as they are)."""
    if dtype == torch.float32:
        return module
    copy_ = copy.deepcopy(module).to(dtype)
    keep_layernorms_fp32(copy_)
    return copy_.requires_grad_(False)


def without_module(model: nn.Module, name: str) -> nn.Module:
    """A view of ``model`` that shares every tensor and module but its child ``name`` (set to None),
    e.g. a frozen text tower that a deployable never runs because its features are buffers: moving
    or copying the view leaves that child out."""
    view = copy.copy(model)
    view._modules = {key: module for key, module in model._modules.items() if key != name}
    setattr(view, name, None)
    return view


def keep_layernorms_fp32(module: nn.Module) -> None:
    """Every LayerNorm under ``module`` evaluated in FP32 (in place)."""
    for name, child in module.named_children():
        if isinstance(child, nn.LayerNorm):
            setattr(module, name, FP32LayerNorm(child))
        elif not isinstance(child, FP32LayerNorm):
            keep_layernorms_fp32(child)


def reduced_precision(folded: FoldedQCLIP, dtype: torch.dtype = torch.float16) -> FoldedQCLIP:
    """A copy whose visual tower and adapters run in ``dtype`` (FP16 for GPU engines).

    LayerNorms run in FP32, and so do the input scaling and the head (frame mean, L2
    normalisation, similarities, score): the parts where FP16 loses range or precision,
    and which cost little. ``folded`` itself is left as it is.
    """
    out = copy.deepcopy(folded)
    head = {name: getattr(out, name) for name in ("pixel_scale", "pixel_shift", "text", "level_weights")}
    trunk = [out.visual] + [m for m in (out.adapters, out.pscma) if m is not None]
    for module in trunk:
        module.to(dtype)
        keep_layernorms_fp32(module)
    for name, tensor in head.items():
        setattr(out, name, tensor.float())
    out.compute_dtype = dtype
    return out


def fold(model: QCLIP) -> FoldedQCLIP:
    """The folded, export-ready form of ``model`` (the model itself is not modified)."""
    return FoldedQCLIP(model)


def deployable(model: QCLIP, dtype: torch.dtype = torch.float32) -> FoldedQCLIP:
    """What backends run and exports write for ``model``: folded, at ``dtype`` (FP32: as folded;
    otherwise :func:`reduced_precision`)."""
    folded = fold(model)
    return folded if dtype == torch.float32 else reduced_precision(folded, dtype)
