"""CLIPVQA ("CLIPVQA: Video Quality Assessment via CLIP", Xing et al.) as a model family of this engine.

CLIPVQA grows an OpenAI-layout CLIP ViT into a video model (the X-CLIP recipe) and reads quality
off six level words. From frames to score:

1. **Frame perception** — the whole CLIP visual tower, trainable. After every block ``i`` the
   class token of each frame becomes a *message*: ``m = fc_i(cls)``, then
   ``m ← m + MHA_i(LN_i(m))`` with attention across the F frames of the same video; ``m`` is
   appended to that frame's token sequence, so block ``i + 1`` sees it (:class:`FrameMessages`,
   ``modules.py``).
   Afterwards the class token and the L message tokens go through ``ln_post`` and ``proj``
   (``[N, 1 + L, D]``); the patch tokens (after the last block, no ``ln_post``) through their own
   LayerNorm and projection (``[N, P, D]``).
2. **SAT** (:class:`SpatioTemporalAggregation`): the ``F·(1 + L)`` summary tokens of a video, frame
   after frame; the first F of them get a learned position embedding and pass transformer
   block(s), the rest are scaled per channel by a learned ``α``; the mean of all is the video
   feature ``v [B, D]``.
3. **Text**: the frozen CLIP text tower encodes the six bare words ``bad, poor, fair, good, great,
   excellent`` once (``text_features [6, D]``, recomputed whenever weights are loaded).
4. **VAT** (:class:`VideoAwareText`): a frozen ``Conv2d(D, D, kernel (F, 1))`` mixes the projected
   patch tokens over time and channels (:meth:`CLIPVQA.temporal_mix`); the text features
   cross-attend to the result: ``t ← t + α · VAT(t, patches)``.
5. **Head**: ``s_k = cos(v, t_k)`` (:meth:`CLIPVQA.level_sims`), ``p = softmax(e^{logit_scale} s)``
   (:meth:`CLIPVQA.level_probs`), ``score = Σ_k k · p_k`` on 0 … 5 (``forward``). The released code
   maps ``p`` to a score with an SVR fitted outside the model; the expectation is its exportable
   replacement.

Training (released defaults): the target is the label distribution ``q_k ∝ exp(−(MOS − k)²)``
(:func:`label_distribution`), the loss torch's cosine-embedding loss between ``p`` and ``q``
(:func:`clipvqa_loss`), AdamW with the groups of :meth:`CLIPVQA.param_groups`. Frozen: the text
tower, ``logit_scale`` and the temporal conv; trainable: everything else.

Unusual points of the released code, reproduced so its checkpoints load and score identically:

* **Messages accumulate.** Each block appends its message token and keeps it: block ``i`` runs on
  ``1 + P + i`` tokens, and the model ends with ``1 + P + L``. The message is made from the class
  token *after* the block (X-CLIP's is made before the block and dropped after it).
* **ln_post and proj also act on the message tokens**, and all ``1 + L`` of them per frame go on.
* **SAT's "first F tokens" are not the F class tokens.** The summary tokens are laid out frame
  after frame (``cls, m_1 … m_L`` of frame 0, then frame 1, …); SAT gives its position embedding
  and its blocks to the first F tokens of that list (F = 32, L = 12: frame 0's 13, frame 1's 13,
  frame 2's class token and first 5 messages) and only scales the other ``F·L`` ones by ``α``.
* **SAT attends across the batch.** Its blocks feed ``[B, F, D]`` to a sequence-first
  ``nn.MultiheadAttention``: the attention runs over the B *videos* of the batch at each of the F
  positions, never over a video's own tokens, so a video's score depends on the other videos of
  its batch. This engine batches videos as they come (traffic, decode order), and a score must be
  a function of its video alone, so ``sat_attention="alone"`` is the default: every video gets the
  result the released code gives it in a batch of one (one key: ``out_proj(v_proj(LN(x)))``).
  ``sat_attention="batch"`` reproduces the released SAT exactly, for reproducing its training and
  validation (batches of 2); a checkpoint loads the same in either mode (no tensor differs).
* **The temporal conv is frozen at its random init.** ``conv2`` is not in CLIP's weights and its
  name escapes the released ``fix_text`` rule, so it is never trained; a checkpoint carries its
  values (here they follow from ``init_seed``).
* **A reshape where a permute was meant.** The conv's output ``[B, D, 1, P]`` is reshaped (not
  permuted) to ``[B, P, D]``: the VAT's "patch tokens" are the conv's channel-major values cut
  into rows of D.
* **The patch projection starts at std 1** (``randn(width, D)``, no scaling).
* **Activations**: QuickGELU everywhere (the towers too: ``quick_gelu=True`` swaps open_clip's
  GELU, which ``ViT-B-16`` builds by default, for the QuickGELU the OpenAI weights were trained
  with); LayerNorm eps 1e-5; SAT and VAT heads ``D // 64``, message heads those of the tower.
* **Frames are resized without antialiasing.** The evaluation transform scales the short side to
  256 with the long side rounded to nearest (176 × 144 → 313 × 256), takes the centre 224 crop
  with offsets rounded down, and resizes by bilinear with half-pixel centres and no filter
  widening when shrinking (OpenCV's, not PIL's): ``preprocessing="mmcv_short_side_crop"``
  (``video/resize.py``), the default; ``short_side_crop`` is torchvision's rounding and PIL's
  antialiased bilinear.
* **Normalisation** is ImageNet's mean/std (``123.675, 116.28, 103.53`` / ``58.395, 57.12,
  57.375`` on 0–255), not CLIP's, although the tower is OpenAI CLIP.

Parameters at ViT-B/16, 224 px, 32 frames (``tests/test_clipvqa_model.py`` derives them from the
dimensions): 203,330,561 in all = CLIP ViT-B/16 149,620,737 (visual 86,192,640, text and logit
scale 63,428,097) + messages 35,453,952 + SAT 3,169,280 + VAT 6,303,232 + patch LN/projection
394,752 + temporal conv 8,388,608; trainable 131,513,856 (frozen: the text side and the conv).

The package: ``recipe.py`` (level words, pixel statistics, released training defaults),
``config.py`` (:class:`CLIPVQAConfig`), ``modules.py`` (messages, SAT, VAT), ``model.py``
(:class:`CLIPVQA`), ``target.py`` (:func:`label_distribution`, :func:`clipvqa_loss`). Released
checkpoints convert with ``qclip_engine/convert/clipvqa.py`` (``qclip-convert clipvqa``).
"""

from __future__ import annotations

from .config import SAT_ATTENTIONS, CLIPVQAConfig
from .model import CLIPVQA
from .modules import (
    FrameMessages,
    PatchCrossAttention,
    SATBlock,
    SpatioTemporalAggregation,
    VATLayer,
    VideoAwareText,
)
from .recipe import (
    ACCUMULATION_STEPS,
    ADAMW_BETAS,
    ADAMW_EPS,
    BATCH_SIZE,
    CROP_SIZE,
    EPOCHS,
    LEVEL_WORDS,
    LR,
    MIN_LR,
    NEW_MODULE_LR_SCALE,
    PIXEL_MEAN,
    PIXEL_STD,
    RESIZE_SHORT_SIDE,
    WARMUP_EPOCHS,
    WEIGHT_DECAY,
)
from .target import clipvqa_loss, label_distribution

__all__ = [
    "ACCUMULATION_STEPS",
    "ADAMW_BETAS",
    "ADAMW_EPS",
    "BATCH_SIZE",
    "CLIPVQA",
    "CROP_SIZE",
    "CLIPVQAConfig",
    "EPOCHS",
    "FrameMessages",
    "LEVEL_WORDS",
    "LR",
    "MIN_LR",
    "NEW_MODULE_LR_SCALE",
    "PIXEL_MEAN",
    "PIXEL_STD",
    "PatchCrossAttention",
    "RESIZE_SHORT_SIDE",
    "SATBlock",
    "SAT_ATTENTIONS",
    "SpatioTemporalAggregation",
    "VATLayer",
    "VideoAwareText",
    "WARMUP_EPOCHS",
    "WEIGHT_DECAY",
    "clipvqa_loss",
    "label_distribution",
]
