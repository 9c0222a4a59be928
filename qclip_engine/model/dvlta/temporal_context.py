"""DVLTA-VQA's Temporal Context Module (Sec. III-B, eqs. 5–7): a small 3-D CNN on the sampled frames
(F_ts), two TAdaConv layers each followed by the feature aggregation of eq. 6, CBAM (eq. 7), and a
global average pool → F_tcm.

``TemporalContextModule(width=64, ratio=4, stem=DEFAULT_STEM, temporal_op="tadaconv", ...)``:
frames ``[B, in_channels, T, H, W]`` → ``[B, width]`` (``[B, out_dim]`` with ``out_dim``).

Per layer ``i`` (``layers.i``): ``op`` (the temporal operator: eq. 5) then ``aggregate`` (eq. 6,
:class:`TemporalAggregation`: ``ReLU(BN1(F̃) + BN2(TempAvgPool(F̃)))``). ``temporal_op`` swaps only
``layers.i.op`` (the paper's Table III ablation):

* ``"tadaconv"`` — :class:`TAdaOp`: ``RouteFuncMLP(width, ratio, route_kernels)`` → α, then
  ``TAdaConv2d(width, width, 3, padding=1, bias=False)`` (calibrating the input channels, as TAda2D);
* ``"c3d"`` — ``Conv3d(width, width, 3 × 3 × 3, padding 1, bias=False)``;
* ``"r2plus1d"`` — :class:`R2Plus1DOp`: ``Conv3d(1 × 3 × 3) → BN3d → ReLU → Conv3d(3 × 1 × 1)``, middle
  width ``⌊27·w² / (9·w + 3·w)⌋`` (Tran et al., CVPR 2018: as many weights as the 3 × 3 × 3 conv).

Choices (DVLTA-VQA has no released code):

* **The 3-D CNN (F_ts).** Paper says: "a 3D-CNN is first used", no layers given. We chose (``stem``, a
  list of ``(kernel, stride)`` pairs, each layer ``Conv3d(bias=False) → BN3d → ReLU`` to ``width``
  channels, padding ``kernel // 2``): ``(3, 7, 7)`` stride ``(1, 4, 4)``, then ``(3, 3, 3)`` stride
  ``(1, 2, 2)``. Why: two 3-D layers mix neighbouring frames before TAdaConv (its calibration is
  per frame, so time is never strided: every sampled frame keeps its own α_t); a spatial stride of 8
  leaves 28 × 28 at 224 × 224 so the TAdaConv layers stay cheap; the 7 × 7 first kernel is the
  usual video-ResNet stem's.
* **Width and routing.** Paper says: nothing. We chose: ``width=64`` (TAda2D's first stage),
  ``ratio=4`` and ``route_kernels=(3, 3)`` (TAda2D's ``ROUTE_FUNC_R`` / ``ROUTE_FUNC_K``).
* **Eq. 6's aggregation.** Paper says: ``σ(BN1(F̃) + BN2(TempAvgPool_p(F̃)))``, σ = ReLU, p not given.
  We chose the released TAda2D block's aggregation (alibaba-mmai-research/TAdaConv,
  ``tadaconv/models/module_zoo/branches/tada_branch.py``, ``TAda2DBlock``: ``b_bn(x) +
  b_avgpool_bn(b_avgpool(x))`` then ``b_relu``; ``configs/pool/backbone/tada2d.yaml``:
  ``POOL_K: [3, 1, 1]``): ``AvgPool3d`` kernel ``(p, 1, 1)``, stride 1, padding ``(p // 2, 0, 0)``,
  ``count_include_pad`` (torch's default, as released: an edge frame's mean counts the zero pad), p = 3
  (``pool_kernel``). Why: the paper's eq. 6 is that block's line, and the sum needs F̃'s shape, so
  the pool cannot stride. The released code also zero-inits BN2's γ and β and marks it
  ``skip_init`` so the network init keeps them at zero: eq. 6 starts as ``ReLU(BN1(F̃))``; we do the
  same (``pool_bn_zero_init=True``).
* **Bias.** TAda2D builds its TAdaConv2d with ``bias=False`` (BN1 follows); every conv here is bias-free.
* **Layers.** Paper says: "another layer of TadaConv is added" — two. We chose ``num_layers=2``,
  both ``width → width``, kernel 3 × 3, stride 1.
* **CBAM.** ``CBAM(width, cbam_reduction=16, cbam_kernel=7)`` (``cbam.py``'s choices); reduction 16 is
  Woo et al.'s.
* **To a vector.** Paper says: F_tcm is "the output" and is compared with a text vector (eq. 10). We
  chose: the mean over T, H, W, and an optional ``Linear(width, out_dim)`` (``out_dim``) because eqs.
  10–11 need every branch in the text embedding's dimension. Why: the paper gives no projection;
  the family decides where branches meet D.
* **Ablation.** Paper says (Table III): "TAdaConv was replaced with standard 3D convolutional
  structures such as C3D and R(2+1)D". We chose: replace only the operator of eq. 5 — stem, eq. 6's
  aggregation, CBAM and pooling stay. Why: the ablation then measures the operator alone. The stem,
  CBAM and projection are built before the temporal layers, so one seed draws the same values for
  them whichever ``temporal_op``.
* **Initialisation.** PyTorch defaults for the stem and the ablation convs, ``tadaconv.py``'s
  released draws for TAdaConv2d and RouteFuncMLP (``expand`` zero: α ≡ 1 at init).
* **Input.** "Normalised frames": the normalisation (e.g. CLIP's mean and std) is the caller's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .cbam import CBAM
from .tadaconv import RouteFuncMLP, TAdaConv2d

TEMPORAL_OPS = ("tadaconv", "c3d", "r2plus1d")

# (kernel, stride) per stem layer; padding is kernel // 2.
DEFAULT_STEM = (((3, 7, 7), (1, 4, 4)), ((3, 3, 3), (1, 2, 2)))


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value),) * 3
    if len(values) != 3:
        raise ValueError(f"{name}: an int or (t, h, w), got {value!r}")
    return values


def conv_bn_relu(in_channels: int, out_channels: int, kernel, stride, bn_eps: float, bn_momentum: float):
    kernel, stride = _triple(kernel, "kernel"), _triple(stride, "stride")
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel, stride, tuple(k // 2 for k in kernel), bias=False),
        nn.BatchNorm3d(out_channels, eps=bn_eps, momentum=bn_momentum), nn.ReLU())


class TAdaOp(nn.Module):
    """Eq. 5: ``F̃_t = (α_t · W_b) * F_ts`` — the routing function's α, then the calibrated 3 × 3 conv."""

    def __init__(self, width: int, ratio: int = 4, route_kernels: Sequence[int] = (3, 3), bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1):
        super().__init__()
        self.route = RouteFuncMLP(width, ratio, route_kernels, bn_eps=bn_eps, bn_mmt=bn_momentum)
        self.conv = TAdaConv2d(width, width, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.route(x))


class R2Plus1DOp(nn.Module):
    """The (2+1)-D factorised 3 × 3 × 3 conv: spatial ``(1, 3, 3)`` → BN → ReLU → temporal ``(3, 1, 1)``."""

    def __init__(self, width: int, bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        mid = (3 * 3 * 3 * width * width) // (3 * 3 * width + 3 * width)  # Tran et al.'s parameter match
        self.spatial = nn.Conv3d(width, mid, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.bn = nn.BatchNorm3d(mid, eps=bn_eps, momentum=bn_momentum)
        self.temporal = nn.Conv3d(mid, width, (3, 1, 1), padding=(1, 0, 0), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal(torch.relu(self.bn(self.spatial(x))))


def temporal_operator(kind: str, width: int, ratio: int = 4, route_kernels: Sequence[int] = (3, 3),
                      bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> nn.Module:
    """The operator of eq. 5 (``"tadaconv"``) or its Table III replacement (``"c3d"``, ``"r2plus1d"``)."""
    if kind == "tadaconv":
        return TAdaOp(width, ratio, route_kernels, bn_eps, bn_momentum)
    if kind == "c3d":
        return nn.Conv3d(width, width, 3, padding=1, bias=False)
    if kind == "r2plus1d":
        return R2Plus1DOp(width, bn_eps, bn_momentum)
    raise ValueError(f"temporal_op must be one of {TEMPORAL_OPS}, got {kind!r}")


class TemporalAggregation(nn.Module):
    """Eq. 6: ``ReLU(BN1(x) + BN2(AvgPool_t(x)))`` on ``[B, C, T, H, W]``; the pool spans
    ``pool_kernel`` frames, stride 1, zero-padded ``pool_kernel // 2`` frames each side, pad counted."""

    def __init__(self, channels: int, pool_kernel: int = 3, pool_bn_zero_init: bool = True, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1):
        super().__init__()
        if pool_kernel < 1 or pool_kernel % 2 != 1:
            raise ValueError(f"pool_kernel must be odd (the pool keeps T), got {pool_kernel}")
        self.bn = nn.BatchNorm3d(channels, eps=bn_eps, momentum=bn_momentum)  # BN1 (released b_bn)
        self.pool = nn.AvgPool3d((pool_kernel, 1, 1), stride=1, padding=(pool_kernel // 2, 0, 0))
        self.pool_bn = nn.BatchNorm3d(channels, eps=bn_eps, momentum=bn_momentum)  # BN2 (b_avgpool_bn)
        if pool_bn_zero_init:
            nn.init.zeros_(self.pool_bn.weight)
            nn.init.zeros_(self.pool_bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the pool in FP32 at least: torch's CPU avg_pool3d has no BF16 kernel (a reduced-precision graph runs it)
        pooled = self.pool(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)
        return torch.relu(self.bn(x) + self.pool_bn(pooled))


class TemporalLayer(nn.Module):
    """One temporal operator (eq. 5 or its ablation) and eq. 6's aggregation."""

    def __init__(self, op: nn.Module, aggregate: TemporalAggregation):
        super().__init__()
        self.op, self.aggregate = op, aggregate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aggregate(self.op(x))


class TemporalContextModule(nn.Module):
    """F_tcm: frames ``[B, in_channels, T, H, W]`` → stem → ``num_layers`` × (op, eq. 6) → CBAM →
    mean over T, H, W → ``[B, width]`` (then ``Linear(width, out_dim)`` when ``out_dim`` is set)."""

    def __init__(
        self,
        width: int = 64,
        ratio: int = 4,
        stem: Sequence[tuple[Sequence[int], Sequence[int]]] = DEFAULT_STEM,
        temporal_op: str = "tadaconv",
        num_layers: int = 2,
        pool_kernel: int = 3,
        pool_bn_zero_init: bool = True,
        route_kernels: Sequence[int] = (3, 3),
        cbam_reduction: int = 16,
        cbam_kernel: int = 7,
        out_dim: int | None = None,
        in_channels: int = 3,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ):
        super().__init__()
        if temporal_op not in TEMPORAL_OPS:
            raise ValueError(f"temporal_op must be one of {TEMPORAL_OPS}, got {temporal_op!r}")
        if not stem:
            raise ValueError("stem needs at least one (kernel, stride) layer")
        self.temporal_op, self.width = temporal_op, width
        layers, channels = [], in_channels
        for kernel, stride in stem:
            layers.append(conv_bn_relu(channels, width, kernel, stride, bn_eps, bn_momentum))
            channels = width
        # Everything but the temporal operators is drawn first: one seed, same values whichever op.
        stem_module = nn.Sequential(*layers)
        aggregates = [TemporalAggregation(width, pool_kernel, pool_bn_zero_init, bn_eps, bn_momentum)
                      for _ in range(num_layers)]
        cbam = CBAM(width, cbam_reduction, cbam_kernel)
        proj = nn.Linear(width, out_dim) if out_dim is not None else None
        ops = [temporal_operator(temporal_op, width, ratio, route_kernels, bn_eps, bn_momentum)
               for _ in range(num_layers)]
        self.stem = stem_module
        self.layers = nn.ModuleList(TemporalLayer(op, agg) for op, agg in zip(ops, aggregates))
        self.cbam = cbam
        self.proj = proj
        self.out_dim = out_dim if out_dim is not None else width

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.stem(frames)  # F_ts
        for layer in self.layers:
            x = layer(x)  # eqs. 5–6
        x = self.cbam(x)  # eq. 7
        x = x.mean(dim=(2, 3, 4))
        return self.proj(x) if self.proj is not None else x
