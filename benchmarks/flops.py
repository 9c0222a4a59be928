"""FLOP accounting of the folded Q-CLIP visual path, and the roofline frames/s it implies.

    python -m benchmarks.flops [--backbone PE-Core-L-14-336] [--image-size N]

Convention: **2·MAC** — a multiply-accumulate counts as two floating-point operations, and
only the matrix work is counted (``torch.utils.flop_counter.FlopCounterMode``: convolutions,
``mm``/``addmm``/``bmm`` and the fused attention kernels). Element-wise work (LayerNorm,
GELU, softmax, RoPE, bias adds, the uint8 → float scaling) is not counted: it runs on the
CUDA cores, not the tensor cores, and is a fraction of a percent of the matrix work here.
Attention's two matrix products (``QKᵀ`` and ``softmax·V``, ``4·N²·d`` per block) *are*
counted.

The model is built on the ``meta`` device (no weights allocated, no arithmetic done),
folded exactly as the torch backend folds it (:func:`export.fold.fold`), and each stage of
:meth:`export.fold.FoldedQCLIP.frame_features` is counted on one frame, so the breakdown
shows where the FLOPs are. PE-Core-L-14-336 (24 blocks, width 1024, 577 tokens) comes to
≈ 386 GFLOP/frame: the ViT trunk (patch embedding + 24 blocks, attention included) is
≈ 381.8 — the "382 GFLOP/frame" the issue quotes — and the rest is the attention-pooling
head (≈ 2.4: its K/V projection runs over all 577 tokens) and the six E-SCMA adapters (≈ 1.9).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode

CONVENTION = (
    "2·MAC (one multiply-accumulate = 2 FLOP); matrix work only (conv, mm/addmm/bmm, attention "
    "kernels) via torch.utils.flop_counter.FlopCounterMode; element-wise ops (LayerNorm, GELU, "
    "softmax, RoPE, bias adds) not counted; attention QKᵀ and softmax·V counted"
)

# Dense (no 2:4 sparsity) tensor-core peaks in TFLOP/s, keyed by the name nvidia-smi reports.
# Source: NVIDIA's H100 Tensor Core GPU datasheet and H200 Tensor Core GPU datasheet, whose
# FP16/BF16 tensor-core figures are quoted "with sparsity" (H100 SXM 1,979; H100 PCIe 1,513;
# H100 NVL 1,671; H200 1,979; H200 NVL 1,671 TFLOPS): the dense rate is half of those. The
# SXM figure equals 528 tensor cores × 1024 dense FP16 FMA/clk × 2 × 1.83 GHz (boost) ≈ 989.4.
# TF32 is half the FP16 rate; FP32 is the non-tensor (CUDA-core FMA) rate.
PEAK_DENSE_TFLOPS: dict[str, dict] = {
    "NVIDIA H100 80GB HBM3": {"variant": "H100 SXM5", "fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "NVIDIA H100 PCIe": {"variant": "H100 PCIe", "fp16": 756.5, "bf16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "NVIDIA H100 NVL": {"variant": "H100 NVL", "fp16": 835.5, "bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "NVIDIA H200": {"variant": "H200 SXM", "fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "NVIDIA H200 NVL": {"variant": "H200 NVL", "fp16": 835.5, "bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
}
PEAK_SOURCE = "NVIDIA H100 / H200 Tensor Core GPU datasheets: FP16/BF16 tensor core 'with sparsity' ÷ 2 (dense)"


def peak_for(gpu_name: str) -> dict | None:
    """The dense peak entry for an nvidia-smi / torch device name (exact, else by family), or None."""
    name = gpu_name.strip()
    if name in PEAK_DENSE_TFLOPS:
        return {"matched": name, **PEAK_DENSE_TFLOPS[name]}
    upper = name.upper()
    for key in ("H200 NVL", "H100 NVL", "H100 PCIE"):  # most specific first
        if key in upper:
            match = next(k for k in PEAK_DENSE_TFLOPS if k.upper().endswith(key))
            return {"matched": match, **PEAK_DENSE_TFLOPS[match], "by": "family"}
    for key, match in (("H200", "NVIDIA H200"), ("H100", "NVIDIA H100 80GB HBM3")):
        if key in upper:  # other SXM-style names (H100 SXM5 64GB/94GB, H200 141GB …)
            return {"matched": match, **PEAK_DENSE_TFLOPS[match], "by": "family (SXM assumed)"}
    return None


def roofline_fps(gflop_per_frame: float, peak_tflops: float) -> float:
    """Frames/s if every FLOP ran at ``peak_tflops``: the compute roofline (an upper bound)."""
    if gflop_per_frame <= 0 or peak_tflops <= 0:
        raise ValueError(f"need positive GFLOP/frame and peak TFLOP/s, got {gflop_per_frame}, {peak_tflops}")
    return peak_tflops * 1e12 / (gflop_per_frame * 1e9)


def percent_of_roofline(frames_per_s: float, gflop_per_frame: float, peak_tflops: float) -> float:
    return 100.0 * frames_per_s / roofline_fps(gflop_per_frame, peak_tflops)


# -- counting ----------------------------------------------------------------------------------
ATTENTION_OPS = ("bmm", "baddbmm", "scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention")


def _op_name(op) -> str:
    return str(op).replace("aten.", "")


class _Counter:
    """FLOPs per aten op over one ``with`` block, accumulated into ``self.by_op``."""

    def __init__(self):
        self.by_op: dict[str, int] = defaultdict(int)

    def __enter__(self):
        self._mode = FlopCounterMode(display=False)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        for op, n in self._mode.get_flop_counts().get("Global", {}).items():
            self.by_op[_op_name(op)] += int(n)
        return False

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def split(self) -> tuple[int, int]:
        """(attention, other): attention = batched matmuls and attention kernels."""
        att = sum(n for op, n in self.by_op.items() if op.startswith(ATTENTION_OPS))
        return att, self.total - att


def build_folded(backbone: str, image_size: int | None = None, *, zero_shot: bool = False, **config):
    """The folded Q-CLIP of ``backbone`` on the ``meta`` device (random init, nothing allocated)."""
    from qclip_engine.model.folded import fold
    from qclip_engine import QCLIP, QCLIPConfig

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns that the weights are random: they are meant to be
    try:
        with torch.device("meta"):
            model = QCLIP(QCLIPConfig(backbone=backbone, pretrained=None, image_size=image_size, **config)).eval()
            model.zero_shot = zero_shot
            return model, fold(model)
    finally:
        root.setLevel(level)


@torch.no_grad()
def frame_flops(backbone: str, image_size: int | None = None, *, zero_shot: bool = False, **config) -> dict:
    """FLOPs of the folded visual path per frame, counted on ``meta`` (see the module docstring).

    Returns ``gflop_per_frame`` (everything ``FoldedQCLIP.forward`` does for one frame),
    ``trunk_gflop_per_frame`` (patch embedding + transformer blocks: the plain ViT count),
    a per-stage ``breakdown_gflop`` and per-op ``by_op_gflop``, and the token count.
    """
    model, folded = build_folded(backbone, image_size, zero_shot=zero_shot, **config)
    h, w = folded.image_size
    frames = torch.empty((1, 1, h, w, 3), dtype=torch.uint8, device="meta")

    # The whole forward (uint8 frames → scores): the total everything else must add up to.
    with _Counter() as whole:
        folded(frames)

    # Stage by stage, as FoldedQCLIP.frame_features runs them.
    tower = folded.tower
    images = torch.empty((1, 3, h, w), dtype=torch.float32, device="meta")
    stages = {}
    with _Counter() as c:
        x, block_kwargs = tower.embed(images)
    stages["patch_embed"] = c
    tokens = int(x.shape[1])
    blocks, adapters = _Counter(), _Counter()
    for i in range(len(tower.blocks)):
        with blocks:
            x = tower.run_block(i, x, block_kwargs)
        if folded.adapters is not None and i >= folded.first_adapted:
            with adapters:
                x = folded.adapters[i - folded.first_adapted](x)
    with _Counter() as pool:
        pooled = tower.pool(x)
        projected = tower.project(pooled)
        if folded.pscma is not None:
            projected = projected + folded.pscma(pooled)
    attention, linear = blocks.split()
    breakdown = {
        "patch_embed": stages["patch_embed"].total,
        "blocks_linear": linear,
        "blocks_attention": attention,
        "adapters_escma": adapters.total,
        "pool_project_pscma": pool.total,
    }
    breakdown["head"] = whole.total - sum(breakdown.values())  # frame mean, similarities, score
    trunk = breakdown["patch_embed"] + breakdown["blocks_linear"] + breakdown["blocks_attention"]
    trunk_module = getattr(tower, "trunk", None)
    return {
        "backbone": backbone,
        "image_size": [int(h), int(w)],
        "tokens": tokens,
        "depth": len(tower.blocks),
        "width": int(tower.width),
        "zero_shot": zero_shot,
        "adapter_layers": None if folded.adapters is None else len(folded.adapters),
        "convention": CONVENTION,
        "gflop_per_frame": whole.total / 1e9,
        "trunk_gflop_per_frame": trunk / 1e9,
        "breakdown_gflop": {k: v / 1e9 for k, v in breakdown.items()},
        "by_op_gflop": {k: v / 1e9 for k, v in sorted(whole.by_op.items())},
        "flops_per_frame": whole.total,
        "breakdown_flops": breakdown,
        "patch_size": list(getattr(getattr(trunk_module, "patch_embed", None), "patch_size", []) or []),
        "prefix_tokens": int(getattr(trunk_module, "num_prefix_tokens", 0) or 0),
    }


def compare_to_quoted(counted: dict, quoted_gflop: float = 382.0) -> dict:
    """How the count relates to a quoted per-frame figure (the issue's 382 for PE-Core-L-14-336)."""
    return {
        "quoted_gflop_per_frame": quoted_gflop,
        "counted_total_gflop_per_frame": counted["gflop_per_frame"],
        "counted_trunk_gflop_per_frame": counted["trunk_gflop_per_frame"],
        "total_vs_quoted": counted["gflop_per_frame"] / quoted_gflop,
        "trunk_vs_quoted": counted["trunk_gflop_per_frame"] / quoted_gflop,
        "explanation": (
            "Both 2·MAC. The quoted figure matches the plain ViT trunk (patch-embedding conv + the "
            "transformer blocks' linear layers + attention's QKᵀ and softmax·V); the total adds the "
            "attention-pooling head (its K/V projection over every token), the E-SCMA adapters on the "
            "last blocks, P-SCMA and the projection. A 1·MAC (\"MACs\") count would be half."
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="PE-Core-L-14-336")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--gpu", default=None, help="nvidia-smi name for the roofline (default: all in the table)")
    args = parser.parse_args(argv)
    counted = frame_flops(args.backbone, args.image_size)
    print(json.dumps({k: v for k, v in counted.items() if k not in ("breakdown_flops",)}, indent=2))
    if args.backbone == "PE-Core-L-14-336" and args.image_size in (None, 336):
        print(json.dumps(compare_to_quoted(counted), indent=2))
    names = [args.gpu] if args.gpu else list(PEAK_DENSE_TFLOPS)
    for name in names:
        peak = peak_for(name)
        if peak is None:
            print(f"{name}: not in the peak table")
            continue
        print(f"{name} ({peak['variant']}): fp16 dense {peak['fp16']} TFLOP/s → roofline "
              f"{roofline_fps(counted['gflop_per_frame'], peak['fp16']):.0f} frames/s")


if __name__ == "__main__":
    main()
