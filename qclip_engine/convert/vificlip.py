"""ViFi-CLIP checkpoints (fully fine-tuned CLIP ViT-B/16, "Fine-tuned CLIP Models are Efficient Video
Learners", repository muzairkhattak/ViFi-CLIP) → one open_clip-layout ``.safetensors`` weights file.

**What the checkpoint holds.** ViFi-CLIP's training script saves ``{"model": state_dict, "optimizer",
"lr_scheduler", "max_accuracy", "epoch", "config"}`` (``config`` a yacs ``CfgNode``), the format of
the X-CLIP lineage that CLIPVQA shares: it is read with CLIPVQA's reader (``convert/clipvqa.py``:
weights only, the config as plain dicts, nothing in the file runs). The model was wrapped in
DistributedDataParallel when saved, so every key starts with ``module.`` (stripped on reading). Its
modules are OpenAI's CLIP under other names: ``image_encoder`` (the visual tower), ``text_encoder``
(the text transformer, ``positional_embedding``, ``ln_final``, ``text_projection``, but no token
embedding), ``logit_scale``, and ``prompt_learner``, which for the fine-tuned models holds one
buffer, ``complete_text_embeddings`` [classes, 77, 512]: the class prompts ``"a photo of a
{name}."`` looked up in OpenAI's token embedding (in fp16, then cast to fp32).

**The map** (``RULES``; after ``module.`` is stripped): ``image_encoder.X`` → ``visual.X``,
``text_encoder.X`` → ``X``, ``logit_scale`` → ``logit_scale``; ``prompt_learner.*`` is dropped.
That gives every tensor of open_clip's ``ViT-B-16`` but ``token_embedding.weight``; the names and
shapes are checked against the open_clip model (``model/state.py``'s ``check_state``), and anything
missing, unexpected or of another shape is refused, listed.

**Why the token embedding comes from OpenAI's weights.** ViFi-CLIP never had a token embedding to
train: the prompt learner used OpenAI's once, at construction, to embed the class prompts, and kept
only the result. So the text tower ViFi-CLIP trained and evaluated with is its fine-tuned
transformer on top of OpenAI's token embedding, unchanged. ``token_embedding_from`` names where it
is taken: open_clip's ``openai`` tag of the backbone (the same OpenAI ``ViT-B/16`` file ViFi-CLIP
started from; a download, once) or a local open_clip-layout weights file — anything
``model/backbone.py``'s ``create_clip`` takes as ``pretrained``.

**The sanity check.** Every row of ``complete_text_embeddings`` starts with the start token and the
words of ``"a photo of a"`` (the config's ``TRAINER.ViFi_CLIP.CTX_INIT`` where it says another), so
those rows must equal the chosen token embedding's rows of those tokens. They were computed in
fp16: a value ``v`` can be off by half an fp16 step, at most 2⁻¹¹·|v|, so the rows are compared
with a tolerance of 10⁻³ × the largest |value| of the reference rows, which any other embedding
(rows that are not the same numbers) exceeds by far. A mismatch is refused (the file would hold a
text tower that never saw that embedding); a checkpoint without the buffer converts, with a note
that the check could not be made.

**What is refused.** Prompt-learning checkpoints (ViFi-CLIP's "bridge and prompt" configs: keys
with ``VPT`` — deep visual/text prompt tokens — or ``prompt_learner.ctx``, learned context
vectors): plain open_clip has nowhere to put them and they change the forward pass; keys of no
rule; tensors that do not fit the backbone.

**Using the output.** Set ``backbone: ViT-B-16``, ``pretrained: FILE`` and ``quick_gelu: true``
(OpenAI's CLIP, and ViFi-CLIP with it, uses QuickGELU; open_clip's ``ViT-B-16`` config builds
GELU, and nothing warns about that for a local file). The file must end in ``.safetensors``: open_clip
picks its reader by the suffix. ViFi-CLIP's released test pipeline resizes the short side to 256,
crops the centre 224 × 224 and normalizes with ImageNet's mean and std (not CLIP's), as
``qclip_engine/model/dvlta`` does.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import load_file, save_file

from ..artifact import write_artifact_file
from ..errors import BackboneError, ConversionError, QCLIPError
from ..model.backbone import create_clip, weights_loaded_after
from ..model.state import check_state
from .clipvqa import read_checkpoint as read_saved_checkpoint
from .clipvqa import read_clipvqa as read_model_entry

BACKBONE = "ViT-B-16"  # the released fine-tuned models' (ViT-B/16)
TOKEN_EMBEDDING_FROM = "openai"  # open_clip's tag of OpenAI's weights, which ViFi-CLIP started from
TOKEN_EMBEDDING = "token_embedding.weight"
SUFFIX = ".safetensors"  # open_clip reads a weights file by its suffix
# (prefix in the checkpoint, prefix in open_clip): a key is the first rule's whose prefix it starts with
RULES = (("image_encoder.", "visual."), ("text_encoder.", ""), ("logit_scale", "logit_scale"))
DROPPED = "prompt_learner."  # the class prompts, embedded (and, in prompt-learning models, the prompts)
PROMPTS = DROPPED + "complete_text_embeddings"
PROMPT_LEARNING = ("VPT", "prompt_learner.ctx")  # parts of the key names of prompt-learning checkpoints
CTX_INIT = "a photo of a"  # the released config's TRAINER.ViFi_CLIP.CTX_INIT: prompts are "a photo of a {name}."
RELATIVE_TOLERANCE = 1e-3  # × the reference rows' largest |value|; fp16 rounding is ≤ 2⁻¹¹ × |value|
SAVED_ALONGSIDE = ("model", "epoch", "max_accuracy", "config")  # what the summary reports itself


@dataclass
class ViFiCLIPConversion:
    """What :func:`convert_vificlip` wrote and found."""

    out: Path
    backbone: str
    rules: list[tuple[str, str, int]]  # (checkpoint prefix, open_clip prefix, tensors)
    prefixed: int  # keys that had DistributedDataParallel's ``module.``
    dropped: list[tuple[str, tuple[int, ...]]]  # the checkpoint's tensors left out, with their shapes
    token_embedding_from: str
    token_embedding_shape: tuple[int, ...]
    check: str  # the sanity check's outcome, one line
    epoch: Any = None
    max_accuracy: Any = None
    config: dict[str, Any] = field(default_factory=dict)  # a few settings of its config, where readable
    left_out: list[str] = field(default_factory=list)  # the checkpoint's entries other than the model

    @property
    def tensors(self) -> int:
        return sum(n for _, _, n in self.rules) + 1


def _setting(config: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(config, dict):
            return None
        config = config.get(key)
    return config


def config_settings(checkpoint: dict) -> dict[str, Any]:
    """The settings of the checkpoint's config that say which model it is, where readable."""
    config = checkpoint.get("config")
    wanted = {
        "MODEL.ARCH": ("MODEL", "ARCH"), "DATA.NUM_FRAMES": ("DATA", "NUM_FRAMES"),
        "DATA.INPUT_SIZE": ("DATA", "INPUT_SIZE"), "DATA.DATASET": ("DATA", "DATASET"),
        "TRAINER.ViFi_CLIP.USE": ("TRAINER", "ViFi_CLIP", "USE"),
        "TRAINER.ViFi_CLIP.CTX_INIT": ("TRAINER", "ViFi_CLIP", "CTX_INIT"),
    }
    found = {name: _setting(config, *path) for name, path in wanted.items()}
    return {name: value for name, value in found.items() if value is not None}


def map_vificlip(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[tuple[str, str, int]],
                                                           list[tuple[str, tuple[int, ...]]]]:
    """(open_clip name → tensor, (rule, rule, count) per rule used, dropped (name, shape)) of a
    ViFi-CLIP state dict without ``module.``. ConversionError naming the prompt-learning keys, or the
    keys of no rule."""
    learned = sorted(k for k in state if any(part in k for part in PROMPT_LEARNING))
    if learned:
        raise ConversionError(
            f"a prompt-learning ViFi-CLIP checkpoint ({len(learned)} tensors of learned prompts: "
            f"{', '.join(learned[:8])}{' …' if len(learned) > 8 else ''}): its deep prompt tokens and context "
            "vectors change the forward pass, and a plain open_clip CLIP has nowhere to put them; only the fully "
            "fine-tuned checkpoints (ViFi-CLIP, image- or text-tuned CLIP) convert")
    mapped: dict[str, torch.Tensor] = {}
    counts = [0] * len(RULES)
    dropped, unknown = [], []
    for key, tensor in state.items():
        if key.startswith(DROPPED):
            dropped.append((key, tuple(tensor.shape)))
            continue
        for index, (theirs, ours) in enumerate(RULES):
            if key.startswith(theirs):
                mapped[ours + key[len(theirs):]] = tensor
                counts[index] += 1
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError("not tensors of a ViFi-CLIP model (image_encoder.*, text_encoder.*, logit_scale, "
                              "prompt_learner.*):\n  " + "\n  ".join(sorted(unknown)))
    rules = [(theirs + ("*" if theirs.endswith(".") else ""), ours + "*" if theirs.endswith(".") else ours, n)
             for (theirs, ours), n in zip(RULES, counts) if n]
    return mapped, rules, sorted(dropped)


def expected_state(backbone: str) -> dict[str, torch.Tensor]:
    """The names and shapes of open_clip's ``backbone`` (built on the meta device: no memory, no time)."""
    if backbone not in open_clip.list_models():
        raise BackboneError(f"unknown open_clip model {backbone!r}")
    with torch.device("meta"), weights_loaded_after():  # shapes only, never used as a model
        return create_clip(backbone, None).state_dict()


def token_embedding(backbone: str, source: str) -> torch.Tensor:
    """``token_embedding.weight`` of ``backbone`` with the weights ``source`` (a tag or a file)."""
    try:
        clip = create_clip(backbone, source)
    except QCLIPError as exc:
        raise type(exc)(f"the token embedding's source {source!r}: {exc.message}", code=exc.code) from exc
    tensor = clip.state_dict().get(TOKEN_EMBEDDING)
    if tensor is None:
        raise ConversionError(f"{backbone} with {source!r} has no {TOKEN_EMBEDDING} (not an OpenAI-layout text tower)")
    return tensor.detach().clone()


def check_prompts(prompts: torch.Tensor | None, weight: torch.Tensor, backbone: str, source: str,
                  template: str = CTX_INIT) -> str:
    """The sanity check (module docstring): one line saying how it went, or ConversionError."""
    if prompts is None:
        return (f"not checked: the checkpoint holds no {PROMPTS} (its class prompts as embedded in training), so "
                f"nothing shows whether the token embedding from {source} is the one it was trained with")
    ids = open_clip.get_tokenizer(backbone)([template])[0]
    prefix = ids[: int(ids.argmax())]  # the start token and the template's words, up to the end token
    if prompts.ndim != 3 or prompts.shape[1] < len(prefix) or prompts.shape[2] != weight.shape[1]:
        raise ConversionError(f"{PROMPTS} has shape {list(prompts.shape)}: not [classes, ≥ {len(prefix)} tokens, "
                              f"{weight.shape[1]}] (the class prompts embedded with {backbone}'s token embedding)")
    reference = weight[prefix].float()
    got = prompts[:, : len(prefix)].float()
    tolerance = RELATIVE_TOLERANCE * float(reference.abs().max())
    worst = float((got - reference).abs().max())
    words = f"{len(prefix)} tokens of {template!r} (start token included)"
    if not worst <= tolerance:  # a NaN fails too
        raise ConversionError(
            f"the token embedding from {source} is not the one this checkpoint's prompts were embedded with: "
            f"the first {words} of its {prompts.shape[0]} class prompts ({PROMPTS}) differ from that embedding's "
            f"rows by up to {worst:.3g} (tolerated: {tolerance:.3g}, fp16 rounding); give the weights it was "
            "trained from (open_clip's 'openai' for the released models) with --token-embedding-from")
    return (f"passed: the first {words} of all {prompts.shape[0]} class prompts ({PROMPTS}) equal the token "
            f"embedding from {source} (largest difference {worst:.3g}, tolerated {tolerance:.3g})")


def unwritable_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be the weights file (open_clip reads it only with the ``.safetensors``
    suffix; an existing directory is not replaced), or None. (``qclip-convert`` also checks, before
    anything is read, that the missing parents can be created.)"""
    path = Path(path)
    if path.suffix != SUFFIX:
        return f"must end in {SUFFIX} (open_clip picks its reader by the file's suffix)"
    if os.path.isdir(path):
        return "is a directory"
    return None


def _write(out: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], backbone: str) -> None:
    """Write ``tensors`` to ``out`` (parents created) once the written file is checked to load into
    open_clip's ``backbone`` strictly, holding them: the file is put in place only then (a failure
    leaves any earlier file at ``out`` as it was, and none of the parents it created)."""

    def write_checked(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=metadata)
        try:
            with weights_loaded_after():
                clip = create_clip(backbone, None)
            clip.load_state_dict(load_file(str(tmp)), strict=True)  # what open_clip does with the file
            loaded = clip.state_dict()
            differ = sorted(k for k, v in tensors.items() if not torch.equal(loaded[k], v.to(loaded[k].dtype)))
            if differ:
                raise ValueError(f"tensors that read back otherwise: {differ}")
        except (QCLIPError, RuntimeError, ValueError) as exc:
            raise ConversionError(f"the written file does not load as open_clip's {backbone}: {exc}") from exc

    created = [p for p in out.parents if not os.path.exists(p)]  # deepest first
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_artifact_file(out, write_checked)
    except BaseException:
        for parent in created:
            with contextlib.suppress(OSError):  # one that something else wrote into stays
                parent.rmdir()
        raise


def convert_vificlip(checkpoint: str | os.PathLike | dict, out: str | os.PathLike, *, backbone: str = BACKBONE,
                     token_embedding_from: str = TOKEN_EMBEDDING_FROM) -> ViFiCLIPConversion:
    """Convert a ViFi-CLIP checkpoint (a path or the loaded dict) into the open_clip weights file
    ``out`` (module docstring). ConversionError (or the token source's own error) when it does not fit."""
    out = Path(out)
    if problem := unwritable_file(out):
        raise ConversionError(f"cannot write {out}: {problem}")
    source = checkpoint
    if not isinstance(checkpoint, dict):
        checkpoint = read_saved_checkpoint(checkpoint)
    try:
        state = read_model_entry(checkpoint)
    except ConversionError as exc:  # its messages name CLIPVQA, whose save format ViFi-CLIP shares
        raise ConversionError(f"not a ViFi-CLIP checkpoint: {exc}", code=exc.code) from exc
    model = checkpoint.get("model", checkpoint)
    prefixed = sum(isinstance(k, str) and k.startswith("module.") for k in model)
    mapped, rules, dropped = map_vificlip(state)

    expected = expected_state(backbone)
    fine_tuned = {k: v for k, v in expected.items() if k != TOKEN_EMBEDDING}
    try:
        check_state(fine_tuned, mapped)
    except ValueError as exc:
        raise ConversionError(f"the checkpoint does not fit open_clip's {backbone} (ViFi-CLIP's names mapped, "
                              f"{TOKEN_EMBEDDING} aside, which ViFi-CLIP does not have): {exc}") from exc

    weight = token_embedding(backbone, token_embedding_from)
    if weight.shape != expected[TOKEN_EMBEDDING].shape:
        raise ConversionError(f"{TOKEN_EMBEDDING} from {token_embedding_from} has shape {list(weight.shape)}, "
                              f"{backbone} has {list(expected[TOKEN_EMBEDDING].shape)}")
    settings = config_settings(checkpoint)
    template = settings.get("TRAINER.ViFi_CLIP.CTX_INIT")
    check = check_prompts(state.get(PROMPTS), weight, backbone, token_embedding_from,
                          template if isinstance(template, str) and template else CTX_INIT)

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in {**mapped, TOKEN_EMBEDDING: weight}.items()}
    tensors = dict(sorted(tensors.items()))
    name = Path(source).name if not isinstance(source, dict) else "a loaded checkpoint"
    metadata = {"format": "pt", "converted_from": f"ViFi-CLIP checkpoint {name}", "open_clip_model": backbone,
                "token_embedding_from": str(token_embedding_from)}
    _write(out, tensors, metadata, backbone)
    saved = "model" in checkpoint  # the training script's dict, not a bare state dict
    return ViFiCLIPConversion(
        out=out, backbone=backbone, rules=rules, prefixed=prefixed, dropped=dropped,
        token_embedding_from=str(token_embedding_from), token_embedding_shape=tuple(weight.shape), check=check,
        epoch=checkpoint.get("epoch") if saved else None,
        max_accuracy=checkpoint.get("max_accuracy") if saved else None, config=settings,
        left_out=sorted(str(k) for k in checkpoint if k not in SAVED_ALONGSIDE) if saved else [],
    )
