"""The DVLTA-VQA model: the ventral stream (frozen FAST-VQA + eq. 9), the dorsal stream (frozen CLIP
tower + temporal adapter, the Temporal Context Module), the text-guided fusion and the prompt score
(this package's ``__init__.py`` describes it end to end)."""

from __future__ import annotations

import open_clip
import torch
from torch import nn

from ..backbone import create_openai_layout_clip
from ..clipvqa.recipe import PIXEL_MEAN, PIXEL_STD
from ..pixels import normalize_0_255
from ..state import StoresEveryTensor
from .adapter import TemporalCLIPFeatures, patch_tokens_to_maps
from .config import DVLTAConfig
from .fusion import FusionHead, PromptQuality, plcc_loss
from .temporal_context import TemporalContextModule
from .ventral import VentralHead, ventral_backbone

LEVELS = ("negative", "positive")  # level_sims' columns: the similarity to each quality prompt, lower first
FROZEN = ("ventral", "visual", "text")  # the pretrained towers: never trained, always in eval mode
# Each trainable part draws its initial values from its own seed (init_seed + offset), so an ablation
# that drops a branch or swaps the fusion leaves every other part's values as they were.
SEED_OFFSETS = {"ventral_head": 1, "vbtc": 2, "tcm": 3, "fusion": 4, "quality": 5}


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class DVLTA(StoresEveryTensor, nn.Module):
    """DVLTA-VQA: normalised frames ``[B, F, 3, S, 2S]`` (the fragments left, the crop right) →
    score ``[B]`` in (0, 1).

    Modules: ``ventral`` (FAST-VQA's Swin-T 3D, frozen) and ``ventral_head`` (eq. 9) when the
    ``bvfe`` branch is on; ``visual`` (the CLIP tower, frozen) and ``vbtc`` (time mean + adapter)
    when ``vbtc`` is; ``tcm`` when ``tcm`` is; ``text`` (the CLIP model without its visual tower,
    frozen: it encodes the prompts), ``fusion`` (:class:`FusionHead`) and ``quality``
    (:class:`PromptQuality`). The prompt embeddings are buffers of ``fusion`` and ``quality``.
    """

    levels: tuple[str, ...] = LEVELS
    training_output = "score"

    def __init__(self, config: DVLTAConfig):
        super().__init__()
        self.config = config
        c, v = config, config.ventral_config
        side = c.half_size
        self.image_size = c.frame_size
        clip = create_openai_layout_clip(c.backbone, c.pretrained, image_size=side, init_seed=c.init_seed,
                                         quick_gelu=c.quick_gelu, needed_by="DVLTA-VQA's dorsal stream")
        visual = clip.visual
        del clip.visual
        self.text = clip.requires_grad_(False).eval()
        self.tokenizer = open_clip.get_tokenizer(c.backbone)
        dim = visual.proj.shape[1]
        self.embed_dim = dim
        self.grid = tuple(int(g) for g in visual.grid_size)
        self.visual = visual.requires_grad_(False).eval() if "vbtc" in c.branches else None
        self.ventral = self.ventral_head = self.vbtc = self.tcm = None
        if "bvfe" in c.branches:
            self.ventral = ventral_backbone(v, c.ventral_pretrained)  # random: seeded by v.init_seed
            channels = v.embed_dim * 2 ** (len(v.depths) - 1)
            self.ventral_head = _seeded(c.init_seed + SEED_OFFSETS["ventral_head"],
                                        lambda: VentralHead(channels, c.ventral_hidden, dim))
        if "vbtc" in c.branches:
            self.vbtc = _seeded(c.init_seed + SEED_OFFSETS["vbtc"], lambda: TemporalCLIPFeatures(
                dim, c.adapter_reduction, c.adapter_alpha, c.adapter_kernel))
        if "tcm" in c.branches:
            self.tcm = _seeded(c.init_seed + SEED_OFFSETS["tcm"], lambda: TemporalContextModule(
                width=c.tcm_width, temporal_op=c.temporal_op, out_dim=dim))
        self.fusion = _seeded(c.init_seed + SEED_OFFSETS["fusion"],
                              lambda: FusionHead(dim, len(c.branches), c.fusion))
        self.quality = _seeded(c.init_seed + SEED_OFFSETS["quality"], lambda: PromptQuality(dim, c.score_scale))
        self.encode_prompts()
        self.calibration: dict | None = None  # a linear map to a MOS scale, as artifacts store it

    # -- text side (frozen) ------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self) -> None:
        """The frozen text tower's embeddings of the fusion prompt and the two quality prompts,
        into the buffers of ``fusion`` and ``quality`` (constants of the exported graph)."""
        c = self.config
        device = next(self.text.parameters()).device
        tokens = self.tokenizer([c.fusion_prompt, c.positive_prompt, c.negative_prompt]).to(device)
        guide, positive, negative = self.text.encode_text(tokens).float()
        if c.fusion == "text":
            self.fusion.set_text(guide)
        self.quality.set_prompts(positive, negative)

    # -- input -------------------------------------------------------------------------
    @property
    def preprocess(self) -> dict:
        """How frames are prepared, in the engine's terms (mean/std on 0–1): each decoded frame
        becomes the fragments (left) and the short-side/centre crop (right), side by side."""
        return {
            "image_size": list(self.image_size),
            "mean": [m / 255 for m in PIXEL_MEAN],
            "std": [s / 255 for s in PIXEL_STD],
            "interpolation": "none (fragments) | bilinear (crop)",
            "resize_mode": "fragments_and_crop",
        }

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames ``[..., S, 2S, 3]`` → float ``[..., 3, S, 2S]``, ImageNet's mean/std on
        the 0–255 scale (both halves: FAST-VQA's and ViFi-CLIP's pipelines use it)."""
        return normalize_0_255(frames, self.image_size, PIXEL_MEAN, PIXEL_STD, self.quality.positive.dtype)

    # -- the three branches ------------------------------------------------------------
    def ventral_features(self, fragments: torch.Tensor) -> torch.Tensor:
        """F_bvfe: fragments ``[B, F, 3, S, S]`` → ``[B, D]``; the F frames are ``views`` clips of
        the ventral stream, each through the frozen backbone and eq. 9, the views' features averaged."""
        b, f = fragments.shape[:2]
        views = self.config.ventral_config.views
        clips = fragments.reshape(b * views, f // views, *fragments.shape[2:]).transpose(1, 2)
        return self.ventral_head(self.ventral(clips)).reshape(b, views, -1).mean(dim=1)

    def clip_patch_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``[B, T, 3, S, S]`` → the frozen tower's patch tokens after ``ln_post`` and ``proj``,
        as maps ``[B, T, D, h, w]`` (the class token is not a patch)."""
        b, t = frames.shape[:2]
        x = self.visual.transformer(self.visual._embeds(frames.flatten(0, 1)))  # batch-first in and out
        tokens = self.visual.ln_post(x[:, 1:]) @ self.visual.proj
        return patch_tokens_to_maps(tokens.reshape(b, t, *tokens.shape[1:]), *self.grid)

    def branch_features(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, F, 3, S, 2S]`` → the branches' features ``[B, K, D]``, in ``config.branches``' order."""
        if video.ndim != 5 or tuple(video.shape[-2:]) != tuple(self.image_size):
            raise ValueError(f"expected video [B, F, 3, {self.image_size[0]}, {self.image_size[1]}], got shape "
                             f"{tuple(video.shape)}")
        if video.shape[1] != self.config.num_frames:
            raise ValueError(f"the model takes {self.config.num_frames} frames per video, got {video.shape[1]}")
        side = self.config.half_size
        dorsal = video[:, :: self.config.dorsal_stride, :, :, side:]  # every stride-th frame's crop
        features = []
        for branch in self.config.branches:
            if branch == "bvfe":
                features.append(self.ventral_features(video[..., :side]))
            elif branch == "vbtc":
                features.append(self.vbtc(self.clip_patch_tokens(dorsal)))
            else:
                features.append(self.tcm(dorsal.transpose(1, 2)))  # [B, 3, T, S, S]
        return torch.stack(features, dim=1)

    # -- head --------------------------------------------------------------------------
    def fused(self, video: torch.Tensor) -> torch.Tensor:
        """F_fused ``[B, D]`` (eqs. 10–11, or the concat/add ablation), in the fusion's dtype (FP32 in
        every graph, graph.py)."""
        return self.fusion(self.branch_features(video).to(self.quality.positive.dtype))

    def fusion_weights(self, video: torch.Tensor) -> torch.Tensor:
        """Each branch's weight ``[B, K]``: the cosines of eq. 10 (text fusion), 1/K (add)."""
        return self.fusion.weights(self.branch_features(video))

    def level_sims(self, video: torch.Tensor) -> torch.Tensor:
        """``[S−, S+]``: the fused feature's cosine with the negative and the positive prompt, ``[B, 2]``."""
        return self.quality.sims(self.fused(video).float())

    def score_from_sims(self, sims: torch.Tensor) -> torch.Tensor:
        return self.quality.score_from_sims(sims)

    def forward(self, video: torch.Tensor, *, output: str = "score") -> torch.Tensor:
        """The score ``[B]`` (``output="score"``, eq. 13) or the prompt similarities ``[B, 2]`` (``"sims"``)."""
        if output not in ("score", "sims"):
            raise ValueError(f"output must be 'score' or 'sims', got {output!r}")
        sims = self.level_sims(video)
        return sims if output == "sims" else self.score_from_sims(sims)

    # -- training (the family contract, model/families.py) -------------------------------
    def train(self, mode: bool = True) -> DVLTA:
        """Train mode for the trainable parts; the frozen towers stay in eval mode (no dropout, no
        drop path: frozen means the same function in training as in scoring)."""
        super().train(mode)
        for name in FROZEN:
            if (module := getattr(self, name)) is not None:
                module.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr: float = 1e-3, weight_decay: float = 0.0) -> list[dict]:
        """One AdamW group of every trainable tensor (the paper: AdamW, lr 1e-3; weight decay unstated)."""
        return [{"name": "dvlta", "params": self.trainable_parameters(), "lr": lr, "weight_decay": weight_decay}]

    def training_loss(self, score: torch.Tensor, mos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The paper's ``1 − PLCC`` (eqs. 14–15) of the scores and the MOS over the batch."""
        return plcc_loss(score, mos), score

    def evaluation_inputs(self) -> dict[str, torch.Tensor]:
        return {}

    # -- what an artifact holds (model/families.py; the tensors: state.StoresEveryTensor) ----
    def artifact_info(self) -> dict:
        c, v = self.config, self.config.ventral_config
        return {
            "backbone": {"name": c.backbone, "embed_dim": self.embed_dim,
                         "ventral": {"name": "swin-t-3d-fragments", "embed_dim": v.embed_dim, "depths": list(v.depths),
                                     "weights": c.ventral_pretrained}},
            "prompts": {"levels": list(LEVELS), "texts": [c.negative_prompt, c.positive_prompt],
                        "fusion": c.fusion_prompt if c.fusion == "text" else None},
            "preprocess": self.preprocess,
        }
