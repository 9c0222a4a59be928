"""CLIPVQA's fixed choices outside the network: the level words, the released data pipeline's
pixel statistics and sizes, and the released training defaults (its config defaults and the
32-frame ViT-B/16 config). Torch-free."""

from __future__ import annotations

from ...defaults import CROP_SHORT_SIDE, CROP_SIDE

# The level words, worst to best; level k has the value k in the target and the score.
LEVEL_WORDS = ("bad", "poor", "fair", "good", "great", "excellent")

# The released data pipeline: uint8 RGB, mean/std on the 0–255 scale (ImageNet's); at test the
# short side is resized to 256 (bilinear) and a 224 × 224 centre crop taken.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
RESIZE_SHORT_SIDE, CROP_SIZE = CROP_SHORT_SIDE, CROP_SIDE  # 256, 224: the short_side_crop geometry's ratio

# The released training defaults.
LR = 8e-6  # the CLIP tower's; the new modules take NEW_MODULE_LR_SCALE × LR
NEW_MODULE_LR_SCALE = 10.0
WEIGHT_DECAY = 1e-3
ADAMW_BETAS = (0.9, 0.98)
ADAMW_EPS = 1e-8
EPOCHS = 40
WARMUP_EPOCHS = 5  # linear from 0, then cosine down to MIN_LR (per loader iteration)
MIN_LR = LR / 100  # the same absolute floor for every group
BATCH_SIZE = 2  # per GPU
ACCUMULATION_STEPS = 8
