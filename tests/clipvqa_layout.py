"""A CLIPVQA model (qclip_engine/model/clipvqa/) written as the released CLIPVQA code saves its
checkpoints, for the converter's tests.

Written from the released layout, one module at a time, in the direction opposite to the converter
(this engine's names → the released ones) and without its code, so that a wrong rule in either one
shows as a test failure rather than cancelling out:

* the CLIP tower: ``visual.*`` keeps its names; the frozen text tower ``text.X`` is ``X`` at the
  top level (``token_embedding``, ``positional_embedding``, ``transformer``, ``ln_final``,
  ``text_projection``, ``logit_scale``);
* the messages live inside the visual blocks: ``messages.{i}.{fc,norm,attn}`` is
  ``visual.transformer.resblocks.{i}.message_{fc,ln,attn}``;
* SAT is ``mit``: ``frame_pos`` → ``positional_embedding``, blocks → ``resblocks`` with CLIP's
  block names (``ln_1``, ``ln_2``, ``mlp.c_fc``, ``mlp.c_proj``);
* VAT is ``prompts_generator``: ``norm_patches`` → ``norm``, layers → ``decoder`` with
  ``cross_attn.{q,k,v}_proj`` / ``cross_attn.proj``, ``norm1`` / ``norm3`` and an MLP
  ``Sequential`` (``mlp.0``, ``mlp.3``);
* ``patch_norm`` / ``patch_proj`` → ``prompts_visual_ln`` / ``prompts_visual_proj``;
  ``temporal_conv`` → ``conv2``.

The checkpoint around it is ``main.py``'s: ``model``, ``optimizer``, ``lr_scheduler``,
``max_accuracy``, ``epoch`` and ``config`` — a yacs ``CfgNode``, imitated here by a class pickled
under yacs's name, so that reading it needs neither yacs nor trust in the file.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections import OrderedDict

import torch

TEXT_TOWER = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection", "logit_scale")
SAT_PARTS = {"norm1": "ln_1", "norm2": "ln_2", "attn": "attn", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
VAT_PARTS = {"norm_query": "norm1", "norm_mlp": "norm3", "mlp.fc": "mlp.0", "mlp.proj": "mlp.3",
             "cross.q": "cross_attn.q_proj", "cross.k": "cross_attn.k_proj", "cross.v": "cross_attn.v_proj",
             "cross.out": "cross_attn.proj"}
MESSAGE_PARTS = {"fc": "message_fc", "norm": "message_ln", "attn": "message_attn"}
SINGLES = {"sat.frame_pos": "mit.positional_embedding", "sat.alpha": "mit.alpha", "vat.alpha": "prompts_generator.alpha",
           "patch_proj": "prompts_visual_proj", "temporal_conv.weight": "conv2.weight"}


def _replace_part(rest: str, parts: dict[str, str]) -> str:
    """``rest`` = ``<part>.<leaf>``: the part renamed by ``parts`` (longest match first)."""
    for ours in sorted(parts, key=len, reverse=True):
        if rest.startswith(ours + "."):
            return parts[ours] + rest[len(ours):]
    raise KeyError(rest)


def released_key(name: str) -> str:
    """The released checkpoint's key of this engine's ``CLIPVQA.state_dict()`` key."""
    if name in SINGLES:
        return SINGLES[name]
    if name.startswith("visual."):
        return name
    if name.startswith("text."):
        rest = name[len("text."):]
        assert rest.startswith(TEXT_TOWER), name
        return rest
    head, _, rest = name.partition(".")
    if head == "messages":  # messages.{i}.{part}.{leaf}
        i, _, rest = rest.partition(".")
        return f"visual.transformer.resblocks.{i}." + _replace_part(rest, MESSAGE_PARTS)
    if head == "sat":  # sat.blocks.{j}.{part}.{leaf}
        _, j, rest = rest.split(".", 2)
        return f"mit.resblocks.{j}." + _replace_part(rest, SAT_PARTS)
    if head == "vat":
        if rest.startswith("norm_patches."):
            return "prompts_generator.norm." + rest[len("norm_patches."):]
        _, j, rest = rest.split(".", 2)  # layers.{j}.{part}.{leaf}
        return f"prompts_generator.decoder.{j}." + _replace_part(rest, VAT_PARTS)
    if head == "patch_norm":
        return "prompts_visual_ln." + rest
    raise KeyError(name)


def released_state_dict(model) -> OrderedDict:
    """The model's tensors under the released keys (the derived buffers are not saved there either)."""
    return OrderedDict((released_key(k), v.detach().clone()) for k, v in model.state_dict().items())


class CfgNode(dict):
    """What matters of yacs's ``CfgNode`` for pickling: a dict subclass with four attributes kept in
    its ``__dict__``, nested for sub-configs, frozen by the released code before training."""

    def __init__(self, init=None):
        super().__init__({k: CfgNode(v) if isinstance(v, dict) else v for k, v in (init or {}).items()})
        self.__dict__["__immutable__"] = False
        self.__dict__["__deprecated_keys__"] = set()
        self.__dict__["__renamed_keys__"] = {}
        self.__dict__["__new_allowed__"] = False

    def __getattr__(self, name):
        if name in self:
            return self[name]
        raise AttributeError(name)

    def freeze(self):
        self.__dict__["__immutable__"] = True
        for value in self.values():
            if isinstance(value, CfgNode):
                value.freeze()
        return self


CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"


@contextlib.contextmanager
def yacs_importable():
    """``yacs.config.CfgNode`` importable (as pickling a node needs) while the block runs."""
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    config.CfgNode, yacs.config = CfgNode, config
    saved = {k: sys.modules.get(k) for k in ("yacs", "yacs.config")}
    sys.modules.update({"yacs": yacs, "yacs.config": config})
    try:
        yield
    finally:
        for key, module in saved.items():
            if module is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = module


def released_config(frames: int, arch: str = "ViT-B/16", label_list: str = "labels/labels.csv") -> CfgNode:
    """Part of the released config (its defaults), as it is saved: frozen."""
    return CfgNode({
        "BASE": [""],
        "DATA": {"ROOT": "", "NUM_FRAMES": frames, "INPUT_SIZE": 224, "NUM_CLASSES": 400, "LABEL_LIST": label_list},
        "MODEL": {"ARCH": arch, "DROP_PATH_RATE": 0.0, "PRETRAINED": None, "RESUME": None, "FIX_TEXT": True},
        "TRAIN": {"EPOCHS": 40, "WARMUP_EPOCHS": 5, "LR": 8e-6, "BATCH_SIZE": 2, "ACCUMULATION_STEPS": 8,
                  "OPTIMIZER": "adamw", "OPT_LEVEL": "O1", "AUTO_RESUME": False},
        "AUG": {"MIXUP": 0.8, "CUTMIX": 1.0, "LABEL_SMOOTH": 0.1},
        "OUTPUT": "exp", "SEED": 1024,
    }).freeze()


def released_checkpoint(model, epoch: int = 3, max_accuracy: float = 1.7, label_list: str = "labels/labels.csv") -> dict:
    """``main.py``'s ``epoch_saving`` dict around the model's released state dict."""
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([param], lr=8e-6, betas=(0.9, 0.98), eps=1e-8, weight_decay=1e-3)
    param.sum().backward()
    optimizer.step()
    scheduler = {"param_group_field": "lr", "base_values": [8e-6], "metric": None, "t_in_epochs": False,
                 "noise_range_t": None, "noise_pct": 0.67, "noise_std": 1.0, "noise_seed": 42, "t_initial": 40,
                 "lr_min": 8e-8, "warmup_t": 5, "warmup_lr_init": 0, "warmup_steps": [1.6e-6], "cycle_limit": 1}
    return {"model": released_state_dict(model), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler,
            "max_accuracy": max_accuracy, "epoch": epoch, "config": released_config(model.config.num_frames, label_list=label_list)}


def save_released(checkpoint: dict, path) -> None:
    with yacs_importable():
        torch.save(checkpoint, path)
