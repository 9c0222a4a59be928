"""The FAST-VQA model: fragments in, the Swin-T 3D with fragment-gated window attention, the score
map head, the mean of the map per view and of the views (this package's ``__init__.py`` describes
it end to end)."""

from __future__ import annotations

import torch
from torch import nn

from ..clipvqa.recipe import PIXEL_MEAN, PIXEL_STD
from ..pixels import normalize_0_255
from ..qclip_losses import qclip_loss
from ..state import StoresEveryTensor
from .config import FASTVQAConfig
from .head import VQAHead
from .recipe import ADAMW_BETAS, ADAMW_EPS, BACKBONE_LR_SCALE, LR, WEIGHT_DECAY
from .swin3d import SwinTransformer3D


class FASTVQA(StoresEveryTensor, nn.Module):
    """FAST-VQA: normalised fragment frames ``[B, F, 3, H, W]`` (F = ``num_frames``, ``views``
    consecutive clips) → score ``[B]``, the mean of the head's local quality map over each view,
    averaged over the views.

    Modules: ``backbone`` (the Swin-T 3D, ``swin3d.py``) and ``head`` (``head.py``); every tensor
    trains (the released optimiser gives the backbone ``BACKBONE_LR_SCALE`` × the head's rate)."""

    levels: tuple[str, ...] = ()  # no quality levels: the head regresses the score directly
    training_output = "score"

    def __init__(self, config: FASTVQAConfig):
        super().__init__()
        self.config = config
        self.image_size = config.frame_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed)
            self.backbone = SwinTransformer3D(
                embed_dim=config.embed_dim, depths=config.depths, num_heads=config.num_heads,
                window_size=config.window_size, frag_biases=config.frag_biases,
                drop_path_rate=config.drop_path_rate)
            width = config.embed_dim * 2 ** (len(config.depths) - 1)
            self.head = VQAHead(width, config.head_hidden, config.head_dropout)
        self.calibration: dict | None = None  # a linear map to a MOS scale, as artifacts store it

    # -- input -------------------------------------------------------------------------
    @property
    def preprocess(self) -> dict:
        """How frames are prepared, in the engine's terms (mean/std on 0–1): fragments at native
        resolution, cells of ``FRAGMENT_SIZE`` pixels (``video/fragments.py``)."""
        return {
            "image_size": list(self.image_size),
            "mean": [m / 255 for m in PIXEL_MEAN],
            "std": [s / 255 for s in PIXEL_STD],
            "interpolation": "none (fragments at native resolution)",
            "resize_mode": "fragments",
        }

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames ``[..., H, W, 3]`` at model size → float ``[..., 3, H, W]`` with the
        released ImageNet mean/std on the 0–255 scale."""
        return normalize_0_255(frames, self.image_size, PIXEL_MEAN, PIXEL_STD, self.head.fc_last.weight.dtype)

    # -- scoring -----------------------------------------------------------------------
    def view_scores(self, video: torch.Tensor, views: int) -> torch.Tensor:
        """``[B, F, 3, H, W]`` → each view's score ``[B, views]``: the frames split into ``views``
        consecutive clips, each through the backbone (``[N, 3, T, H, W]``) and the head, the mean
        of its quality map."""
        if video.ndim != 5:
            raise ValueError(f"expected video [B, F, 3, H, W], got shape {tuple(video.shape)}")
        b, f = video.shape[:2]
        if f % views:
            raise ValueError(f"{f} frames do not split into {views} views")
        clips = video.reshape(b * views, f // views, *video.shape[2:]).transpose(1, 2)
        quality_map = self.head(self.backbone(clips))  # [B·V, 1, T', H', W']
        return quality_map.float().mean(dim=(1, 2, 3, 4)).reshape(b, views)  # the mean in FP32 at any precision

    def forward(self, video: torch.Tensor, *, output: str = "score") -> torch.Tensor:
        """The score ``[B]`` (``output="score"``), or the level similarities, ``[B, 0]`` (``"sims"``:
        FAST-VQA has none). Training runs on whatever frames it is given: ``num_frames`` make
        ``views`` views; the frames of one view make one."""
        if output not in ("score", "sims"):
            raise ValueError(f"output must be 'score' or 'sims', got {output!r}")
        if output == "sims":
            return self.level_sims(video)
        frames = video.shape[1] if video.ndim == 5 else 0
        views = self.config.views if frames == self.config.num_frames else 1
        return self.view_scores(video, views).mean(dim=1)

    def level_sims(self, video: torch.Tensor) -> torch.Tensor:
        """No quality levels: ``[B, 0]``."""
        return video.new_zeros((video.shape[0], 0), dtype=torch.float32)

    # -- training (the family contract, model/families.py) -------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr: float = LR, weight_decay: float = WEIGHT_DECAY) -> list[dict]:
        """The released optimiser's two groups: the backbone at ``BACKBONE_LR_SCALE × lr``, the head
        at ``lr``; the same weight decay on every tensor (biases and norms included), AdamW's
        default betas and eps."""
        adam = {"betas": ADAMW_BETAS, "eps": ADAMW_EPS, "weight_decay": weight_decay}
        return [
            {"name": "backbone", "params": [p for p in self.backbone.parameters() if p.requires_grad],
             "lr": lr * BACKBONE_LR_SCALE} | adam,
            {"name": "head", "params": [p for p in self.head.parameters() if p.requires_grad], "lr": lr} | adam,
        ]

    def training_loss(self, score: torch.Tensor, mos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The released ``plcc_loss + 0.3 · rank_loss`` on the scores (Q-CLIP's, ``qclip_losses.py``)."""
        return qclip_loss(score, mos), score

    def evaluation_inputs(self) -> dict[str, torch.Tensor]:
        return {}

    # -- what an artifact holds (model/families.py; the tensors: state.StoresEveryTensor) ----
    def artifact_info(self) -> dict:
        c = self.config
        return {
            "backbone": {"name": "swin-t-3d-fragments", "embed_dim": c.embed_dim, "depths": list(c.depths),
                         "window_size": list(c.window_size)},
            "preprocess": self.preprocess,
        }
