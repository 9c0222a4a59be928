"""TAdaConv ("TAda! Temporally-Adaptive Convolutions for Video Understanding", Huang et al., ICLR 2022),
the temporal operator of DVLTA-VQA's Temporal Context Module (its eq. 5: ``F̃_t = (α_t · W_b) * F_ts``).

Reproduced from the released code (alibaba-mmai-research/TAdaConv,
``tadaconv/models/module_zoo/ops/tadaconv.py``: ``TAdaConv2d``, ``RouteFuncMLP``), one line each:

* the kernel of frame ``t`` of clip ``b`` is ``α[b, :, t] · W_b``: with ``cal_dim="cin"`` (the default
  and TAda2D's) α scales W_b's *input*-channel axis; with ``"cout"`` its output-channel axis (α then has
  C_out channels; the released comment on that branch says "input channel" — a copy-paste slip);
* the kernel is 1 in time: a time stride of 1 and a time padding of 0 (the released triples ``[1, k, k]``,
  ``[1, s, s]``, ``[0, p, p]`` are accepted);
* the bias is not calibrated: one value per output channel, added to every frame (the released
  TAda2D network builds its TAdaConv2d with ``bias=False``; its comment: with a bias "not validated");
* initialisation: kaiming-uniform (a = √5) computed on the released 6-D weight
  ``[1, 1, C_out, C_in, kh, kw]``, whose fan-in is ``C_out·C_in·kh·kw`` — C_out counts, so the weights
  are √C_out smaller than a Conv2d's; the bias is uniform in ±1/√(that fan-in); the same seed draws
  the same numbers as the released module;
* the routing function: ``α = 1 + b(ReLU(BN(a(pool_hw(x) + g(pool_thw(x))))))`` — every frame's spatial
  mean plus a 1×1 conv (with bias) of the clip's global mean, a temporal conv ``C → C // ratio``
  (kernel k0, padding k0 // 2, bias), BN, ReLU, a temporal conv ``C // ratio → C`` (kernel k1,
  padding k1 // 2, no bias) whose weight starts at zero, so α ≡ 1 exactly at initialisation;
* the released network init (``c2_msra_fill`` on every Conv3d) re-draws ``g`` and ``a`` but skips ``b``
  (``skip_init``): α ≡ 1 at the network's initialisation too — a family's init must leave ``expand``
  at zero;
* the BN normalises over batch *and* time (BatchNorm3d on ``[B, C/r, T, 1, 1]``): in training a clip's
  α depends on the other clips of its batch;
* an even temporal kernel pads k // 2 on both sides and lengthens T by one (released behaviour;
  TAda2D uses ``kernels=(3, 3)``, ``ratio=4``).

Where ours differs in structure, not in the numbers (beyond rounding, ~1e-7):

* ``(α ⊙ W_b) * x = W_b * (α ⊙ x)``: α is constant over a kernel's taps and over the frame, and zero
  padding stays zero when scaled, so "cin" scales the *input* and "cout" the *output* around one
  ordinary convolution with the shared W_b. The released code builds B·T kernels and runs a grouped
  conv with B·T groups; ONNX's ``Conv.group`` is a static attribute, so that graph would fix the batch
  size, and per-sample kernels defeat cuDNN's and TensorRT's tuned paths. Ours exports with a dynamic
  batch and runs one dense conv.
* the per-frame conv is a Conv3d of kernel ``(1, kh, kw)`` on ``[B, C, T, H, W]``: no transposes to put
  T beside B.
* the routing function works on the pooled ``[B, C, T]`` features with Linear/Conv1d instead of
  Conv3d on ``[B, C, T, 1, 1]``; the same parameters are drawn in the same order.

Released parameters → ours (for a converter): TAdaConv2d ``weight [1, 1, Co, Ci, kh, kw]`` →
``weight [Co, Ci, kh, kw]``, ``bias [1, 1, Co]`` → ``bias [Co]``; RouteFuncMLP ``g.weight [C, C, 1, 1, 1]``
→ ``context.weight [C, C]``, ``g.bias`` → ``context.bias``, ``a.weight [C/r, C, k0, 1, 1]`` →
``reduce.weight [C/r, C, k0]``, ``a.bias`` → ``reduce.bias``, ``bn.*`` → ``bn.*``,
``b.weight [C, C/r, k1, 1, 1]`` → ``expand.weight [C, C/r, k1]``.

Not taken: the released ``dilation`` and ``groups`` (TAda2D uses neither) and ``TAdaConv3d``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

CAL_DIMS = ("cin", "cout")


def _spatial_pair(value: int | Sequence[int], name: str, time_value: int) -> tuple[int, int]:
    """``(h, w)`` from an int, a pair, or the released ``(t, h, w)`` triple whose t must be ``time_value``."""
    values = tuple(int(v) for v in value) if isinstance(value, (tuple, list)) else (int(value), int(value))
    if len(values) == 3:
        if values[0] != time_value:
            raise ValueError(f"TAdaConv2d is 1 in time: {name}[0] must be {time_value}, got {values[0]}")
        values = values[1:]
    if len(values) != 2:
        raise ValueError(f"{name}: an int, (h, w) or (t, h, w), got {value!r}")
    return values


class TAdaConv2d(nn.Module):
    """A 2-D convolution of every frame whose kernel is recalibrated per clip and per frame.

    ``forward(x, alpha)``: ``x [B, C_in, T, H, W]``, ``alpha [B, C, T, 1, 1]`` (the released shape, as
    :class:`RouteFuncMLP` returns it) or ``[B, C, T]``, with C = C_in (``cal_dim="cin"``) or C_out
    (``"cout"``) → ``[B, C_out, T, H', W']``; frame t of clip b is convolved with
    ``alpha[b, :, t] · weight`` (broadcast on the calibrated channel axis), then ``bias`` is added.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        bias: bool = True,
        cal_dim: str = "cin",
    ):
        super().__init__()
        if cal_dim not in CAL_DIMS:
            raise ValueError(f"cal_dim must be one of {CAL_DIMS}, got {cal_dim!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _spatial_pair(kernel_size, "kernel_size", 1)
        self.stride = _spatial_pair(stride, "stride", 1)
        self.padding = _spatial_pair(padding, "padding", 0)
        self.cal_dim = cal_dim
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))  # W_b
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The released weight is [1, 1, C_out, C_in, kh, kw]: torch's fan-in of that tensor is
        # 1 · (C_out·C_in·kh·kw). Same arithmetic as nn.init.kaiming_uniform_(a=√5), so a seed draws
        # the released numbers.
        fan_in = self.weight.numel()
        std = nn.init.calculate_gain("leaky_relu", math.sqrt(5)) / math.sqrt(fan_in)
        bound = math.sqrt(3.0) * std
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            if self.bias is not None:
                bias_bound = 1 / math.sqrt(fan_in)
                self.bias.uniform_(-bias_bound, bias_bound)

    def forward(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        if alpha.dim() == 3:
            alpha = alpha[..., None, None]  # [B, C, T] → [B, C, T, 1, 1]: one factor per frame
        # Kernel 1 in time: a Conv3d of kernel (1, kh, kw) is the same 2-D conv on every frame.
        weight = self.weight.unsqueeze(2)
        stride = (1, *self.stride)
        padding = (0, *self.padding)
        if self.cal_dim == "cin":
            # Scaling W_b's input channel c by α_c == scaling input channel c (α is constant over
            # the frame and the taps; padded zeros stay zero).
            return F.conv3d(x * alpha, weight, self.bias, stride, padding)
        out = F.conv3d(x, weight, None, stride, padding) * alpha  # output channel o of W_b scaled by α_o
        if self.bias is not None:
            out = out + self.bias.view(-1, 1, 1, 1)  # after the scaling: the bias is not calibrated
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, bias={self.bias is not None}, cal_dim={self.cal_dim!r}")


class RouteFuncMLP(nn.Module):
    """TAdaConv's routing function: the calibration factors α ``[B, C, T, 1, 1]`` of a clip ``[B, C, T, H, W]``.

    ``α = 1 + expand(ReLU(BN(reduce(frame_means + context(clip_mean)))))``: ``context`` is the released
    ``g`` (C → C, bias), ``reduce`` its ``a`` (temporal conv C → C // ratio, kernel ``kernels[0]``,
    bias), ``expand`` its ``b`` (temporal conv C // ratio → C, kernel ``kernels[1]``, no bias,
    zero-initialised so that α starts at exactly 1).
    """

    def __init__(self, c_in: int, ratio: int, kernels: Sequence[int] = (3, 3), bn_eps: float = 1e-5,
                 bn_mmt: float = 0.1):
        super().__init__()
        hidden = int(c_in // ratio)
        if hidden < 1:
            raise ValueError(f"c_in // ratio must be at least 1, got {c_in} // {ratio}")
        k0, k1 = (int(k) for k in kernels)
        self.c_in = c_in
        # Created in the released order (g, a, bn, b) so that a seed draws the released numbers.
        self.context = nn.Linear(c_in, c_in)
        self.reduce = nn.Conv1d(c_in, hidden, k0, padding=k0 // 2)
        self.bn = nn.BatchNorm1d(hidden, eps=bn_eps, momentum=bn_mmt)  # over B and T, as BatchNorm3d on [B, C, T, 1, 1]
        self.expand = nn.Conv1d(hidden, c_in, k1, padding=k1 // 2, bias=False)
        nn.init.zeros_(self.expand.weight)  # α ≡ 1 at init: TAdaConv starts as the plain conv W_b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.mean(dim=(3, 4))  # [B, C, T]: each frame's spatial mean
        clip = frames.mean(dim=2)  # [B, C]: the mean over T·H·W (every frame has H·W pixels)
        h = frames + self.context(clip).unsqueeze(-1)  # the clip's context added to every frame
        h = torch.relu(self.bn(self.reduce(h)))
        alpha = 1 + self.expand(h)
        return alpha[..., None, None]
