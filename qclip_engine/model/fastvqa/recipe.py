"""FAST-VQA's released training recipe (its options/fast/fast-b.yml and new_train.py). Torch-free."""

from __future__ import annotations

# The input (T, H, W) at which the backbone uses its configured window as it is; other inputs scale
# it (floored), and the result must lie within 1 … the configured window on every axis.
BASE_INPUT_SIZE = (32, 224, 224)

LR = 1e-3  # the head's; the backbone takes BACKBONE_LR_SCALE × LR
BACKBONE_LR_SCALE = 0.1
WEIGHT_DECAY = 0.05  # on every tensor, biases and norms included
ADAMW_BETAS = (0.9, 0.999)  # torch's defaults, which the released optimiser keeps
ADAMW_EPS = 1e-8
EPOCHS = 30
WARMUP_EPOCHS = 2.5
BATCH_SIZE = 16
EMA_DECAY = 0.999  # the released run validates and saves an exponential average of the parameters
