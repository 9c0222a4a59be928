"""FAST-VQA ("FAST-VQA: Efficient End-to-end Video Quality Assessment with Fragment Sampling",
Wu et al., ECCV 2022) and FasterVQA as a model family of this engine.

From a video to its score:

1. **Fragments** (``video/fragments.py``, ``preprocessing="fragments"``): each frame, at its native
   resolution, is cut into a grid of ``image_size // 32`` cells; from each cell one 32 × 32 patch is
   taken and the patches are spliced into one ``image_size`` frame (7 × 7 → 224 × 224), so the model
   sees the source's own pixels (blocking, ringing, noise) rather than a downscale of them. Frames
   smaller than the grid are first upscaled.
2. **Frames** (``video/sampling.py``, ``sampler="temporal_fragments:T"``): T equal segments of the
   video, in each a run of ``num_frames / T`` frames two apart.
3. **Views**: the ``num_frames`` frames are ``views`` consecutive clips; each is scored alone and
   the scores averaged (the released evaluation of FAST-VQA-B: 4 views of 32 frames).
4. **Backbone** (``swin3d.py``): Swin-T 3D — patches of 2 × 4 × 4, four stages of (shifted) window
   attention with patch merging between them — whose attention bias knows the fragments' borders
   (the gated relative position bias, "GRPB").
5. **Head** (``head.py``): ``Conv3d 1×1×1 (C → 64) → GELU → Conv3d (64 → 1)``, a local quality map
   ``[B, 1, T', H', W']``; the score is its mean.

Training (released): ``plcc_loss + 0.3 · rank_loss`` (Q-CLIP's ``qclip_losses.py`` computes the
same), AdamW with two groups (backbone at 0.1 × the head's 1e-3, weight decay 0.05 on every
tensor), random fragment layouts shared by runs of ``aligned`` frames and random temporal offsets.

Unusual points of the released code, reproduced so its checkpoints load and score identically:

* **The fragment gate is not a gate.** A window's bias is ``rel · g + frag · (1 − g)`` with ``g`` the
  L1 distance between the two tokens' fragment coordinates, not a 0/1 "same fragment" flag: tokens
  of one fragment get the fragment table, tokens ``g`` fragments apart ``g · rel − (g − 1) · frag``.
  The fragment coordinates come from a nearest-neighbour upscale of a grid as large as the block's
  window (7 × 7 at 224), not from the 32-pixel cells, and shifted blocks roll them with the tokens.
  The last stage has no fragment table and keeps the plain relative bias.
* **Windows follow the input.** Each block's window is ``(8·T/32, 7·H/224, 7·W/224)`` of the input
  video (floored), clamped to the feature size (the last stage's 7 × 7 map has no spatial shift),
  with the shift still half the *configured* window.
* **Patch merging halves height and width only**; time stays at ``T/2`` through every stage.
* **Scores are raw.** The head's mean is on no fixed scale (the released ``vqa.py`` maps it to
  0 … 1 with a sigmoid of dataset statistics; its evaluation rescales to each dataset's MOS).
* **Short videos wrap around**: frame indices past the end are taken modulo the frame count.
* **Small frames.** A frame smaller than the grid is upscaled (bilinear, by the smaller side's
  ratio) and truncated, not rounded, back to 8 bits; the cells are still laid out on the frame's
  size *before* the upscale, so every patch comes from the upscaled frame's top-left part of
  that size (``video/fragments.py``).

Where ours differs from the released evaluation, deliberately:

* **Deterministic layouts at evaluation.** The released evaluation draws its fragment offsets and
  temporal offsets at random even at test time, so a video's score changes from run to run. A
  served score must be a function of the video: at evaluation ours takes each cell's centred patch
  and each segment's centred run (training keeps the released random draws).

Not reproduced: the released run's exponential moving average of the parameters (0.999, used for
validation and the saved weights) and its schedule's cosine (over all iterations rather than those
after warm-up); ``train.run``'s schedule is the engine's own.

The package: ``recipe.py`` (the released training defaults), ``config.py`` (:class:`FASTVQAConfig`,
the released variants), ``swin3d.py`` (the backbone), ``head.py``, ``model.py`` (:class:`FASTVQA`),
``graph.py`` (the deployable). Released checkpoints convert with ``qclip_engine/convert/fastvqa.py``
(``qclip-convert fastvqa``).
"""

from __future__ import annotations

from .config import VARIANTS, FASTVQAConfig
from .model import FASTVQA

__all__ = ["FASTVQA", "FASTVQAConfig", "VARIANTS"]
