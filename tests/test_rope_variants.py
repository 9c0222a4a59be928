"""The PE tower's two RoPE orders (QCLIPConfig.rope): each against an independent implementation of
the rotation the official Q-CLIP code applies, and each kept by the folds, the ONNX graph and the
artifact."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import trained_like, uint8_frames

from qclip_engine import QCLIP, QCLIPConfig, load_artifact, save_artifact
from qclip_engine.errors import BackboneError
from qclip_engine.model.folded import fold
from qclip_engine.runtime.onnx_graph import INPUT, export_onnx
from qclip_engine.runtime.onnxruntime_backend import session

# PE-Core-T at its native size, a 24 × 24 grid: there timm's RoPE positions are Meta's integer ones
# (at other sizes timm rescales them to the native grid; the official code runs at the native size).
IMAGE = 384


def pe_model(rope: str, image: int = IMAGE) -> QCLIP:
    torch.manual_seed(0)
    return trained_like(QCLIP(QCLIPConfig(backbone="PE-Core-T-16-384", pretrained=None, image_size=image,
                                          num_frames=2, rope=rope)))


# -- an independent implementation of the official code's 2-D RoPE ---------------------------
def axis_angles(n: int, head_dim: int) -> torch.Tensor:
    """Angles of positions 1 … n on one axis: a 1-D rotary embedding of dimension head_dim/2
    (frequencies 10000^(-2i/dim)), each angle repeated for the pair of channels it rotates."""
    dim = head_dim // 2
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    positions = torch.arange(1, n + 1).float()  # position 0 is kept for the class token
    return (positions[:, None] * inv_freq[None, :]).repeat_interleave(2, dim=-1)


def sequence_angles(grid: int, head_dim: int, class_token_first: bool) -> torch.Tensor:
    """Angles for every token of ``[class, patches row by row]``: per patch (x angles ‖ y angles);
    the class token's zero row goes before the patches (Meta's fix) or after them (the official
    code's order, which the sequence does not follow)."""
    a = axis_angles(grid, head_dim)
    ys = a[:, None].expand(grid, grid, -1)
    xs = a[None, :].expand(grid, grid, -1)
    patches = torch.cat([xs, ys], dim=-1).reshape(grid * grid, -1)
    zero = torch.zeros(1, patches.shape[-1])
    return torch.cat([zero, patches] if class_token_first else [patches, zero])


def rotate_pairs(t: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Each channel pair (a, b) rotated by its angle: (a cos − b sin, b cos + a sin)."""
    a, b = t.unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack((-b, a), dim=-1).flatten(-2)
    return t * angles.cos() + rotated * angles.sin()


def reference_block(block, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """One pre-norm PE block with its attention written out, rotating q and k of every token."""
    b, n, c = x.shape
    heads = block.attn.num_heads
    q, k, v = block.attn.qkv(block.norm1(x)).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k = rotate_pairs(q, angles), rotate_pairs(k, angles)
    attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
    x = x + block.attn.proj(attended)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("rope,class_token_first", [("pe", True), ("qclip_official", False)])
def test_each_rope_order_equals_the_independent_rotation(rope, class_token_first):
    model = pe_model(rope)
    tower = model.visual_tower
    images = model.normalize(uint8_frames(model, 2, 1)[:, 0])
    with torch.no_grad():
        x, kwargs = tower.embed(images)
        angles = sequence_angles(IMAGE // 16, tower.width // tower.blocks[0].attn.num_heads, class_token_first)
        for i in range(3):  # the rotation reaches every block, not the first alone
            expected = reference_block(tower.blocks[i], x, angles)
            x = tower.run_block(i, x, kwargs)
            assert (x - expected).abs().max() < 1e-5
        # and the other order is 10× the tolerance away after one block: the test tells them apart
        other = sequence_angles(IMAGE // 16, tower.width // tower.blocks[0].attn.num_heads, not class_token_first)
        x0, kwargs0 = tower.embed(images)
        assert (tower.run_block(0, x0, kwargs0) - reference_block(tower.blocks[0], x0, other)).abs().max() > 1e-4


@pytest.mark.parametrize("rope", ["pe", "qclip_official"])
def test_folded_model_keeps_the_rope_order(rope):
    model = pe_model(rope, image=64)
    pixels = uint8_frames(model, 2, 2, seed=3)
    with torch.no_grad():
        sims_ref = model.level_sims(model.normalize(pixels))
        folded_sims, _ = fold(model)(pixels)
    assert (folded_sims - sims_ref).abs().max() < 1e-5


def test_onnx_graph_keeps_the_official_rope_order(tmp_path):
    """(the ``pe`` order's graph is held to the model by tests/test_export_onnx.py)"""
    model = pe_model("qclip_official", image=64)
    pixels = uint8_frames(model, 2, 2, seed=3)
    with torch.no_grad():
        sims_ref = model.level_sims(model.normalize(pixels))
    sims, _ = session(export_onnx(fold(model), tmp_path / "model.onnx")).run(None, {INPUT: pixels.numpy()})
    assert np.abs(sims - sims_ref.numpy()).max() < 1e-4


def test_the_artifact_keeps_the_rope_order(tmp_path):
    model = pe_model("qclip_official", image=64)
    loaded = load_artifact(save_artifact(model, tmp_path / "a"))
    assert loaded.config.rope == "qclip_official"
    pixels = uint8_frames(model, 1, 2)
    with torch.no_grad():
        assert torch.equal(loaded(model.normalize(pixels)), model(model.normalize(pixels)))


def test_official_rope_is_refused_for_a_tower_without_rope():
    with pytest.raises(BackboneError, match="PE-Core towers only"):
        QCLIP(QCLIPConfig(backbone="ViT-B-32", pretrained=None, rope="qclip_official"))
    with pytest.raises(ValueError, match="rope must be one of"):
        QCLIPConfig(rope="rotary")
