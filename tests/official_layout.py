"""State dicts in the layouts users of the official Q-CLIP code have, written here from those layouts
(Meta's PE modules: ``conv1``, ``class_embedding``, ``transformer.resblocks.i.{ln_1, attn.in_proj_*,
attn.out_proj, ls_1.gamma, ln_2, mlp.c_fc, mlp.c_proj, ls_2.gamma}``, ``attn_pool.{probe, attn,
layernorm, mlp}``, ``proj``; the text tower at the top level; the official ``QCLIP`` module's adapter
names) — independently of the engine's converters, which the tests hold to them."""

import re

import torch

from qclip_engine import QCLIP

VISUAL_BLOCK = {
    "norm1": "ln_1", "norm2": "ln_2", "attn.proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj", "gamma_1": "ls_1.gamma", "gamma_2": "ls_2.gamma",
}
ATTN_POOL = {"norm": "layernorm", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj", "proj": "attn.out_proj"}


def _visual_key(key: str, value: torch.Tensor, out: dict) -> None:
    """One open_clip ``visual.trunk.*`` tensor into Meta's ``visual.*`` names."""
    simple = {"cls_token": ("class_embedding", value.reshape(-1)), "pos_embed": ("positional_embedding", value[0]),
              "patch_embed.proj.weight": ("conv1.weight", value)}
    if key in simple:
        name, v = simple[key]
        out[f"visual.{name}"] = v
        return
    if key.startswith(("norm_pre.", "norm.")):
        out["visual." + key.replace("norm_pre.", "ln_pre.").replace("norm.", "ln_post.")] = value
        return
    if key == "head.weight":
        out["visual.proj"] = value.t()
        return
    if key == "head.bias":
        assert value.is_meta or not value.any(), "Meta's projection has no bias: zero it before converting"
        return
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if m:
        i, rest = m.groups()
        if rest.startswith("attn.qkv."):
            rest = "attn.in_proj_" + rest.removeprefix("attn.qkv.")
        else:
            for ours, theirs in VISUAL_BLOCK.items():
                if rest.startswith(ours + ".") or rest == ours:
                    rest = theirs + rest[len(ours):]
                    break
        out[f"visual.transformer.resblocks.{i}.{rest}"] = value
        return
    m = re.fullmatch(r"attn_pool\.(.+)", key)
    assert m, key
    rest = m.group(1)
    if rest == "latent":
        out["visual.attn_pool.probe"] = value
    elif rest.startswith(("q.", "kv.")):
        return  # joined below
    else:
        for ours, theirs in ATTN_POOL.items():
            if rest.startswith(ours + "."):
                rest = theirs + rest[len(ours):]
                break
        out[f"visual.attn_pool.{rest}"] = value


def meta_pe_layout(open_clip_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip PE-Core state dict in Meta's ``PE-Core-*.pt`` layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in open_clip_state.items():
        if key.startswith("visual.trunk."):
            _visual_key(key.removeprefix("visual.trunk."), value, out)
        elif key.startswith("text."):
            out[key.removeprefix("text.")] = value
        else:
            out[key] = value
    s = open_clip_state
    for part in ("weight", "bias"):
        out[f"visual.attn_pool.attn.in_proj_{part}"] = torch.cat(
            [s[f"visual.trunk.attn_pool.q.{part}"], s[f"visual.trunk.attn_pool.kv.{part}"]])
    return out


def official_checkpoint(model: QCLIP, adapter_start_layer: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The ``state_dict`` the official ``train.py`` saves for a model equal to ``model``: the frozen
    backbone under ``clip_model.`` (and again under its ``vit.``/``text_encoder.`` aliases), one
    encoder adapter per block (those before ``adapter_start_layer`` unused, at their init: LayerNorm
    ones and zeros, random Linears), and the official names of every other trained tensor."""
    assert model.escma.shared_across_modalities, "the official model shares adapters: equal tower widths"
    g = torch.Generator().manual_seed(seed)
    backbone = meta_pe_layout(model.backbone.state_dict())
    sd = {f"clip_model.{k}": v for k, v in backbone.items()}
    sd.update({f"vit.{k.removeprefix('visual.')}": v for k, v in backbone.items() if k.startswith("visual.")})
    sd.update({f"text_encoder.{k.removeprefix('transformer.')}": v for k, v in backbone.items()
               if k.startswith("transformer.")})
    depth = len(model.visual_tower.blocks)
    width, r = model.visual_tower.width, model.config.shared_dim
    for i in range(depth):
        j = i - adapter_start_layer
        if j >= 0:
            layer = model.escma.layers[j]
            parts = {"down_proj": layer.down, "up_proj": layer.up, "ln": layer.ln}
            for name, module in parts.items():
                sd[f"encoder_adapters.{i}.{name}.weight"] = module.weight.detach().clone()
                sd[f"encoder_adapters.{i}.{name}.bias"] = module.bias.detach().clone()
        else:
            sd[f"encoder_adapters.{i}.down_proj.weight"] = torch.randn(r, width, generator=g)
            sd[f"encoder_adapters.{i}.down_proj.bias"] = torch.randn(r, generator=g)
            sd[f"encoder_adapters.{i}.up_proj.weight"] = torch.randn(width, r, generator=g)
            sd[f"encoder_adapters.{i}.up_proj.bias"] = torch.randn(width, generator=g)
            sd[f"encoder_adapters.{i}.ln.weight"] = torch.ones(width)
            sd[f"encoder_adapters.{i}.ln.bias"] = torch.zeros(width)
    core, p = model.escma.core, model.pscma
    named = {
        "shared_core.0": core[0], "shared_core.2": core[2],
        "proj_adapter.0": p.down, "proj_adapter.1": p.mid, "proj_adapter.3": p.up,
    }
    for name, module in named.items():
        sd[f"{name}.weight"] = module.weight.detach().clone()
        sd[f"{name}.bias"] = module.bias.detach().clone()
    sd["image_adapter_weight"] = model.escma.alpha_visual.detach().clone()
    sd["text_adapter_weight"] = model.escma.alpha_text.detach().clone()
    sd["image_proj_adapter_weight"] = model.pscma.alpha_visual.detach().clone()
    sd["text_proj_adapter_weight"] = model.pscma.alpha_text.detach().clone()
    sd["context_tokens"] = model.prompts.context.detach().clone().unsqueeze(0)
    sd["prompt_prefix"] = model.prompts.prefix.clone()
    sd["prompt_suffix"] = model.prompts.suffix.clone()
    sd["score_proj"] = model.level_weights.detach().clone().unsqueeze(1)
    return sd
