"""Shared fixtures: small random-init backbones (no pretrained weights are fetched in tests)."""

import copy
import os

# Tests never reach a model hub; set before huggingface_hub is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from qclip_engine import QCLIP, QCLIPConfig

# PE-Core-T (timm Eva, RoPE, visual 192 ≠ text 512) and a classic open_clip ViT (768 ≠ 512).
BACKBONES = ("PE-Core-T-16-384", "ViT-B-32")


@pytest.fixture(scope="session")
def _models():
    torch.manual_seed(0)
    return {name: QCLIP(QCLIPConfig(backbone=name, pretrained=None)) for name in BACKBONES}


@pytest.fixture(params=BACKBONES)
def model(request, _models):
    """A fresh copy per test, so tests may change parameters and modes freely."""
    return copy.deepcopy(_models[request.param])


@pytest.fixture
def pe_model(_models):
    return copy.deepcopy(_models["PE-Core-T-16-384"])


def random_video(model: QCLIP, batch: int = 2, frames: int = 3, seed: int = 0) -> torch.Tensor:
    """Normalised frames of random uint8 pixels at the model's input size."""
    g = torch.Generator().manual_seed(seed)
    h, w = model.image_size
    pixels = torch.randint(0, 256, (batch, frames, h, w, 3), generator=g, dtype=torch.uint8)
    return model.normalize(pixels)
