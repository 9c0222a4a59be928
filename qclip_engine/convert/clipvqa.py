"""Checkpoints of the released CLIPVQA code (``ckpt_epoch_N.pth``, ``best.pth``) → CLIPVQA models
(``qclip_engine/model/clipvqa/``) and artifacts of this engine.

The released ``main.py`` saves ``{"model": state_dict, "optimizer", "lr_scheduler",
"max_accuracy", "epoch", "config"}``, the state dict taken from the unwrapped module (no
``module.`` prefix; one is stripped if present), fp32; ``config`` is a yacs ``CfgNode``. It is
read with ``torch.load(weights_only=True)``: the ``CfgNode`` comes back as plain dicts (yacs
need not be installed, and nothing in the file runs). Where the model's tensors go is ``RULES``
below (released → here, one template pair per module part): the CLIP tower keeps its names
(``visual.*``; the text tower ``X`` becomes ``text.X``); the messages live in the released visual
blocks (``resblocks.{i}.message_{fc,ln,attn}`` → ``messages.{i}.{fc,norm,attn}``); SAT is ``mit``,
VAT ``prompts_generator``, the patch LayerNorm/projection ``prompts_visual_{ln,proj}`` and the
frozen temporal conv ``conv2``.

The config is read off the shapes (:func:`clipvqa_config`): ``num_frames`` from
``mit.positional_embedding``, ``sat_layers`` / ``vat_layers`` by counting ``mit.resblocks.*`` /
``prompts_generator.decoder.*``, ``image_size`` = patch × √(position rows − 1), and the backbone is
the open_clip model whose towers have the checkpoint's widths, depths, patch, context and vocabulary
(ViT-B/16, ViT-B/32, ViT-L/14 for the released configs). The checkpoint holds every tensor of the
model, so nothing is downloaded (``pretrained=None``), and the artifact stores them all.

The level words are not tensors: the released code tokenizes the names of the label file its config
names (``DATA.LABEL_LIST``: ``id,name`` CSV rows, a name per level, worst first), and the repository
ships several lists. ``labels.csv`` holds this engine's ``LEVEL_WORDS``; a checkpoint naming another
file converts only with its words given (:func:`level_words_for`), as other words score otherwise.
"""

from __future__ import annotations

import csv
import math
import os
import pickle
import re
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import open_clip
import torch

from ..artifact import save_artifact, staged_directory
from ..errors import ConversionError
from ..model.backbone import weights_loaded_after
from ..model.clipvqa import CLIPVQA, LEVEL_WORDS, CLIPVQAConfig
from ..model.pe_weights import load_torch_file

RELEASED_CONFIG_CLASS = "yacs.config.CfgNode"
DEFAULT_LABEL_FILE = "labels.csv"  # the released label file holding LEVEL_WORDS
PREFERRED_BACKBONES = ("ViT-B-16", "ViT-B-32", "ViT-L-14", "ViT-L-14-336")
READ_OFF_SHAPES = ("backbone", "num_frames", "image_size", "sat_layers", "vat_layers")

# Released name ↔ name here, as templates; ``{x}`` stands for one of PARTS[x], the same on both sides.
_MHA = r"in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias"
PARTS = {
    "i": r"\d+",
    "wb": r"weight|bias",
    "mha": _MHA,
    "qkv": r"q|k|v",
    "block": rf"attn\.(?:{_MHA})|ln_[12]\.(?:weight|bias)|mlp\.c_(?:fc|proj)\.(?:weight|bias)",
    "stem": r"conv1\.weight|class_embedding|positional_embedding|ln_pre\.(?:weight|bias)|ln_post\.(?:weight|bias)|proj",
    "text": r"token_embedding\.weight|positional_embedding|text_projection|logit_scale|ln_final\.(?:weight|bias)",
}
RULES = (
    ("visual.{stem}", "visual.{stem}"),
    ("visual.transformer.resblocks.{i}.{block}", "visual.transformer.resblocks.{i}.{block}"),
    ("visual.transformer.resblocks.{i}.message_fc.{wb}", "messages.{i}.fc.{wb}"),
    ("visual.transformer.resblocks.{i}.message_ln.{wb}", "messages.{i}.norm.{wb}"),
    ("visual.transformer.resblocks.{i}.message_attn.{mha}", "messages.{i}.attn.{mha}"),
    ("mit.positional_embedding", "sat.frame_pos"),
    ("mit.alpha", "sat.alpha"),
    ("mit.resblocks.{i}.attn.{mha}", "sat.blocks.{i}.attn.{mha}"),
    ("mit.resblocks.{i}.ln_1.{wb}", "sat.blocks.{i}.norm1.{wb}"),
    ("mit.resblocks.{i}.ln_2.{wb}", "sat.blocks.{i}.norm2.{wb}"),
    ("mit.resblocks.{i}.mlp.c_fc.{wb}", "sat.blocks.{i}.mlp.fc.{wb}"),
    ("mit.resblocks.{i}.mlp.c_proj.{wb}", "sat.blocks.{i}.mlp.proj.{wb}"),
    ("prompts_generator.norm.{wb}", "vat.norm_patches.{wb}"),
    ("prompts_generator.alpha", "vat.alpha"),
    ("prompts_generator.decoder.{i}.cross_attn.{qkv}_proj.weight", "vat.layers.{i}.cross.{qkv}.weight"),
    ("prompts_generator.decoder.{i}.cross_attn.proj.{wb}", "vat.layers.{i}.cross.out.{wb}"),
    ("prompts_generator.decoder.{i}.norm1.{wb}", "vat.layers.{i}.norm_query.{wb}"),
    ("prompts_generator.decoder.{i}.norm3.{wb}", "vat.layers.{i}.norm_mlp.{wb}"),
    ("prompts_generator.decoder.{i}.mlp.0.{wb}", "vat.layers.{i}.mlp.fc.{wb}"),
    ("prompts_generator.decoder.{i}.mlp.3.{wb}", "vat.layers.{i}.mlp.proj.{wb}"),
    ("prompts_visual_ln.{wb}", "patch_norm.{wb}"),
    ("prompts_visual_proj", "patch_proj"),
    ("conv2.weight", "temporal_conv.weight"),
    ("{text}", "text.{text}"),
    ("transformer.resblocks.{i}.{block}", "text.transformer.resblocks.{i}.{block}"),
)


def _pattern(template: str) -> re.Pattern:
    pieces = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, …
    return re.compile("".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{PARTS[p]})" for k, p in enumerate(pieces)))


_COMPILED = [(_pattern(released), released, _pattern(ours), ours) for released, ours in RULES]


def _rename(name: str, inverse: bool = False) -> tuple[str, int] | None:
    """(the other side's name, the rule's index) of a released name (``inverse``: of a name here)."""
    for index, (released_re, released, ours_re, ours) in enumerate(_COMPILED):
        m = (ours_re if inverse else released_re).fullmatch(name)
        if m:
            return (released if inverse else ours).format(**m.groupdict()), index
    return None


def released_name(name: str) -> str | None:
    """The released checkpoint's name of this model's tensor ``name`` (None: not a released tensor)."""
    found = _rename(name, inverse=True)
    return found[0] if found else None


class _ReleasedConfigNode:
    """Stands in for yacs's ``CfgNode`` while a released checkpoint is read with ``weights_only``:
    each node comes back as a plain ``OrderedDict`` of its values (the weights-only unpickler fills
    only plain dicts), and no code of the file runs."""

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


def _plain(value: Any) -> Any:
    """The config's nodes as plain dicts (the rest as it is)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _reason(exc: BaseException) -> str:
    """The one line of a load error that says what went wrong (torch's weights-only errors wrap it in
    advice about trusting the file)."""
    text = str(exc).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else type(exc).__name__
    return line.split(" was not an allowed global")[0]


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The whole released checkpoint (``model``, ``epoch``, ``max_accuracy``, ``config`` as plain
    dicts, …), loaded with ``weights_only``; ConversionError (one line) if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"checkpoint not found: {path}", code="not_found")
    try:
        with torch.serialization.safe_globals([(_ReleasedConfigNode, RELEASED_CONFIG_CLASS)]):
            checkpoint = load_torch_file(path)
    except Exception as exc:  # zip, pickle framing and torch errors alike
        reason = _reason(exc)
        if isinstance(exc, pickle.UnpicklingError) and reason.startswith("Unsupported global"):
            raise ConversionError(
                f"{path} holds Python objects a weights-only load does not build ({reason}); a released CLIPVQA "
                "checkpoint holds tensors, numbers, strings and its yacs config only"
            ) from exc
        raise ConversionError(f"{path} is not a readable torch checkpoint ({reason})") from exc
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return _plain(checkpoint)


def read_clipvqa(checkpoint: str | os.PathLike | dict) -> dict[str, torch.Tensor]:
    """The model's tensors of a released checkpoint (a path or the loaded dict): its ``model``
    entry, or the dict itself when it is a bare state dict; without a ``module.`` prefix."""
    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict):
        raise ConversionError(f"the checkpoint's 'model' entry is a {type(state).__name__}, not a state dict")
    unnamed = [k for k in state if not isinstance(k, str)]  # a state dict names its tensors
    if unnamed:
        raise ConversionError(f"not a released CLIPVQA state dict: keys that are not tensor names (not strings): "
                              f"{unnamed[:6]!r}")
    tensors = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    others = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if others or not tensors:
        raise ConversionError(f"not a released CLIPVQA state dict: {len(tensors)} tensors"
                              + (f", entries that are not tensors: {others[:6]}" if others else ""))
    return tensors


def map_clipvqa(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released names → this engine's (``CLIPVQA.state_dict()`` names); ConversionError listing
    every name the released model does not have."""
    unknown = sorted(k for k in state if _rename(k) is None)
    if unknown:
        raise ConversionError("not tensors of the released CLIPVQA model:\n  " + "\n  ".join(unknown))
    return {_rename(k)[0]: v for k, v in state.items()}


def mapping_summary(state: dict[str, torch.Tensor]) -> list[tuple[str, str, int]]:
    """(released template, template here, how many tensors) for every rule the checkpoint uses."""
    counts: dict[int, int] = {}
    for key in state:
        found = _rename(key)
        if found:
            counts[found[1]] = counts.get(found[1], 0) + 1
    return [(*RULES[i], n) for i, n in sorted(counts.items())]


def _indices(state: dict[str, torch.Tensor], prefix: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))})


def _misfit(name: str, dims: dict[str, Any]) -> list[str]:
    """How the open_clip model ``name`` differs from the towers described by ``dims`` (empty: fits)."""
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        return ["not an open_clip model"]
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if (v.get("timm_model_name") or t.get("hf_model_name") or cfg.get("custom_text")
            or not isinstance(v.get("layers"), int)
            or v.get("attentional_pool") or v.get("pool_type", "tok") != "tok" or v.get("ls_init_value") is not None):
        return ["not an OpenAI-layout CLIP ViT"]
    have = {
        "vision width": v.get("width"), "vision blocks": v.get("layers"), "patch": v.get("patch_size"),
        "vision MLP ratio": v.get("mlp_ratio", 4.0), "embed dim": cfg.get("embed_dim"),
        "vision heads": v.get("width", 0) // v.get("head_width", 64),
        "text width": t.get("width"), "text blocks": t.get("layers"), "context": t.get("context_length", 77),
        "vocabulary": t.get("vocab_size", 49408), "text MLP ratio": t.get("mlp_ratio", 4.0),
        "text heads": t.get("heads", 8),
    }
    return [f"{k} {have[k]} ≠ {dims[k]}" for k in have if have[k] != dims[k]]


def _dims(state: dict[str, torch.Tensor], problems: list[str]) -> dict[str, Any]:
    """The towers' sizes read off the shapes, checking the new modules' shapes against them."""
    width, _, patch, _ = state["visual.conv1.weight"].shape
    embed = state["visual.proj"].shape[1]
    text_width = state["ln_final.weight"].shape[0]
    visual_blocks = _indices(state, "visual.transformer.resblocks.")
    text_blocks = _indices(state, "transformer.resblocks.")
    c_fc = state.get("visual.transformer.resblocks.0.mlp.c_fc.weight")
    t_fc = state.get("transformer.resblocks.0.mlp.c_fc.weight")
    frames = state["mit.positional_embedding"].shape[1]
    wanted = {"mit.positional_embedding": (1, frames, embed), "conv2.weight": (embed, embed, frames, 1),
              "prompts_visual_proj": (width, embed), "text_projection": (text_width, embed)}
    problems += [f"{k} {tuple(state[k].shape)}: expected {shape} for width {width}, embed {embed}, {frames} frames"
                 for k, shape in wanted.items() if tuple(state[k].shape) != shape]
    for prefix, found in (("visual.transformer.resblocks.", visual_blocks), ("transformer.resblocks.", text_blocks),
                          ("mit.resblocks.", _indices(state, "mit.resblocks.")),
                          ("prompts_generator.decoder.", _indices(state, "prompts_generator.decoder."))):
        if found != list(range(len(found))):
            problems.append(f"{prefix}*: blocks {found}, expected 0 … {len(found) - 1}")
    return {
        "vision width": width, "vision blocks": len(visual_blocks), "patch": patch,
        "vision MLP ratio": c_fc.shape[0] / width if c_fc is not None else None, "embed dim": embed,
        "vision heads": width // 64,  # the released code's heads: one per 64 channels, both towers
        "text width": text_width, "text blocks": len(text_blocks), "context": state["positional_embedding"].shape[0],
        "vocabulary": state["token_embedding.weight"].shape[0],
        "text MLP ratio": t_fc.shape[0] / text_width if t_fc is not None else None, "text heads": text_width // 64,
    }


def _pick_backbone(dims: dict[str, Any], image_size: int, asked: str | None, problems: list[str]) -> str | None:
    if asked is not None:
        misfit = _misfit(asked, dims)
        if misfit:
            problems.append(f"backbone {asked!r} does not fit: " + ", ".join(misfit))
        return asked
    fits = [m for m in open_clip.list_models() if not _misfit(m, dims)]
    if fits:
        def rank(m):
            size = (open_clip.get_model_config(m)["vision_cfg"].get("image_size"))
            return (m not in PREFERRED_BACKBONES, size != image_size, "quickgelu" in m, m)
        return min(fits, key=rank)
    closest = "; ".join(f"{m}: {', '.join(_misfit(m, dims))}" for m in PREFERRED_BACKBONES[:3])
    problems.append("the towers fit no open_clip model with an OpenAI-layout ViT ("
                    + ", ".join(f"{k} {v}" for k, v in dims.items()) + f"); the released backbones differ: {closest}")
    return None


def clipvqa_config(state: dict[str, torch.Tensor], **overrides) -> CLIPVQAConfig:
    """The :class:`CLIPVQAConfig` of a released state dict, read off its shapes; ``overrides`` set
    the other fields (``sat_attention``, …). One read off the shapes may be given only with the
    value the checkpoint has. ConversionError listing everything that does not fit."""
    needed = {"visual.conv1.weight": 4, "visual.positional_embedding": 2, "visual.proj": 2,
              "mit.positional_embedding": 3, "conv2.weight": 4, "prompts_visual_proj": 2, "ln_final.weight": 1,
              "positional_embedding": 2, "token_embedding.weight": 2, "text_projection": 2}
    missing = [k for k in needed if k not in state]
    if missing:
        raise ConversionError(f"not a released CLIPVQA checkpoint: it lacks {missing}")
    bad = [f"{k} {tuple(state[k].shape)}" for k, ndim in needed.items() if state[k].ndim != ndim]
    if bad:
        raise ConversionError(f"the checkpoint does not fit the released CLIPVQA model: {bad} have other ranks")
    problems: list[str] = []
    dims = _dims(state, problems)
    rows = state["visual.positional_embedding"].shape[0]
    grid = math.isqrt(max(rows - 1, 0))
    if grid * grid != rows - 1:
        problems.append(f"visual.positional_embedding has {rows} rows: not 1 + a square grid of patches")
    read = {
        "num_frames": state["mit.positional_embedding"].shape[1], "image_size": dims["patch"] * grid,
        "sat_layers": len(_indices(state, "mit.resblocks.")),
        "vat_layers": len(_indices(state, "prompts_generator.decoder.")),
    }
    read["backbone"] = _pick_backbone(dims, read["image_size"], overrides.get("backbone"), problems)
    for key in READ_OFF_SHAPES:
        if key in overrides and overrides[key] != read[key] and key != "backbone":
            problems.append(f"{key}={overrides[key]!r} asked, but the checkpoint's shapes hold {read[key]!r}")
    if problems:
        raise ConversionError("the checkpoint does not fit the released CLIPVQA model:\n  " + "\n  ".join(problems))
    return CLIPVQAConfig(**{"pretrained": None, **overrides, **read})


def load_clipvqa(checkpoint: str | os.PathLike | dict, **overrides) -> CLIPVQA:
    """The CLIPVQA model holding a released checkpoint's tensors (a path, the loaded checkpoint or
    its state dict). Strict: ConversionError listing every unknown, missing or unexpected tensor
    and every shape that differs, by both names. The level words are ``overrides["level_words"]``, or
    :func:`level_words_for`'s."""
    if not isinstance(checkpoint, dict):
        checkpoint = read_checkpoint(checkpoint)
    overrides["level_words"] = level_words_for(checkpoint, overrides.get("level_words"))
    state = read_clipvqa(checkpoint)
    config = clipvqa_config(state, **overrides)
    with weights_loaded_after():  # every tensor is loaded below
        model = CLIPVQA(replace(config, pretrained=None))
    expected = model.state_dict()
    mapped, source = {}, {}
    problems = []
    for key, value in state.items():
        found = _rename(key)
        if found is None:
            problems.append(f"{key}: not a tensor of the released CLIPVQA model")
            continue
        mapped[found[0]], source[found[0]] = value, key
    problems += [f"{released_name(k)} (→ {k}): not in the checkpoint" for k in expected if k not in mapped]
    problems += [f"{source[k]} (→ {k}): no such tensor in {config.backbone} with {config.sat_layers} SAT and "
                 f"{config.vat_layers} VAT blocks" for k in mapped if k not in expected]
    problems += [f"{source[k]} {tuple(v.shape)} (→ {k}): the model has {tuple(expected[k].shape)}"
                 for k, v in mapped.items() if k in expected and v.shape != expected[k].shape]
    if problems:
        raise ConversionError(f"the checkpoint does not fit the model ({len(problems)} problems):\n  "
                              + "\n  ".join(problems))
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def label_list(checkpoint: dict) -> str | None:
    """The label file a released checkpoint's config names (``DATA.LABEL_LIST``), or None (no config)."""
    data = checkpoint.get("config", {}).get("DATA") if isinstance(checkpoint.get("config"), dict) else None
    named = data.get("LABEL_LIST") if isinstance(data, dict) else None
    return named if isinstance(named, str) else None


def read_label_file(path: str | os.PathLike) -> tuple[str, ...]:
    """The level words of a label file in the released format: a header row, then ``id,name`` rows,
    worst level first. Names are whitespace-trimmed, as the tokenizer trims them (``labels_1.csv``'s
    ``very bad `` is ``very bad``)."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [row for row in csv.reader(f) if row]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(f"cannot read the label file {path}: {exc}",
                              code="not_found" if isinstance(exc, FileNotFoundError) else "checkpoint_invalid") from exc
    bad = [i + 2 for i, row in enumerate(rows[1:]) if len(row) < 2 or not row[1].strip()]
    if len(rows) < 3 or bad:
        raise ConversionError(f"{path} is not a released label file (a header row, then one 'id,name' row per level, "
                              f"at least two){f': rows {bad[:6]} name nothing' if bad else ''}")
    return tuple(" ".join(row[1].split()) for row in rows[1:])


def level_words_for(checkpoint: dict, level_words: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The level words to convert ``checkpoint`` with: those given, else ``LEVEL_WORDS`` when its
    config names the default label file (or nothing); ConversionError (one line) when it names
    another file and no words are given."""
    if level_words is not None:
        return tuple(level_words)
    named = label_list(checkpoint)
    if named is None or Path(named).name == DEFAULT_LABEL_FILE:
        return LEVEL_WORDS
    raise ConversionError(f"the checkpoint was trained with the level words of {named} (its config's DATA.LABEL_LIST), "
                          f"not {DEFAULT_LABEL_FILE}'s ({', '.join(LEVEL_WORDS)}): pass that file with --labels FILE "
                          "or its words, worst first, with --level-words w1,w2,…")


def convert_clipvqa(checkpoint: str | os.PathLike | dict, out: str | os.PathLike, **overrides) -> Path:
    """Convert a released checkpoint into the artifact directory ``out`` (every tensor stored)."""
    model = load_clipvqa(checkpoint, **overrides)
    with staged_directory(out) as stage:
        save_artifact(model, stage)
    return Path(out)
