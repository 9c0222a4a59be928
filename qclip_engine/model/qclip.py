"""The Q-CLIP model, defined once for training, export and the torch backend.

A frozen open_clip backbone made quality-aware by E-SCMA/P-SCMA adapters (``scma``),
five learnable quality-level prompts (``prompts``) and a learned weighting of the five
video–prompt similarities. Semantics follow the official Q-CLIP code:

* frame features are projected per frame, averaged over frames, then L2-normalised;
* text features are L2-normalised; ``s_k = v · t_k``; ``score = Σ_k w_k s_k``;
* adapters act after each of the last K blocks of *both* towers, with ``Core`` shared.

Zero-shot mode (``model.zero_shot = True``) is the model before any training: no
adapters, the prompts without the X tokens, and ``score = Σ_k k · softmax(100 s)_k``
(the expected level on a 1–5 scale).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..contract import QUALITY_LEVELS
from ..defaults import BACKBONE, ONE_INPUT_PREPROCESSINGS, PREPROCESSING, ROPE, ROPES
from ..video.sampling import check_sampler
from .backbone import load_backbone
from .pixels import check_frames
from .prompts import QualityPrompts
from .qclip_losses import qclip_loss
from .scma import ESCMA, PSCMA
from .state import check_state

ZERO_SHOT_LOGIT_SCALE = 100.0


def run_tower(
    tower, x: torch.Tensor, block_kwargs: dict, adapt=None, first_adapted: int = 0, blocks: range | None = None
) -> torch.Tensor:
    """The tower's blocks in order (``blocks``: a part of them, all by default); after each block
    from ``first_adapted`` on, ``adapt(j, x)`` (``j`` counts adapted blocks from 0). The one tower
    loop of the model and its folded form."""
    for i in blocks if blocks is not None else range(len(tower.blocks)):
        x = tower.run_block(i, x, block_kwargs)
        if adapt is not None and i >= first_adapted:
            x = adapt(i - first_adapted, x)
    return x


def level_score(sims: torch.Tensor, level_weights: torch.Tensor, zero_shot: bool) -> torch.Tensor:
    """The score from the level similarities ``[B, 5]``: the learned weighting, or zero-shot the
    expected level ``Σ_k k · softmax(100 s)_k`` (``level_weights`` then holds 1 … 5)."""
    if zero_shot:
        return (sims * ZERO_SHOT_LOGIT_SCALE).softmax(dim=-1) @ level_weights.to(sims.dtype)
    return sims @ level_weights


@dataclass
class QCLIPConfig:
    """What defines a Q-CLIP model; stored in every artifact's ``config.json``.

    ``pretrained``: an open_clip tag of ``backbone`` (``"meta"`` for PE-Core), an
    ``hf-hub:org/repo`` name, a local ``.safetensors``/``.pt`` file, or ``None`` for a
    random-init backbone (tests and demos only) seeded by ``init_seed``.
    ``rope`` and ``preprocessing``: see ``defaults.ROPES`` and ``defaults.PREPROCESSINGS``.
    """

    backbone: str = BACKBONE
    pretrained: str | None = "meta"
    adapter_layers: int = 6
    shared_dim: int = 128
    context_tokens: int = 3
    num_frames: int = 8
    image_size: int | None = None
    sampler: str = "mixed"
    init_seed: int = 0
    rope: str = ROPE
    preprocessing: str = PREPROCESSING

    def __post_init__(self):
        if self.adapter_layers < 1:
            raise ValueError(f"adapter_layers must be ≥ 1, got {self.adapter_layers}")
        if self.shared_dim < 1 or self.context_tokens < 0 or self.num_frames < 1:
            raise ValueError(f"shared_dim, num_frames must be ≥ 1 and context_tokens ≥ 0: {self}")
        check_sampler(self.sampler, self.num_frames)
        if self.rope not in ROPES:
            raise ValueError(f"rope must be one of {ROPES}, got {self.rope!r}")
        if self.preprocessing not in ONE_INPUT_PREPROCESSINGS:
            raise ValueError(f"preprocessing must be one of {ONE_INPUT_PREPROCESSINGS}, got {self.preprocessing!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class QCLIP(nn.Module):
    """Q-CLIP: ``model(video)`` maps normalised frames ``[B, F, 3, H, W]`` to scores ``[B]``."""

    def __init__(self, config: QCLIPConfig):
        super().__init__()
        self.config = config
        bb = load_backbone(
            config.backbone,
            config.pretrained,
            image_size=config.image_size,
            init_seed=config.init_seed,
            rope=config.rope,
        )
        self.backbone = bb.clip  # frozen, eval mode, never in the optimizer
        self.visual_tower, self.text_tower = bb.visual, bb.text  # views of backbone modules
        self.tokenizer = bb.tokenizer
        self.preprocess = bb.preprocess
        self.image_size = bb.image_size
        self.embed_dim = bb.embed_dim

        k = config.adapter_layers
        depth = min(len(bb.visual.blocks), len(bb.text.blocks))
        if k > depth:
            raise ValueError(f"adapter_layers={k} exceeds the depth of the shallower tower ({depth})")
        self.escma = ESCMA(bb.visual.width, bb.text.width, config.shared_dim, k)
        self.pscma = PSCMA(bb.visual.width, bb.text.width, config.shared_dim, bb.embed_dim)
        self.prompts = QualityPrompts(bb.tokenizer, bb.text.token_embedding, config.context_tokens)
        levels = len(QUALITY_LEVELS)
        self.level_weights = nn.Parameter(torch.randn(levels) * levels**-0.5)
        self.register_buffer(
            "zero_shot_level_values", torch.arange(1, levels + 1, dtype=torch.float32), persistent=False
        )
        self.zero_shot = False
        self.calibration: dict | None = None

    # -- bookkeeping -------------------------------------------------------------------
    def train(self, mode: bool = True) -> QCLIP:
        super().train(mode)
        self.backbone.eval()  # the frozen backbone never leaves eval mode
        return self

    @property
    def levels(self) -> tuple[str, ...]:
        """The level names, lowest first: ``level_sims``' columns and the records' ``levels``."""
        return tuple(QUALITY_LEVELS)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors training changes: what an artifact stores."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    # -- what an artifact holds (model/families.py) ------------------------------------
    def artifact_tensors(self) -> dict[str, torch.Tensor]:
        """The trainable tensors: the frozen backbone is rebuilt from the config."""
        return self.trainable_state_dict()

    def load_artifact_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        check_state(self.trainable_state_dict(), tensors)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name in tensors:
                    param.copy_(tensors[name])

    def rebuilt_state(self) -> dict[str, torch.Tensor]:
        """What ``config`` rebuilds on load (fingerprinted by the artifact): the backbone."""
        return self.backbone.state_dict()

    def artifact_info(self) -> dict:
        return {
            "backbone": {
                "name": self.config.backbone,
                "visual_width": self.visual_tower.width,
                "text_width": self.text_tower.width,
                "embed_dim": self.embed_dim,
                "visual_blocks": len(self.visual_tower.blocks),
                "text_blocks": len(self.text_tower.blocks),
            },
            "prompts": {
                "levels": list(QUALITY_LEVELS),
                "texts": self.prompts.texts,
                "zero_shot_texts": self.prompts.zero_shot_texts,
            },
            "preprocess": self.preprocess,
        }

    def adapted_blocks(self, modality: str) -> range:
        blocks = (self.visual_tower if modality == "visual" else self.text_tower).blocks
        return range(len(blocks) - self.config.adapter_layers, len(blocks))

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames ``[..., H, W, 3]`` at model size → normalised float ``[..., 3, H, W]``.

        The backbone's own mean/std; frames are expected already resized to
        ``image_size`` (resizing belongs to decoding).
        """
        check_frames(frames, self.image_size)
        dtype = self.level_weights.dtype
        mean = torch.tensor(self.preprocess["mean"], dtype=dtype, device=frames.device)
        std = torch.tensor(self.preprocess["std"], dtype=dtype, device=frames.device)
        x = (frames.to(dtype) / 255.0 - mean) / std
        return x.movedim(-1, -3)

    # -- towers ------------------------------------------------------------------------
    def _run_blocks(self, tower, modality: str, x: torch.Tensor, block_kwargs: dict) -> torch.Tensor:
        adapt = None if self.zero_shot else (lambda j, h: self.escma(h, modality, j))
        return run_tower(tower, x, block_kwargs, adapt, self.adapted_blocks(modality).start)

    @property
    def trunk_depth(self) -> int:
        """The visual blocks before the first adapted one: the frozen trunk, whose output depends
        on the frames alone (what ``train.cache_trunk`` keeps, ``train/trunk_cache.py``)."""
        return self.adapted_blocks("visual").start

    def encode_trunk(self, images: torch.Tensor) -> torch.Tensor:
        """The tokens entering the first adapted visual block, batch-first ``[N, T, W]``, of
        normalised images ``[N, 3, H, W]``: the first part of :meth:`encode_frames`."""
        return self._trunk(*self.visual_tower.embed(images))

    def _trunk(self, x: torch.Tensor, block_kwargs: dict) -> torch.Tensor:
        tower = self.visual_tower
        x = run_tower(tower, x, block_kwargs, blocks=range(self.trunk_depth))
        return x if getattr(tower, "batch_first", True) else x.transpose(0, 1)

    def encode_after_trunk(self, tokens: torch.Tensor, block_kwargs: dict | None = None) -> torch.Tensor:
        """The rest of :meth:`encode_frames`, from :meth:`encode_trunk`'s tokens ``[N, T, W]``
        (``block_kwargs``: the blocks' arguments ``embed`` gave; they depend on the image size
        alone, so they are rebuilt from one blank image when not given)."""
        tower = self.visual_tower
        if block_kwargs is None:
            blank = tokens.new_zeros((1, 3, *self.image_size))
            block_kwargs = tower.embed(blank)[1]
        x = tokens if getattr(tower, "batch_first", True) else tokens.transpose(0, 1)
        adapt = None if self.zero_shot else (lambda j, h: self.escma(h, "visual", j))
        x = run_tower(tower, x, block_kwargs, adapt, self.trunk_depth, blocks=range(self.trunk_depth, len(tower.blocks)))
        pooled = tower.pool(x)
        projected = tower.project(pooled)
        if self.zero_shot:
            return projected
        return self.pscma(pooled, projected, "visual")

    def encode_frames(self, images: torch.Tensor) -> torch.Tensor:
        """Projected (unnormalised) features of normalised images ``[N, 3, H, W]`` → ``[N, D]``."""
        x, block_kwargs = self.visual_tower.embed(images)
        return self.encode_after_trunk(self._trunk(x, block_kwargs), block_kwargs)

    def forward_video(self, video: torch.Tensor | None = None, *, trunk_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the frame features, ``[B, F, 3, H, W]`` → ``[B, D]`` (unnormalised); or from
        the frames' trunk tokens ``[B, F, T, W]`` (:meth:`encode_trunk`) instead of the frames."""
        if trunk_tokens is not None:
            b, f = trunk_tokens.shape[:2]
            features = self.encode_after_trunk(trunk_tokens.flatten(0, 1))
        else:
            if video is None or video.ndim != 5:
                raise ValueError(f"expected video [B, F, 3, H, W], got {None if video is None else tuple(video.shape)}")
            b, f = video.shape[:2]
            features = self.encode_frames(video.flatten(0, 1))
        return features.view(b, f, -1).mean(dim=1)

    def forward_text(self) -> torch.Tensor:
        """Projected (unnormalised) features of the five level prompts, ``[5, D]``."""
        tower = self.text_tower
        if self.zero_shot:
            embeddings, tokens = self.prompts.zero_shot_embeddings, self.prompts.zero_shot_tokens
        else:
            embeddings, tokens = self.prompts.embeddings(), self.prompts.tokens
        x, block_kwargs = tower.embed(embeddings, tokens)
        x = self._run_blocks(tower, "text", x, block_kwargs)
        pooled = tower.pool(x, tokens)
        projected = tower.project(pooled)
        if self.zero_shot:
            return projected
        return self.pscma(pooled, projected, "text")

    # -- head --------------------------------------------------------------------------
    def level_sims(
        self, video: torch.Tensor | None, text_features: torch.Tensor | None = None, *, trunk_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cosine similarity of each video to each level prompt, ``[B, 5]`` (bad … excellent).

        ``text_features`` (``forward_text()``'s output) lets inference loops run the text
        tower once instead of once per batch; ``trunk_tokens``: see :meth:`forward_video`.
        """
        v = F.normalize(self.forward_video(video, trunk_tokens=trunk_tokens), dim=-1)
        t = F.normalize(self.forward_text() if text_features is None else text_features, dim=-1)
        return v @ t.T

    def score_from_sims(self, sims: torch.Tensor) -> torch.Tensor:
        weights = self.zero_shot_level_values if self.zero_shot else self.level_weights
        return level_score(sims, weights, self.zero_shot)

    def forward(
        self, video: torch.Tensor | None = None, text_features: torch.Tensor | None = None, *,
        trunk_tokens: torch.Tensor | None = None, output: str = "score",
    ) -> torch.Tensor:
        """The score ``[B]`` (``output="score"``) or the level similarities ``[B, 5]`` (``"sims"``)."""
        sims = self.level_sims(video, text_features, trunk_tokens=trunk_tokens)
        if output == "sims":
            return sims
        if output != "score":
            raise ValueError(f"output must be 'score' or 'sims', got {output!r}")
        return self.score_from_sims(sims)

    # -- training (the family contract, model/families.py) -------------------------------
    training_output = "score"  # what forward gives training_loss: the official loss acts on the score

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """AdamW's one group: the trainable tensors (the official optimiser)."""
        return [{"params": self.trainable_parameters(), "lr": lr, "weight_decay": weight_decay}]

    def training_loss(self, score: torch.Tensor, mos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The official ``plcc_loss + 0.3 · rank_loss`` over the batch, and the score itself."""
        return qclip_loss(score, mos), score

    def evaluation_inputs(self) -> dict[str, torch.Tensor]:
        """What stays constant over an evaluation: the level prompts' text features (one text pass)."""
        return {"text_features": self.forward_text()}
