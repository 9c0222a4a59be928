"""What defines a DVLTA-VQA model (:class:`DVLTAConfig`); stored in an artifact's ``config.json``.
Why each default is what it is: this package's ``__init__.py``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..fastvqa.config import VARIANTS, FASTVQAConfig
from ...video.sampling import check_sampler
from .fusion import FUSION_MODES
from .temporal_context import TEMPORAL_OPS

CBAM_REDUCTION = 16  # temporal_context.TemporalContextModule's default: CBAM's channel attention divides by it
TCM_POOL_FRAMES = 3  # temporal_context.TemporalAggregation's default pool_kernel: the dorsal frames it needs
INTEGER_SETTINGS = ("ventral_hidden", "dorsal_stride", "adapter_reduction", "adapter_kernel", "tcm_width", "init_seed",
                    "num_frames")
BRANCHES = ("bvfe", "vbtc", "tcm")  # the paper's F_bvfe (ventral), F_vbtc and F_tcm (dorsal), in its order
PREPROCESSING = "fragments_and_crop"  # one decoded frame: the ventral fragments and the dorsal crop side by side


@dataclass
class DVLTAConfig:
    """What defines a DVLTA-VQA model.

    **Ventral stream** (frozen FAST-VQA backbone, trainable eq. 9 convs): ``ventral`` is a released
    variant name (``fastvqa.VARIANTS``: ``fastervqa``, ``fast-vqa-b``, ``fast-vqa-m``) or a dict of
    :class:`~qclip_engine.model.fastvqa.FASTVQAConfig` settings; ``ventral_pretrained`` the
    ``qclip-convert fastvqa`` output directory (or its ``model.safetensors``) whose backbone is
    loaded, or ``None`` (a random backbone seeded by the ventral settings' own ``init_seed``:
    tests, the demo). The
    ventral settings fix the input: ``num_frames``, ``sampler`` (unless set here) and the square
    half size S (the ventral ``image_size``). ``ventral_hidden``: Conv3D_1's width.

    **Dorsal stream**: ``backbone`` / ``pretrained`` / ``quick_gelu`` as CLIPVQA takes them (an
    OpenAI-layout open_clip ViT; ViFi-CLIP's weights are one, converted to open_clip's layout),
    frozen, built at S; every ``dorsal_stride``-th of the ``num_frames`` frames goes through it
    and through the Temporal Context Module. ``adapter_reduction``, ``adapter_alpha`` and
    ``adapter_kernel``: the temporal CLIP's adapter (eqs. 3–4); ``tcm_width`` and ``temporal_op``
    (``tadaconv`` | ``c3d`` | ``r2plus1d``: the Table III ablation): the Temporal Context Module.

    **Fusion and score**: ``branches`` (any non-empty subset of ``bvfe``, ``vbtc``, ``tcm``: the
    Table IV ablation drops one), ``fusion`` (``text`` | ``concat`` | ``add``: the Fig. 2
    ablation), ``fusion_prompt`` (the text whose embedding weighs the branches), ``positive_prompt``
    / ``negative_prompt`` (eqs. 12–13) and ``score_scale`` (the softmax's scale; the paper's is 1).

    The input spec: ``num_frames`` frames chosen by ``sampler``, each made by
    ``fragments_and_crop`` (``video/resize.py``): a frame of (S, 2S), the fragments on the
    left, the short-side-256/centre-224 crop (at S = 224) on the right, from one decode.
    """

    ventral: Any = "fastervqa"
    ventral_pretrained: str | None = None
    ventral_hidden: int = 64
    backbone: str = "ViT-B-16"
    pretrained: str | None = "openai"
    quick_gelu: bool = True
    dorsal_stride: int = 2
    adapter_reduction: int = 4
    adapter_alpha: float = 0.4
    adapter_kernel: int = 1
    tcm_width: int = 64
    temporal_op: str = "tadaconv"
    branches: tuple[str, ...] = BRANCHES
    fusion: str = "text"
    fusion_prompt: str = "the quality of this video"
    positive_prompt: str = "high quality"
    negative_prompt: str = "low quality"
    score_scale: float = 1.0
    init_seed: int = 0
    num_frames: int | None = None
    sampler: str | None = None
    preprocessing: str = PREPROCESSING

    def __post_init__(self):
        for name in INTEGER_SETTINGS:  # a float from YAML (2.0) would pass the checks and fail in forward
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if isinstance(self.ventral, str):
            if self.ventral not in VARIANTS:
                raise ValueError(f"ventral must be a FAST-VQA variant {sorted(VARIANTS)} or a dict of its settings, "
                                 f"got {self.ventral!r}")
            settings = dict(VARIANTS[self.ventral])
        elif isinstance(self.ventral, dict):
            settings = dict(self.ventral)
        else:
            raise ValueError(f"ventral must be a FAST-VQA variant name or a dict of its settings, got {self.ventral!r}")
        settings.pop("family", None)
        try:  # not a field: to_dict() stores it as the ventral settings
            self.ventral_config = FASTVQAConfig(**settings)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ventral: {exc}") from None
        v = self.ventral_config
        half = v.frame_size
        if half[0] != half[1]:
            raise ValueError(f"the ventral stream's image_size must be square (the dorsal crop is), got {half}")

        if self.num_frames is None:
            self.num_frames = v.num_frames
        if self.num_frames != v.num_frames:
            raise ValueError(f"num_frames ({self.num_frames}) must be the ventral stream's ({v.num_frames}): "
                             f"the frozen FAST-VQA sizes its windows from them")
        if self.sampler is None:
            self.sampler = v.sampler
        if check_sampler(self.sampler, self.num_frames).needs_motion:
            raise ValueError(f"dvlta takes a sampler that reads no motion (its training draws fragment layouts on the "
                             f"frames it picks), e.g. {v.sampler}; got {self.sampler!r}")
        if self.preprocessing != PREPROCESSING:
            raise ValueError(f"dvlta models take {PREPROCESSING!r} frames (one decode makes both streams' inputs), "
                             f"got {self.preprocessing!r}")
        if self.dorsal_stride < 1 or (self.num_frames // v.views) % self.dorsal_stride:
            raise ValueError(f"dorsal_stride ({self.dorsal_stride}) must be ≥ 1 and divide the frames of one view "
                             f"({self.num_frames // v.views})")
        if self.num_frames // self.dorsal_stride < TCM_POOL_FRAMES:
            raise ValueError(f"the dorsal stream's {self.num_frames // self.dorsal_stride} frames (num_frames "
                             f"{self.num_frames} / dorsal_stride {self.dorsal_stride}) are fewer than the "
                             f"{TCM_POOL_FRAMES} its Temporal Context Module pools over")
        self.branches = tuple(self.branches)
        if not self.branches or len(set(self.branches)) != len(self.branches) or set(self.branches) - set(BRANCHES):
            raise ValueError(f"branches must be distinct names among {BRANCHES}, got {self.branches}")
        self.branches = tuple(b for b in BRANCHES if b in self.branches)  # the paper's order, whatever was written
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        if self.temporal_op not in TEMPORAL_OPS:
            raise ValueError(f"temporal_op must be one of {TEMPORAL_OPS}, got {self.temporal_op!r}")
        if not 0.0 <= self.adapter_alpha <= 1.0:
            raise ValueError(f"adapter_alpha must lie in [0, 1] (eq. 4), got {self.adapter_alpha}")
        if self.adapter_reduction < 1 or self.adapter_kernel < 1 or self.adapter_kernel % 2 == 0:
            raise ValueError(f"adapter_reduction must be ≥ 1 and adapter_kernel odd, got {self.adapter_reduction}, "
                             f"{self.adapter_kernel}")
        if self.ventral_hidden < 1 or self.tcm_width < CBAM_REDUCTION:
            raise ValueError(f"ventral_hidden must be ≥ 1 and tcm_width ≥ {CBAM_REDUCTION} (CBAM's channel reduction), "
                             f"got {self.ventral_hidden}, {self.tcm_width}")
        if not self.score_scale > 0:
            raise ValueError(f"score_scale must be > 0, got {self.score_scale}")
        for name in ("fusion_prompt", "positive_prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"{name} must be a non-empty text")

    @property
    def half_size(self) -> int:
        """S: each stream's square frame side (the ventral ``image_size``)."""
        return self.ventral_config.frame_size[0]

    @property
    def frame_size(self) -> tuple[int, int]:
        """The decoded frame: (S, 2S), the two halves side by side."""
        return self.half_size, 2 * self.half_size

    @property
    def aligned(self) -> int:
        """Training: frames sharing one random fragment layout (the ventral stream's)."""
        return self.ventral_config.aligned

    def to_dict(self) -> dict:
        out = asdict(self)
        # the ventral stream's settings in full, so an artifact rebuilds it whatever the variants become
        out["ventral"] = self.ventral_config.to_dict()
        return out
