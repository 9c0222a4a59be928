"""The CLIPVQA model: the CLIP tower with frame messages, SAT, the frozen temporal conv, VAT and the
level head (this package's ``__init__.py`` describes it end to end)."""

from __future__ import annotations

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ...defaults import short_side_for_crop
from ..backbone import create_openai_layout_clip
from ..pixels import normalize_0_255
from ..state import StoresEveryTensor
from .config import CLIPVQAConfig
from .modules import FrameMessages, SpatioTemporalAggregation, VideoAwareText
from .recipe import ADAMW_BETAS, ADAMW_EPS, LR, NEW_MODULE_LR_SCALE, PIXEL_MEAN, PIXEL_STD, WEIGHT_DECAY
from .target import clipvqa_loss, label_distribution


def cosine_sims(video: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """``cos(v_b, t_bk)`` ``[B, K]`` of features ``[B, D]`` and texts ``[B, K, D]``, in FP32 at least."""
    dtype = torch.promote_types(video.dtype, torch.float32)
    return torch.einsum("bd,bkd->bk", F.normalize(video.to(dtype), dim=-1), F.normalize(texts.to(dtype), dim=-1))


class CLIPVQA(StoresEveryTensor, nn.Module):
    """CLIPVQA: normalised frames ``[B, F, 3, H, W]`` (F = ``num_frames``) → score ``[B]`` on 0 … 5.

    Modules: ``visual`` (open_clip ``VisionTransformer``, trainable), ``messages`` (one
    :class:`FrameMessages` per block), ``patch_norm`` / ``patch_proj``, ``sat``, ``temporal_conv``
    (frozen), ``vat``, ``text`` (the open_clip model without its visual tower, frozen; it also holds
    ``logit_scale``, frozen). ``text_features [K, D]`` is a buffer computed from ``text``.
    """

    def __init__(self, config: CLIPVQAConfig):
        super().__init__()
        self.config = config
        clip = create_openai_layout_clip(config.backbone, config.pretrained, image_size=config.image_size,
                                         init_seed=config.init_seed, quick_gelu=config.quick_gelu, needed_by="CLIPVQA")
        visual = clip.visual
        del clip.visual
        self.visual = visual
        self.text = clip.requires_grad_(False).eval()
        self.tokenizer = open_clip.get_tokenizer(config.backbone)
        self.image_size = tuple(int(s) for s in visual.image_size)
        self.batch_first = getattr(visual.transformer, "batch_first", True)

        width = visual.transformer.width
        dim = visual.proj.shape[1]
        frames = config.num_frames
        heads = visual.transformer.resblocks[0].attn.num_heads
        self.embed_dim = dim
        self.num_patches = visual.grid_size[0] * visual.grid_size[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed + 1)
            self.messages = nn.ModuleList(FrameMessages(width, heads) for _ in visual.transformer.resblocks)
            self.patch_norm = nn.LayerNorm(width)
            self.patch_proj = nn.Parameter(torch.randn(width, dim))
            self.sat = SpatioTemporalAggregation(dim, frames, config.sat_layers, across=config.sat_attention)
            self.temporal_conv = nn.Conv2d(dim, dim, kernel_size=(frames, 1), bias=False).requires_grad_(False)
            self.vat = VideoAwareText(dim, config.vat_layers, config.vat_alpha)

        with torch.device("cpu"):  # token ids are data even when the model is built on ``meta``
            tokens = self.tokenizer(list(config.level_words))
        self.register_buffer("text_tokens", tokens, persistent=False)
        self.register_buffer("text_features", torch.empty(len(config.level_words), dim), persistent=False)
        self.register_buffer(
            "level_values", torch.arange(len(config.level_words), dtype=torch.float32), persistent=False
        )
        self.refresh_text_features()
        self.register_load_state_dict_post_hook(lambda module, _keys: module.refresh_text_features())
        self.calibration: dict | None = None  # a linear map to a MOS scale, as artifacts store it

    # -- bookkeeping -------------------------------------------------------------------
    def train(self, mode: bool = True) -> CLIPVQA:
        super().train(mode)
        if self.text is not None:  # None in a deployable view (graph.py), which never runs it
            self.text.eval()  # frozen: never in training mode
        return self

    @torch.no_grad()
    def refresh_text_features(self) -> None:
        """Encode the level words with the (frozen) text tower into ``text_features``; runs after
        every ``load_state_dict``. Nothing to compute on the ``meta`` device."""
        weight = next(self.text.parameters())
        if weight.is_meta:
            return
        tokens = self.text_tokens.to(weight.device)
        features = self.text.encode_text(tokens)
        self.text_features = features.to(device=weight.device, dtype=weight.dtype)

    @property
    def preprocess(self) -> dict:
        """How frames are prepared, in the engine's terms (mean/std on 0–1), plus the released
        test-time resize: short side to ``resize_short_side``, centre crop of ``image_size``."""
        return {
            "image_size": list(self.image_size),
            "mean": [m / 255 for m in PIXEL_MEAN],
            "std": [s / 255 for s in PIXEL_STD],
            "interpolation": "bilinear",
            "resize_mode": "shortest",
            "resize_short_side": short_side_for_crop(self.image_size),  # 256 at 224, the released sizes
        }

    # -- what an artifact holds (model/families.py; the tensors: state.StoresEveryTensor) ----
    def artifact_info(self) -> dict:
        visual, text = self.visual.transformer, self.text.transformer
        return {
            "backbone": {
                "name": self.config.backbone,
                "visual_width": visual.width,
                "text_width": text.width,
                "embed_dim": self.embed_dim,
                "visual_blocks": len(visual.resblocks),
                "text_blocks": len(text.resblocks),
            },
            "prompts": {"levels": list(self.config.level_words), "texts": list(self.config.level_words)},
            "preprocess": self.preprocess,
        }

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr: float = LR, weight_decay: float = WEIGHT_DECAY) -> list[dict]:
        """The released optimizer's eight groups, in its order: CLIP tower (``lr``), SAT, VAT and
        patch projection, messages (``NEW_MODULE_LR_SCALE × lr`` each), each split into
        with/without weight decay. No decay: 1-D tensors, biases, position embeddings. Each group
        carries the released AdamW ``betas`` and ``eps``: ``torch.optim.AdamW(groups)``."""
        no_decay_ids = {id(self.visual.positional_embedding), id(self.sat.frame_pos)}
        roles = (
            ("clip", lr, [self.visual]),
            ("sat", lr * NEW_MODULE_LR_SCALE, [self.sat]),
            ("vat", lr * NEW_MODULE_LR_SCALE, [self.vat, self.patch_norm, self.patch_proj]),
            ("messages", lr * NEW_MODULE_LR_SCALE, [self.messages]),
        )
        groups = []
        for role, role_lr, owners in roles:
            named = []
            for owner in owners:
                if isinstance(owner, nn.Parameter):
                    named.append(("patch_proj", owner))
                else:
                    named.extend(owner.named_parameters())
            decay, plain = [], []
            for name, p in named:
                if not p.requires_grad:
                    continue
                skip = p.ndim <= 1 or name.endswith(".bias") or id(p) in no_decay_ids
                (plain if skip else decay).append(p)
            adam = {"lr": role_lr, "betas": ADAMW_BETAS, "eps": ADAMW_EPS}
            groups.append({"name": f"{role}_decay", "params": decay, "weight_decay": weight_decay} | adam)
            groups.append({"name": f"{role}_no_decay", "params": plain, "weight_decay": 0.0} | adam)
        return groups

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames ``[..., H, W, 3]`` at model size → float ``[..., 3, H, W]`` with the
        released code's ImageNet mean/std (``(x − mean) / std`` on the 0–255 scale)."""
        return normalize_0_255(frames, self.image_size, PIXEL_MEAN, PIXEL_STD, self.patch_proj.dtype)

    # -- video side --------------------------------------------------------------------
    def _block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        block = self.visual.transformer.resblocks[index]
        if self.batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    def encode_frames(self, images: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images ``[N·F, 3, H, W]`` (F consecutive images per video) → summary tokens
        ``[N·F, 1 + L, D]`` (class token, then the L messages, after ``ln_post`` and ``proj``) and
        the patch tokens ``[N·F, P, width]`` of the last block."""
        v = self.visual
        x = v._embeds(images)  # conv1, class token, position embedding, ln_pre: [N·F, 1 + P, width]
        length = x.shape[1]
        for i, messages in enumerate(self.messages):
            x = self._block(i, x)
            x = torch.cat([x, messages(x[:, 0], frames).unsqueeze(1)], dim=1)
        summary = v.ln_post(torch.cat([x[:, :1], x[:, length:]], dim=1)) @ v.proj
        return summary, x[:, 1:length]

    def encode_video(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, F, 3, H, W]`` → video feature ``[B, D]`` (SAT, unnormalised) and projected patch
        tokens ``[B, F, P, D]``."""
        if video.ndim != 5:
            raise ValueError(f"expected video [B, F, 3, H, W], got shape {tuple(video.shape)}")
        b, f = video.shape[:2]
        if f != self.config.num_frames:
            raise ValueError(f"the model takes {self.config.num_frames} frames per video, got {f}")
        summary, patches = self.encode_frames(video.flatten(0, 1), f)
        patches = self.patch_norm(patches) @ self.patch_proj
        return self.sat(summary.reshape(b, -1, summary.shape[-1])), patches.reshape(b, f, -1, patches.shape[-1])

    def temporal_mix(self, patches: torch.Tensor) -> torch.Tensor:
        """Projected patch tokens ``[B, F, P, D]`` → the VAT's memory ``[B, P, D]``: the frozen conv
        over (frames × channels), then the released *reshape* of ``[B, D, 1, P]`` to ``[B, P, D]``."""
        b, _, p, d = patches.shape
        return self.temporal_conv(patches.permute(0, 3, 1, 2)).reshape(b, p, d)

    # -- head --------------------------------------------------------------------------
    def video_and_texts(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The video feature ``[B, D]`` and the video-adapted level texts ``[B, K, D]`` (VAT)."""
        v, patches = self.encode_video(video)
        memory = self.temporal_mix(patches)
        text = self.text_features.to(self.patch_proj.dtype).unsqueeze(0).expand(v.shape[0], -1, -1)
        return v, text + self.vat(text, memory)

    def level_sims(self, video: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each video to each video-adapted level text, ``[B, K]``."""
        return cosine_sims(*self.video_and_texts(video))

    @property
    def levels(self) -> tuple[str, ...]:
        """The level names, lowest first: ``level_sims``' columns and the records' ``levels``."""
        return tuple(self.config.level_words)

    def probs_from_sims(self, sims: torch.Tensor) -> torch.Tensor:
        return (self.text.logit_scale.exp() * sims).softmax(dim=-1)

    def score_from_sims(self, sims: torch.Tensor) -> torch.Tensor:
        return self.probs_from_sims(sims) @ self.level_values.to(sims.dtype)

    def level_probs(self, video: torch.Tensor) -> torch.Tensor:
        """``softmax(e^{logit_scale} · level_sims)``, ``[B, K]``: what the released model returns."""
        return self.probs_from_sims(self.level_sims(video))

    def forward(self, video: torch.Tensor, *, output: str = "score") -> torch.Tensor:
        """The expected level ``Σ_k k · p_k``, ``[B]`` on 0 … K−1 (``output="score"``), or the level
        similarities ``[B, K]`` (``"sims"``)."""
        sims = self.level_sims(video)
        if output == "sims":
            return sims
        if output != "score":
            raise ValueError(f"output must be 'score' or 'sims', got {output!r}")
        return self.score_from_sims(sims)

    # -- training (the family contract, model/families.py) -------------------------------
    training_output = "sims"  # the loss compares the level probabilities with the label distribution

    def training_loss(self, sims: torch.Tensor, mos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The released loss, ``clipvqa_loss(p, label_distribution(MOS / mos_scale))``, and the
        score ``Σ_k k · p_k`` (``p = softmax(e^{logit_scale} · sims)``)."""
        probs = self.probs_from_sims(sims.float())
        target = label_distribution(mos.float(), len(self.config.level_words), self.config.mos_scale)
        return clipvqa_loss(probs, target), probs @ self.level_values

    def evaluation_inputs(self) -> dict[str, torch.Tensor]:
        """Nothing is constant over an evaluation beyond the model (the text features are a buffer)."""
        return {}
