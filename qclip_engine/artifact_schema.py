"""The schema of an artifact's ``config.json``: each field the engine reads, its JSON type and bounds.

``artifact.py`` checks it before anything is built from the file (``read_artifact_config``, so
``load_artifact``, ``artifact_spec`` and ``artifact_family`` alike) and before ``save_artifact``
writes one (so ``qclip-convert`` and training never write what loading refuses). A damaged or
hand-edited file is then one ``artifact_invalid`` line naming the field (``model.num_frames must be
an integer in 1..256, got 8.5``), not a traceback, an ``internal_error`` on every input, or
gigabytes allocated for a 100000-pixel image.

JSON types are taken strictly: a string is not a number, a bool is not a number, 8.0 is not an
integer. A model setting an older artifact lacks keeps its dataclass default (only
``model.backbone`` is required); fields the engine never reads back (``versions``, ``created``,
``prompts.texts``, ``preprocess.mean`` …: the backbone rebuilds them) are not checked. Unknown
model settings are ``artifact.py: _stored_settings``' refusal.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .contract import QUALITY_LEVELS
from .defaults import PREPROCESSINGS, ROPES
from .errors import ArtifactContentError
from .model.clipvqa.config import SAT_ATTENTIONS
from .model.clipvqa.recipe import LEVEL_WORDS
from .model.dvlta.config import BRANCHES, CBAM_REDUCTION, DVLTAConfig
from .model.dvlta.fusion import FUSION_MODES
from .model.dvlta.model import LEVELS as DVLTA_LEVELS
from .model.dvlta.temporal_context import TEMPORAL_OPS
from .model.families import DEFAULT_FAMILY
from .model.fastvqa.config import VARIANTS as FASTVQA_VARIANTS
from .model.fastvqa.config import FASTVQAConfig
from .video.sampling import check_sampler

# Bounds, stated once. They admit every shipped config (configs/*.yaml), every test and the released
# checkpoints (8 or 32 frames, 160–448 px) with room to spare, and refuse what would allocate
# gigabytes before failing (a 100000-frame clip, a 100000-pixel position embedding).
FRAMES = (1, 256)  # model.num_frames
IMAGE_SIDE = (16, 1024)  # model.image_size of qclip and clipvqa, per side (16: the smallest patch in use)
DECODE_SIDE = (1, 1024)  # preprocess.image_size, per side: the size frames are decoded to (any family)
ADAPTER_LAYERS = (1, 64)  # qclip: K, at most the shallower tower's depth (checked when the model is built)
SHARED_DIM = (1, 4096)  # qclip: r (128 in the paper); Core is r × r
CONTEXT_TOKENS = (0, 64)  # qclip: the learnable X tokens; the prompt must still fit the text context
BLOCKS = (0, 24)  # clipvqa: sat_layers, vat_layers (released: 1 and 2)
SEED = (0, 2**32 - 1)  # init_seed: the range every seeder (torch, numpy) takes
LEVELS = (2, 32)  # quality level names of a model (Q-CLIP 5, CLIPVQA 6)
STAGES = (1, 4)  # fastvqa: backbone stages (released: 4; each doubles the width)
STAGE_SIZE = (1, 32)  # fastvqa: blocks and heads per stage (released: 2, 2, 6, 2 and 3 … 24)
WINDOW_SIDE = (1, 16)  # fastvqa: window sides (released: 8 × 7 × 7 and 4 × 4 × 4)
EMBED = (1, 256)  # fastvqa: embed_dim (released: 96; the last stage is 8 × wider)
HEAD_WIDTH = (1, 4096)  # fastvqa: head_hidden (released: 64)
VIEWS = (1, 16)  # fastvqa: views averaged (released: 1 or 4)
FEATURE_WIDTH = (1, 4096)  # dvlta: ventral_hidden, adapter_reduction (defaults 64, 4)
TCM_WIDTH = (CBAM_REDUCTION, 1024)  # dvlta: tcm_width (default 64)
KERNEL = (1, 15)  # dvlta: adapter_kernel (default 1)
MODES = ("trained", "zero_shot")
CALIBRATION_KEYS = ("pred_mean", "pred_std", "target_mean", "target_std")

# A rule returns None when the value fits, else what the value must be (the message's middle).
Rule = Callable[[Any], "str | None"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int, hi: int) -> Rule:
    return lambda v: None if _is_int(v) and lo <= v <= hi else f"an integer in {lo}..{hi}"


def finite_number(v: Any) -> str | None:
    return None if _is_number(v) and math.isfinite(v) else "a finite number"


def positive_number(v: Any) -> str | None:
    return None if _is_number(v) and math.isfinite(v) and v > 0 else "a finite number > 0"


def string(v: Any) -> str | None:
    return None if isinstance(v, str) else "a string"


def name(v: Any) -> str | None:
    return None if isinstance(v, str) and v.strip() else "a non-empty string"


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else "true or false"


def one_of(choices: Collection[str]) -> Rule:
    """A string among ``choices``; a registry (a live dict) is read at each check."""
    return lambda v: None if isinstance(v, str) and v in choices else f"one of {', '.join(choices)}"


def sampler(v: Any) -> str | None:
    """A registered sampler's name (``video/sampling.py``: ``check_sampler``)."""
    try:
        check_sampler(v)
        return None
    except ValueError as exc:
        return str(exc).split("; ", 1)[-1]  # "choose one of …"


def int_list(lo: int, hi: int, lengths: tuple[int, int]) -> Rule:
    """A list of ``lengths`` integers, each in ``lo..hi``."""
    def rule(v: Any) -> str | None:
        fits = isinstance(v, (list, tuple)) and lengths[0] <= len(v) <= lengths[1] and all(
            _is_int(x) and lo <= x <= hi for x in v)
        return None if fits else f"a list of {lengths[0]}..{lengths[1]} integers in {lo}..{hi}"
    return rule


def bool_list(lengths: tuple[int, int]) -> Rule:
    def rule(v: Any) -> str | None:
        fits = isinstance(v, (list, tuple)) and lengths[0] <= len(v) <= lengths[1] and all(isinstance(x, bool) for x in v)
        return None if fits else f"a list of {lengths[0]}..{lengths[1]} true/false"
    return rule


def fraction(v: Any) -> str | None:
    return None if _is_number(v) and 0 <= v < 1 else "a number in [0, 1)"


def unit_interval(v: Any) -> str | None:
    return None if _is_number(v) and 0 <= v <= 1 else "a number in [0, 1]"


def subset_of(choices: Collection[str]) -> Rule:
    """A non-empty list of distinct strings among ``choices``."""
    def rule(v: Any) -> str | None:
        fits = isinstance(v, (list, tuple)) and v and all(isinstance(w, str) and w in choices for w in v) and len(
            set(v)) == len(v)
        return None if fits else f"a non-empty list of distinct names among {', '.join(choices)}"
    return rule


def settings(fields: dict[str, Rule]) -> Rule:
    """An object of known settings, each by its rule (a nested config, e.g. dvlta's ventral FAST-VQA)."""
    def rule(v: Any) -> str | None:
        if not isinstance(v, dict):
            return "an object of settings"
        unknown = sorted(set(v) - set(fields))
        if unknown:
            return f"an object of known settings (unknown: {', '.join(map(str, unknown))})"
        for key, inner in fields.items():
            if key in v and (must_be := inner(v[key])) is not None:
                return f"an object whose {key} is {must_be}"
        return None
    return rule


def either(first: Rule, second: Rule) -> Rule:
    return lambda v: None if first(v) is None or second(v) is None else f"{first(v)}, or {second(v)}"


def nullable(rule: Rule) -> Rule:
    return lambda v: None if v is None or rule(v) is None else f"null or {rule(v)}"


def image_size(lo: int, hi: int, *, pairs: bool) -> Rule:
    """A square side in ``lo..hi``, or (``pairs``) ``[H, W]`` of such sides."""
    def rule(v: Any) -> str | None:
        if (_is_int(v) and lo <= v <= hi) or (pairs and _is_pair(v, lo, hi)):
            return None
        return f"an integer in {lo}..{hi}" + (" or [H, W] of two such integers" if pairs else "")
    return rule


def size_pair(lo: int, hi: int) -> Rule:
    return lambda v: None if _is_pair(v, lo, hi) else f"[H, W]: two integers in {lo}..{hi}"


def _is_pair(v: Any, lo: int, hi: int) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(s) and lo <= s <= hi for s in v)


def words(lo: int, hi: int) -> Rule:
    """A list of ``lo..hi`` distinct non-empty strings (level names)."""
    def rule(v: Any) -> str | None:
        fits = (isinstance(v, (list, tuple)) and lo <= len(v) <= hi
                and all(isinstance(w, str) and w.strip() for w in v) and len(set(v)) == len(v))
        return None if fits else f"a list of {lo}..{hi} distinct non-empty strings"
    return rule


def fingerprint(v: Any) -> str | None:
    """``artifact.backbone_fingerprint``'s SHA-256 hex digest."""
    return None if isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v) else "a SHA-256 hex digest (64 of 0-9a-f)"


@dataclass(frozen=True)
class ModelSchema:
    """A family's ``model`` settings: a rule per field, the fields every artifact has, and how the
    settings name the model's levels (``prompts.levels`` must be those) and fix its frame size
    (``preprocess.image_size`` must be ``model.image_size`` where set, or ``frame_size(model)``)."""

    fields: dict[str, Rule]
    required: tuple[str, ...] = ()
    levels: Callable[[dict], Sequence[str]] | None = None
    image_size_is_frame_size: bool = False
    frame_size: Callable[[dict], list[int]] | None = None  # after the fields' rules passed


# What every family's config holds (model/families.py: the input spec): checked for any family.
INPUT_SPEC = {"num_frames": integer(*FRAMES), "sampler": sampler, "preprocessing": one_of(PREPROCESSINGS)}

MODEL_SCHEMAS = {
    "qclip": ModelSchema(  # model/qclip.py: QCLIPConfig
        INPUT_SPEC | {
            "backbone": name,
            "pretrained": nullable(string),
            "adapter_layers": integer(*ADAPTER_LAYERS),
            "shared_dim": integer(*SHARED_DIM),
            "context_tokens": integer(*CONTEXT_TOKENS),
            "image_size": nullable(image_size(*IMAGE_SIDE, pairs=True)),
            "init_seed": integer(*SEED),
            "rope": one_of(ROPES),
        },
        required=("backbone",),
        levels=lambda model: QUALITY_LEVELS,
        image_size_is_frame_size=True,
    ),
    "clipvqa": ModelSchema(  # model/clipvqa/config.py: CLIPVQAConfig
        INPUT_SPEC | {
            "backbone": name,
            "pretrained": nullable(string),
            "image_size": image_size(*IMAGE_SIDE, pairs=False),
            "sat_layers": integer(*BLOCKS),
            "vat_layers": integer(*BLOCKS),
            "vat_alpha": finite_number,
            "quick_gelu": boolean,
            "sat_attention": one_of(SAT_ATTENTIONS),
            "level_words": words(*LEVELS),
            "init_seed": integer(*SEED),
            "mos_scale": positive_number,
        },
        required=("backbone",),
        levels=lambda model: model.get("level_words", LEVEL_WORDS),
        image_size_is_frame_size=True,
    ),
    "fastvqa": ModelSchema(  # model/fastvqa/config.py: FASTVQAConfig (it checks how the fields fit together)
        INPUT_SPEC | {
            "embed_dim": integer(*EMBED),
            "depths": int_list(*STAGE_SIZE, STAGES),
            "num_heads": int_list(*STAGE_SIZE, STAGES),
            "window_size": int_list(*WINDOW_SIDE, (3, 3)),
            "frag_biases": bool_list(STAGES),
            "drop_path_rate": fraction,
            "head_hidden": integer(*HEAD_WIDTH),
            "head_dropout": fraction,
            "image_size": image_size(*IMAGE_SIDE, pairs=True),
            "views": integer(*VIEWS),
            "aligned": integer(*FRAMES),
            "pretrained": nullable(string),
            "init_seed": integer(*SEED),
        },
        image_size_is_frame_size=True,
    ),
}
MODEL_SCHEMAS["dvlta"] = ModelSchema(  # model/dvlta/config.py: DVLTAConfig (it checks how the fields fit together)
    INPUT_SPEC | {
        "ventral": either(one_of(FASTVQA_VARIANTS), settings(MODEL_SCHEMAS["fastvqa"].fields)),
        "ventral_pretrained": nullable(string),
        "ventral_hidden": integer(*FEATURE_WIDTH),
        "backbone": name,
        "pretrained": nullable(string),
        "quick_gelu": boolean,
        "dorsal_stride": integer(*FRAMES),
        "adapter_reduction": integer(*FEATURE_WIDTH),
        "adapter_alpha": unit_interval,
        "adapter_kernel": integer(*KERNEL),
        "tcm_width": integer(*TCM_WIDTH),
        "temporal_op": one_of(TEMPORAL_OPS),
        "branches": subset_of(BRANCHES),
        "fusion": one_of(FUSION_MODES),
        "fusion_prompt": string,
        "positive_prompt": string,
        "negative_prompt": string,
        "score_scale": positive_number,
        "init_seed": integer(*SEED),
    },
    required=("backbone", "ventral"),
    levels=lambda model: DVLTA_LEVELS,
    # the two streams' square halves side by side: (S, 2S), S the ventral stream's side
    frame_size=lambda model: [side := _ventral_side(model.get("ventral", DVLTA_VENTRAL)), 2 * side],
)
DVLTA_VENTRAL = DVLTAConfig.ventral  # the default variant, for a config that does not name one
FASTVQA_IMAGE_SIZE = FASTVQAConfig.image_size
ANY_FAMILY = ModelSchema(INPUT_SPEC)  # a family registered elsewhere (its own config checks the rest)


class _Checker:
    """Stops at the first field that breaks the schema: ``ArtifactContentError``, one line."""

    def __init__(self, where: str):
        self.where = where  # what the message is about: the config.json path, or the artifact being saved

    def fail(self, problem: str) -> NoReturn:
        raise ArtifactContentError(f"{self.where}: {problem}")

    def field(self, path: str, value: Any, rule: Rule) -> None:
        if (must_be := rule(value)) is not None:
            self.fail(f"{path} must be {must_be}, got {_shown(value)}")

    def section(self, config: dict, key: str, *, required: bool) -> dict | None:
        """``config[key]``, an object; None when absent and not ``required``."""
        if key not in config:
            if required:
                self.fail(f"{key} is missing")
            return None
        if not isinstance(config[key], dict):
            self.fail(f"{key} must be an object, got {_shown(config[key])}")
        return config[key]


def check_config(config: Any, where: str) -> None:
    """Raise ``ArtifactContentError`` (``artifact_invalid``) naming the first field of ``config`` (a
    parsed ``config.json``, or the one ``save_artifact`` is about to write) that breaks the schema."""
    check = _Checker(where)
    if not isinstance(config, dict):
        check.fail(f"must be a JSON object, got {_shown(config)}")
    family = config.get("family", DEFAULT_FAMILY)
    check.field("family", family, name)
    schema = MODEL_SCHEMAS.get(family, ANY_FAMILY)

    model = check.section(config, "model", required=True)
    for key in schema.required:
        if key not in model:
            check.fail(f"model.{key} is missing (every {family} artifact names it)")
    for key, rule in schema.fields.items():
        if key in model:
            check.field(f"model.{key}", model[key], rule)

    if "mode" in config:
        check.field("mode", config["mode"], one_of(MODES))
    backbone = check.section(config, "backbone", required=True)
    check.field("backbone.fingerprint", backbone.get("fingerprint"), fingerprint)
    preprocess = check.section(config, "preprocess", required=True)
    check.field("preprocess.image_size", preprocess.get("image_size"), size_pair(*DECODE_SIDE))
    prompts = check.section(config, "prompts", required=False) or {}
    if "levels" in prompts:
        check.field("prompts.levels", prompts["levels"], words(*LEVELS))
    _check_calibration(config.get("calibration"), check)

    # What artifact_spec reads without building the model must be what the model takes and gives:
    # frames are decoded at preprocess.image_size (Ray's decode tasks), and prompts.levels are the
    # CSV's columns while the records carry the model's level names.
    size = model.get("image_size")
    frame, source = None, "model.image_size"
    if schema.image_size_is_frame_size and size is not None:
        frame = [size, size] if _is_int(size) else list(size)
    elif schema.frame_size is not None:
        frame, source = schema.frame_size(model), "the model's frame size"
    if frame is not None and list(preprocess["image_size"]) != frame:
        check.fail(f"preprocess.image_size must equal {source} ({frame}), got {_shown(preprocess['image_size'])}")
    if schema.levels is not None and "levels" in prompts and list(prompts["levels"]) != list(schema.levels(model)):
        check.fail(f"prompts.levels must be the model's levels {list(schema.levels(model))}, got {_shown(prompts['levels'])}")


def _check_calibration(calibration: Any, check: _Checker) -> None:
    """``calibration``: null, or the four numbers of the linear rescale, finite, both spreads > 0
    (whether they map scores to finite MOS is ``artifact.py``'s check, next to ``calibrated_mos``)."""
    if calibration is None:
        return
    if not isinstance(calibration, dict):
        check.fail(f"calibration must be null or an object of {', '.join(CALIBRATION_KEYS)}, got {_shown(calibration)}")
    missing = [k for k in CALIBRATION_KEYS if k not in calibration]
    if missing:
        check.fail(f"calibration lacks {', '.join(missing)} (it needs {', '.join(CALIBRATION_KEYS)})")
    unknown = sorted(set(calibration) - set(CALIBRATION_KEYS))
    if unknown:
        check.fail(f"calibration has keys this version does not know: {unknown}")
    for key in CALIBRATION_KEYS:
        check.field(f"calibration.{key}", calibration[key], finite_number)
    for key in ("pred_std", "target_std"):
        if calibration[key] <= 0:
            check.fail(f"calibration.{key} must be > 0 (a calibration needs pred_std > 0 and target_std > 0), "
                       f"got {_shown(calibration[key])}")


def _ventral_side(ventral: str | dict) -> int:
    """S of a checked dvlta ``ventral`` setting: its variant's or its own ``image_size``."""
    settings = FASTVQA_VARIANTS[ventral] if isinstance(ventral, str) else ventral
    size = settings.get("image_size", FASTVQA_IMAGE_SIZE)
    return size if _is_int(size) else size[0]


def _shown(value: Any, limit: int = 60) -> str:
    """``value`` as JSON (so a string shows its quotes), cut to ``limit`` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
