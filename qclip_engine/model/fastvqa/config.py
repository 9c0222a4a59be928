"""What defines a FAST-VQA model (:class:`FASTVQAConfig`) and the released variants' settings
(``VARIANTS``); stored in an artifact's ``config.json``. Torch-free."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ...defaults import FRAGMENT_SIZE
from ...video.sampling import check_sampler
from .recipe import BASE_INPUT_SIZE

# The released variants (its options/fast/*.yml at evaluation): the backbone's window and fragment
# biases, the fragment grid (image_size = cells × FRAGMENT_SIZE), the frames of one view, the views
# averaged and how many temporal fragments each view holds.
VARIANTS = {
    # FAST-VQA-B (ECCV 2022): 7×7 fragments, one 32-frame clip per view, 4 views averaged.
    "fast-vqa-b": {"image_size": 224, "num_frames": 128, "views": 4, "sampler": "temporal_fragments:4",
                   "window_size": (8, 7, 7), "frag_biases": (True, True, True, False), "aligned": 32},
    # FasterVQA (FAST-VQA-B-3D): 7×7 fragments, 8 temporal fragments of 4 frames, one view.
    "fastervqa": {"image_size": 224, "num_frames": 32, "views": 1, "sampler": "temporal_fragments:8",
                  "window_size": (8, 7, 7), "frag_biases": (True, True, True, False), "aligned": 8},
    # FAST-VQA-M: 4×4 fragments, one 16-frame clip per view, 4 views, small windows, no fragment bias.
    "fast-vqa-m": {"image_size": 128, "num_frames": 64, "views": 4, "sampler": "temporal_fragments:4",
                   "window_size": (4, 4, 4), "frag_biases": (False, False, False, False), "aligned": 8},
}


@dataclass
class FASTVQAConfig:
    """What defines a FAST-VQA model.

    The backbone (``embed_dim``, ``depths``, ``num_heads``, ``window_size``, ``frag_biases``,
    ``drop_path_rate``) is the released Swin-T 3D with its gated fragment bias; the head is the
    released ``Conv3d(C, head_hidden) → GELU → Conv3d(head_hidden, 1)`` with ``head_dropout``. There
    is no pretrained backbone to fetch (``pretrained`` is always ``None``: weights come from a
    released checkpoint through ``qclip-convert fastvqa`` or from training); ``init_seed`` seeds
    the random init.

    The input spec: ``num_frames`` frames (all ``views`` of them: the engine decodes that many)
    chosen by ``sampler`` (``temporal_fragments:T``, ``video/sampling.py``), each made by
    ``preprocessing`` ``fragments`` (``video/fragments.py``: ``image_size // 32`` cells of 32 × 32
    pixels at native resolution). The model splits the frames into ``views`` consecutive clips,
    scores each and averages the scores (the released multi-view evaluation, at ``views`` times the
    cost of one). ``aligned``: while training, each run of that many frames shares one random
    fragment layout (released: 32 for FAST-VQA-B, 8 for FasterVQA); at evaluation every frame takes
    the centred layout.
    """

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: tuple[int, int, int] = (8, 7, 7)
    frag_biases: tuple[bool, ...] = (True, True, True, False)
    drop_path_rate: float = 0.1
    head_hidden: int = 64
    head_dropout: float = 0.5
    image_size: int | tuple[int, int] = 224
    num_frames: int = 32
    views: int = 1
    aligned: int = 32
    pretrained: str | None = None
    init_seed: int = 0
    sampler: str = "temporal_fragments:1"
    preprocessing: str = "fragments"

    def __post_init__(self):
        self.depths, self.num_heads = tuple(self.depths), tuple(self.num_heads)
        self.window_size = tuple(self.window_size)
        self.frag_biases = tuple(bool(b) for b in self.frag_biases)
        if isinstance(self.image_size, (list, tuple)):
            self.image_size = tuple(self.image_size)
        size = self.image_size if isinstance(self.image_size, tuple) else (self.image_size, self.image_size)
        if len(size) != 2 or any(s < FRAGMENT_SIZE or s % FRAGMENT_SIZE for s in size):
            raise ValueError(f"image_size must be a multiple of the {FRAGMENT_SIZE}-pixel fragment on each side, "
                             f"got {self.image_size}")
        stages = len(self.depths)
        if stages < 1 or len(self.num_heads) != stages or len(self.frag_biases) != stages:
            raise ValueError(f"depths, num_heads and frag_biases need one entry per stage: {self.depths}, "
                             f"{self.num_heads}, {self.frag_biases}")
        if self.embed_dim < 1 or any(d < 1 for d in self.depths) or any(h < 1 for h in self.num_heads):
            raise ValueError(f"embed_dim, depths and num_heads must be ≥ 1: {self.embed_dim}, {self.depths}, "
                             f"{self.num_heads}")
        if any((self.embed_dim * 2 ** i) % h for i, h in enumerate(self.num_heads)):
            raise ValueError(f"each stage's width (embed_dim · 2^i) must be a multiple of its heads: "
                             f"embed_dim {self.embed_dim}, num_heads {self.num_heads}")
        if len(self.window_size) != 3 or any(w < 1 for w in self.window_size):
            raise ValueError(f"window_size must be three sizes ≥ 1 (time, height, width), got {self.window_size}")
        if self.views < 1 or self.num_frames < 1 or self.num_frames % self.views:
            raise ValueError(f"num_frames ({self.num_frames}) must be a positive multiple of views ({self.views})")
        if self.aligned < 1 or (self.num_frames // self.views) % self.aligned:
            raise ValueError(f"aligned ({self.aligned}) must divide the frames of one view "
                             f"({self.num_frames // self.views})")
        if self.head_hidden < 1 or not 0 <= self.head_dropout < 1 or not 0 <= self.drop_path_rate < 1:
            raise ValueError("head_hidden must be ≥ 1, head_dropout and drop_path_rate in [0, 1)")
        if self.pretrained is not None:
            raise ValueError("fastvqa has no pretrained weights to fetch: pretrained must be None (convert a released "
                             "checkpoint with qclip-convert fastvqa, or train)")
        self._check_windows(size)
        if check_sampler(self.sampler, self.num_frames).needs_motion:
            raise ValueError(f"fastvqa takes a sampler that reads no motion (its training draws fragment layouts "
                             f"on the frames it picks), e.g. temporal_fragments:T; got {self.sampler!r}")
        if self.preprocessing != "fragments":
            raise ValueError(f"fastvqa models take fragments (preprocessing 'fragments'), got {self.preprocessing!r}")

    def _check_windows(self, size: tuple[int, int]) -> None:
        """The backbone sizes its windows from one view's (frames, H, W) against ``BASE_INPUT_SIZE``
        (floored); each must come out within 1 … ``window_size``, as the released code needs too."""
        view = (self.num_frames // self.views, *size)
        windows = tuple(w * x // b for w, x, b in zip(self.window_size, view, BASE_INPUT_SIZE))
        if any(not 1 <= w <= c for w, c in zip(windows, self.window_size)):
            lo = [-(-b // w) for w, b in zip(self.window_size, BASE_INPUT_SIZE)]
            hi = [(w + 1) * b // w - (1 if (w + 1) * b % w == 0 else 0) for w, b in zip(self.window_size, BASE_INPUT_SIZE)]
            raise ValueError(
                f"one view of {view[0]} frames at {size[0]}×{size[1]} gives backbone windows {windows}, outside "
                f"1 … {self.window_size}: with window_size {self.window_size} a view takes {lo[0]}–{hi[0]} frames "
                f"and {lo[1]}–{hi[1]} × {lo[2]}–{hi[2]} pixels")

    @property
    def frame_size(self) -> tuple[int, int]:
        return self.image_size if isinstance(self.image_size, tuple) else (self.image_size, self.image_size)

    @property
    def frames_per_view(self) -> int:
        return self.num_frames // self.views

    def to_dict(self) -> dict:
        return asdict(self)
