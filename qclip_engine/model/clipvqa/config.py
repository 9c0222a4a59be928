"""What defines a CLIPVQA model (:class:`CLIPVQAConfig`); stored in an artifact's ``config.json``.
Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...defaults import ONE_INPUT_PREPROCESSINGS
from ...video.sampling import check_sampler
from .recipe import CROP_SIZE, LEVEL_WORDS

# How SAT's attention treats the videos of a batch (modules.SpatioTemporalAggregation): "alone"
# gives each video the result it would get as the only one of its batch; "batch" attends across
# the videos at each position, as the released code does.
SAT_ATTENTIONS = ("alone", "batch")


@dataclass
class CLIPVQAConfig:
    """What defines a CLIPVQA model.

    ``backbone``: an open_clip model with an OpenAI-layout ViT (``VisionTransformer``, class-token
    pooling, a projection). ``pretrained``: as :func:`qclip_engine.model.backbone.create_clip`
    takes it (``"openai"``: the weights the released code starts from), or ``None`` for a random
    backbone seeded by ``init_seed``. The new modules are initialised from ``init_seed + 1``, so the
    frozen temporal conv follows from the config. ``num_frames`` is fixed by the model (the SAT
    position embedding and the temporal conv's kernel have that length).

    ``sat_attention``: ``"alone"`` (the default) scores every video as the released code scores it
    in a batch of one, so a video's score depends on that video only, whatever else the engine
    happens to batch with it (it batches by traffic and decode order). ``"batch"`` is the released
    SAT exactly: its attention runs across the videos of the batch, so a score depends on the other
    videos of its batch; use it to reproduce the released training and validation (batches of 2).

    The input spec, as the released data pipeline has it: ``num_frames`` frames chosen by
    ``sampler`` (``segment_middle``: one frame per equal segment, the middle one at test), made
    by ``preprocessing`` (``mmcv_short_side_crop``: the short side to 256, then the centre 224
    crop, with the released transform's rounding and non-antialiased bilinear;
    ``defaults.short_side_for_crop`` at other sizes) and normalised with ImageNet's mean/std.
    Artifacts made before it record ``short_side_crop`` (PIL's antialiased bilinear) and keep it.

    ``mos_scale``: training targets are ``label_distribution(MOS / mos_scale)`` on 0 … 5 (the
    released code: 1 for datasets scored 1–5, 20 for 0–100 ones).
    """

    backbone: str = "ViT-B-16"
    pretrained: str | None = "openai"
    num_frames: int = 32
    image_size: int = CROP_SIZE
    sat_layers: int = 1
    vat_layers: int = 2
    vat_alpha: float = 0.1
    quick_gelu: bool = True
    sat_attention: str = "alone"
    level_words: tuple[str, ...] = LEVEL_WORDS
    init_seed: int = 0
    sampler: str = "segment_middle"
    preprocessing: str = "mmcv_short_side_crop"
    mos_scale: float = 1.0

    def __post_init__(self):
        self.level_words = tuple(self.level_words)
        if self.num_frames < 1 or self.sat_layers < 0 or self.vat_layers < 0 or self.image_size < 1:
            raise ValueError(f"num_frames, image_size must be ≥ 1 and sat_layers, vat_layers ≥ 0: {self}")
        if self.sat_attention not in SAT_ATTENTIONS:
            raise ValueError(f"sat_attention must be one of {SAT_ATTENTIONS}, got {self.sat_attention!r}")
        if len(self.level_words) < 2:
            raise ValueError(f"need at least two level words, got {self.level_words}")
        check_sampler(self.sampler, self.num_frames)
        if self.preprocessing not in ONE_INPUT_PREPROCESSINGS:
            raise ValueError(f"preprocessing must be one of {ONE_INPUT_PREPROCESSINGS}, got {self.preprocessing!r}")
        if not self.mos_scale > 0:
            raise ValueError(f"mos_scale must be > 0, got {self.mos_scale}")

    def to_dict(self) -> dict:
        return asdict(self)
