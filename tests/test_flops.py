"""FLOP accounting (benchmarks.flops) on the meta device, and the GPU benchmark's no-GPU exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.flops import (
    PEAK_DENSE_TFLOPS,
    build_folded,
    compare_to_quoted,
    frame_flops,
    peak_for,
    percent_of_roofline,
    roofline_fps,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = "PE-Core-T-16-384"


@pytest.fixture(scope="module")
def tiny_384():
    return frame_flops(TINY)


@pytest.fixture(scope="module")
def tiny_192():
    return frame_flops(TINY, image_size=192)


def test_positive_and_consistent(tiny_384):
    assert tiny_384["gflop_per_frame"] > 0
    assert tiny_384["image_size"] == [384, 384]
    assert tiny_384["tokens"] == (384 // 16) ** 2 + 1  # patches + the class token
    parts = tiny_384["breakdown_flops"]
    assert all(v >= 0 for v in parts.values())
    assert sum(parts.values()) == tiny_384["flops_per_frame"]  # the stages add up to the whole forward
    assert parts["blocks_attention"] > 0 and parts["adapters_escma"] > 0
    trunk = parts["patch_embed"] + parts["blocks_linear"] + parts["blocks_attention"]
    assert tiny_384["trunk_gflop_per_frame"] == pytest.approx(trunk / 1e9)


def test_scales_with_tokens(tiny_384, tiny_192):
    n_big, n_small = tiny_384["tokens"], tiny_192["tokens"]
    assert (n_big, n_small) == (577, 145)
    big, small = tiny_384["breakdown_flops"], tiny_192["breakdown_flops"]
    assert big["patch_embed"] == 4 * small["patch_embed"]  # per patch, and 4× the patches
    assert big["blocks_linear"] / small["blocks_linear"] == pytest.approx(n_big / n_small, rel=1e-12)
    assert big["adapters_escma"] / small["adapters_escma"] == pytest.approx(n_big / n_small, rel=1e-12)
    assert big["blocks_attention"] / small["blocks_attention"] == pytest.approx((n_big / n_small) ** 2, rel=1e-12)
    ratio = tiny_384["gflop_per_frame"] / tiny_192["gflop_per_frame"]
    # ≈ 4× fewer at half the side (the token ratio); attention's quadratic part (a third of
    # PE-Core-T's FLOPs at 384², width 192) pushes the total above that, never to the square
    assert n_big / n_small < ratio < 0.5 * (n_big / n_small) ** 2
    assert 4.5 < ratio < 6.0


def test_closed_form_for_a_tiny_config():
    """PE-Core-T at 64²: every counted matrix product, derived by hand (2·MAC)."""
    s, p = 64, 16
    counted = frame_flops(TINY, image_size=s)
    _, folded = build_folded(TINY, image_size=s)
    trunk = folded.tower.trunk
    d, depth = trunk.embed_dim, len(trunk.blocks)
    hidden = trunk.blocks[0].mlp.fc1.out_features
    r = folded.adapters[0].down.out_features
    k = len(folded.adapters)
    embed = folded.text.shape[1]  # joint embedding width D
    assert (d, depth, hidden, r, k, embed) == (192, 12, 768, 128, 6, 512)

    patches = (s // p) ** 2
    n = patches + 1
    patch_embed = 2 * patches * (3 * p * p) * d
    blocks_linear = 2 * depth * n * (d * 3 * d + d * d + d * hidden + hidden * d)  # qkv, proj, fc1, fc2
    blocks_attention = 2 * depth * 2 * n * n * d  # QKᵀ and softmax·V over all heads
    adapters = 2 * k * n * (d * r + r * r + r * r + r * d)  # Down, Core (two Linears), Up
    pool = 2 * (
        d * d  # attention-pool query of the one latent token
        + n * d * 2 * d  # its K/V projection over every token
        + 2 * n * d  # the latent token's attention (1 query × n keys, QKᵀ and softmax·V)
        + d * d  # attention-pool output projection
        + 2 * d * hidden  # attention-pool MLP on the latent token
        + d * embed  # the tower's projection into the joint space
        + d * r + r * embed  # P-SCMA: merged Down∘Mid, then Up
    )
    head = 2 * embed * 5  # video feature · the five level-prompt features
    expected = {
        "patch_embed": patch_embed,
        "blocks_linear": blocks_linear,
        "blocks_attention": blocks_attention,
        "adapters_escma": adapters,
        "pool_project_pscma": pool,
        "head": head,
    }
    assert counted["breakdown_flops"] == expected
    assert counted["flops_per_frame"] == sum(expected.values())


def test_pe_core_l_per_frame_figure():
    """The issue's 382 GFLOP/frame is PE-Core-L-14-336's ViT trunk, 2·MAC, attention included."""
    counted = frame_flops("PE-Core-L-14-336")
    assert counted["tokens"] == 577
    assert counted["trunk_gflop_per_frame"] == pytest.approx(382.0, rel=2e-3)
    assert 382.0 < counted["gflop_per_frame"] < 390.0  # + attention-pool head and adapters
    cmp = compare_to_quoted(counted)
    assert cmp["trunk_vs_quoted"] == pytest.approx(1.0, abs=2e-3)


def test_meta_build_allocates_nothing():
    _, folded = build_folded(TINY, image_size=64)
    assert all(t.device.type == "meta" for t in folded.parameters())


def test_roofline_math():
    assert roofline_fps(100.0, 1000.0) == pytest.approx(10_000.0)  # 1e15 / 1e11
    assert roofline_fps(386.4, 989.4) == pytest.approx(989.4e12 / 386.4e9)
    assert percent_of_roofline(5_000.0, 100.0, 1000.0) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        roofline_fps(0.0, 989.4)
    with pytest.raises(ValueError):
        roofline_fps(386.0, -1.0)


def test_peak_table_lookup():
    for name, entry in PEAK_DENSE_TFLOPS.items():
        assert peak_for(name)["fp16"] == entry["fp16"]
        assert entry["bf16"] == entry["fp16"] and entry["tf32"] == pytest.approx(entry["fp16"] / 2, rel=1e-3)
    assert peak_for("NVIDIA H100 80GB HBM3")["variant"] == "H100 SXM5"
    assert peak_for("NVIDIA H100 80GB HBM3")["fp16"] == pytest.approx(989.4)
    assert peak_for("NVIDIA H100 PCIe")["fp16"] < peak_for("NVIDIA H100 NVL")["fp16"] < peak_for("NVIDIA H200")["fp16"]
    assert peak_for("NVIDIA H200 NVL")["variant"] == "H200 NVL"
    assert peak_for("NVIDIA H100 SXM5 94GB")["variant"] == "H100 SXM5"  # by family
    assert peak_for("NVIDIA A100-SXM4-80GB") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_gpu_benchmark_exits_2_without_cuda():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--parts", "model"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "CUDA" in lines[0]
