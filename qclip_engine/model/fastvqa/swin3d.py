"""FAST-VQA's video backbone: a Swin-T 3D whose window attention bias knows the fragments (the
released "gated relative position bias").

Written from the released ``fastvqa/models/swin_backbone.py``; its numerics are kept (eval-mode
outputs agree to float rounding) and so are its parameter names, so a released checkpoint maps by a
prefix. The unusual points reproduced are listed in this package's ``__init__.py``; in short:

* the windows scale with the input video against ``base_x_size`` and are then clamped per stage;
* the shift of odd blocks is half the *configured* window, even where the used window is smaller;
* the "gate" is the L1 distance ``g`` between two tokens' fragment coordinates (not a 0/1 flag),
  and the bias is ``rel · g + frag · (1 − g)`` on stages with a fragment table.

Everything that depends on shapes only (gates, shift masks, index slices) is built from Python
integers inside ``forward``, so a traced or exported graph holds them as constants of the fixed
T, H, W and the batch stays free.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .recipe import BASE_INPUT_SIZE  # (T, H, W) at which the configured window is used as is
SHIFT_MASK_VALUE = -100.0  # the released bias between tokens of different shifted-window regions

Size3 = tuple[int, int, int]


# -- window geometry (pure functions of shapes) ----------------------------------------------------
def adaptive_window_size(window_size: Sequence[int], input_size: Sequence[int],
                         base_size: Sequence[int] = BASE_INPUT_SIZE) -> Size3:
    """The window every block starts from: the configured window scaled by the input video's
    ``(T, H, W)`` over ``base_size``, floored (released ``get_adaptive_window_size``)."""
    return tuple(int(w) * int(x) // int(b) for w, x, b in zip(window_size, input_size, base_size))


def clamp_window(feature_size: Sequence[int], window_size: Sequence[int],
                 shift_size: Sequence[int]) -> tuple[Size3, Size3]:
    """A stage's used window and shift (released ``get_window_size``): along an axis whose feature
    size is at most the window, the window becomes the feature size and the shift 0. A shift is
    otherwise kept as given, even when it is not smaller than the window."""
    window, shift = [], []
    for f, w, s in zip(feature_size, window_size, shift_size):
        window.append(f if f <= w else w)
        shift.append(0 if f <= w else s)
    return tuple(window), tuple(shift)


def relative_position_index(window_size: Sequence[int]) -> torch.Tensor:
    """``[N, N]`` rows of the relative position tables for the tokens of one ``window_size``
    window (``N = Wd·Wh·Ww``, tokens in (d, h, w) order): the offset ``c_i − c_j`` flattened with
    strides ``(2Wh−1)(2Ww−1)``, ``2Ww−1``, 1. Released checkpoints store this same tensor."""
    wd, wh, ww = window_size
    grid = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij"))
    coords = grid.flatten(1)  # [3, N]
    delta = coords[:, :, None] - coords[:, None, :]  # [3, N, N]: token i minus token j
    return ((delta[0] + wd - 1) * (2 * wh - 1) * (2 * ww - 1)
            + (delta[1] + wh - 1) * (2 * ww - 1)
            + (delta[2] + ww - 1))


@functools.lru_cache(maxsize=None)
def nearest_source_index(in_size: int, out_size: int) -> tuple[int, ...]:
    """For each output position, the source position ``F.interpolate(mode="nearest")`` picks.

    Computed as torch's kernels do (float32 scale ``in/out`` and a float32 product, floored), which
    differs from exact integer division for some sizes; the released gate goes through that
    interpolation, so ours must round the same way."""
    if out_size == in_size:
        return tuple(range(out_size))
    if out_size == 2 * in_size:
        return tuple(i >> 1 for i in range(out_size))
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return tuple(int(i) for i in np.minimum(src, in_size - 1))


@functools.lru_cache(maxsize=None)
def _rolled_fragment_ids(fragments: int, padded: int, shift: int) -> tuple[int, ...]:
    """Fragment coordinate along one axis of each position of the cyclically shifted feature map."""
    ids = nearest_source_index(fragments, padded)
    return tuple(ids[(p + shift) % padded] for p in range(padded))


@functools.lru_cache(maxsize=None)
def _shift_regions(padded: int, window: int, shift: int) -> tuple[int, ...]:
    """Region label along one axis of each position of the shifted map, as the released
    ``compute_mask`` slices label it (the last slice covering a position wins; a zero shift makes
    its last slice cover the whole axis, so the axis is one region)."""
    if shift == 0:
        return (2,) * padded
    return tuple(2 if p >= padded - shift else 1 if p >= padded - window else 0 for p in range(padded))


def _per_token(values: torch.Tensor, axis: int, padded: Size3, window: Size3) -> torch.Tensor:
    """Spread a per-position vector along ``axis`` to ``[nW, N]``, in the windows' and tokens' order
    of the partition (windows (d, h, w)-major, tokens (d, h, w)-major)."""
    blocks = [p // w for p, w in zip(padded, window)]
    shape = [1] * 6
    shape[axis], shape[axis + 3] = blocks[axis], window[axis]
    return values.view(shape).expand(*blocks, *window).reshape(math.prod(blocks), math.prod(window))


def fragment_gate(padded: Sequence[int], window: Sequence[int], shift: Sequence[int],
                  fragments: Sequence[int] | None = None, *, device=None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``g [nW, N, N]``: for each window of the shifted, padded map, the L1 distance between two
    tokens' fragment coordinates. The coordinates are a ``fragments`` grid (released: one
    fragment in time and the used window's height and width) nearest-upscaled to the padded map
    and rolled like the features."""
    padded, window, shift = tuple(padded), tuple(window), tuple(shift)
    fragments = (1, window[1], window[2]) if fragments is None else tuple(fragments)
    n_windows, n_tokens = math.prod(p // w for p, w in zip(padded, window)), math.prod(window)
    gate = torch.zeros((n_windows, n_tokens, n_tokens), dtype=dtype, device=device)
    for axis in range(3):
        if fragments[axis] == 1:  # one fragment: every token has coordinate 0, no distance
            continue
        ids = _rolled_fragment_ids(fragments[axis], padded[axis], shift[axis] % padded[axis])
        tokens = _per_token(torch.tensor(ids, dtype=dtype, device=device), axis, padded, window)
        gate = gate + (tokens[:, :, None] - tokens[:, None, :]).abs()
    return gate


def shift_mask(padded: Sequence[int], window: Sequence[int], shift: Sequence[int], *, device=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[nW, N, N]``: 0 between tokens of the same region of the shifted map, −100 otherwise."""
    padded, window, shift = tuple(padded), tuple(window), tuple(shift)
    label = None
    for axis in range(3):
        regions = _shift_regions(padded[axis], window[axis], shift[axis])
        tokens = _per_token(torch.tensor(regions, dtype=torch.int64, device=device), axis, padded, window)
        label = tokens if label is None else label * 3 + tokens
    differ = label[:, :, None] != label[:, None, :]
    return torch.zeros(differ.shape, dtype=dtype, device=device).masked_fill(differ, SHIFT_MASK_VALUE)


def _partition(x: torch.Tensor, window: Size3) -> torch.Tensor:
    """``[B, Dp, Hp, Wp, C]`` → ``[B·nW, N, C]``."""
    _, dp, hp, wp, c = x.shape
    wd, wh, ww = window
    x = x.reshape(-1, dp // wd, wd, hp // wh, wh, wp // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)


def _unpartition(windows: torch.Tensor, window: Size3, padded: Size3) -> torch.Tensor:
    """``[B·nW, N, C]`` → ``[B, Dp, Hp, Wp, C]`` (the inverse of :func:`_partition`)."""
    dp, hp, wp = padded
    wd, wh, ww = window
    c = windows.shape[-1]
    x = windows.reshape(-1, dp // wd, hp // wh, wp // ww, wd, wh, ww, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(-1, dp, hp, wp, c)


def _padded(size: Sequence[int], window: Sequence[int]) -> Size3:
    return tuple(-(-s // w) * w for s, w in zip(size, window))


# -- modules ---------------------------------------------------------------------------------------
class DropPath(nn.Module):
    """Stochastic depth: in training, zero a sample's residual branch with probability ``p`` and
    scale the kept ones by ``1/(1 − p)``; identity in eval."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class PatchEmbed3D(nn.Module):
    """Video ``[B, 3, T, H, W]`` → tokens ``[B, C, T/2, H/4, W/4]``: a strided Conv3d and a
    LayerNorm over channels; sizes that are not multiples of the patch are zero-padded at the end."""

    def __init__(self, patch_size: Sequence[int] = (2, 4, 4), in_chans: int = 3, embed_dim: int = 96):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.embed_dim = embed_dim
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = [0, 0, 0, 0, 0, 0]  # F.pad order: W, H, D
        for i, (size, patch) in enumerate(zip(x.shape[2:], self.patch_size)):
            pad[2 * (2 - i) + 1] = (-size) % patch
        if any(pad):
            x = F.pad(x, pad)
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class PatchMerging(nn.Module):
    """Halve height and width (never time): each 2 × 2 neighbourhood's channels concatenated in
    the order (0,0), (1,0), (0,1), (1,1) of (h, w), LayerNorm(4C), Linear(4C → 2C, no bias). An
    odd height or width is zero-padded first. Channels-last in and out."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside windows, with a relative position bias and, where
    ``frag_bias``, the fragment gate mixing it with a second table. The tables are sized for the
    configured window; a smaller used window reads the rows of its offsets (the released
    ``resized_window_size`` slice of the index)."""

    def __init__(self, dim: int, window_size: Sequence[int], num_heads: int, frag_bias: bool = False):
        super().__init__()
        self.dim, self.num_heads = dim, num_heads
        self.window_size = tuple(window_size)
        self.scale = (dim // num_heads) ** -0.5
        rows = math.prod(2 * w - 1 for w in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        if frag_bias:  # released: left at zeros (a converted checkpoint fills it)
            self.fragment_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
        else:
            self.fragment_position_bias_table = None
        self.register_buffer("relative_position_index", relative_position_index(self.window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    @property
    def frag_bias(self) -> bool:
        return self.fragment_position_bias_table is not None

    def position_index(self, window: Sequence[int]) -> torch.Tensor:
        """``[N, N]`` table rows for a used ``window`` (at most the configured one per axis)."""
        window = tuple(window)
        if window == self.window_size:
            return self.relative_position_index
        if any(w > c for w, c in zip(window, self.window_size)):
            raise ValueError(f"window {window} exceeds the configured {self.window_size}")
        d, h, w = window
        full = self.relative_position_index.view(*self.window_size, *self.window_size)
        return full[:d, :h, :w, :d, :h, :w].reshape(d * h * w, d * h * w)

    def position_bias(self, window: Sequence[int], gate: torch.Tensor | None = None) -> torch.Tensor:
        """The additive bias: ``[nH, N, N]``, or ``[nW, nH, N, N]`` when gated by ``gate [nW, N, N]``."""
        index = self.position_index(window)
        n = index.shape[0]
        bias = self.relative_position_bias_table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
        if self.fragment_position_bias_table is None or gate is None:
            return bias
        frag = self.fragment_position_bias_table[index.reshape(-1)].reshape(n, n, -1).permute(2, 0, 1)
        g = gate.to(bias.dtype).unsqueeze(1)
        return bias.unsqueeze(0) * g + frag * (1 - g)

    def forward(self, x: torch.Tensor, window: Sequence[int], gate: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B·nW, N, C]`` (windows of one sample consecutive) → ``[B·nW, N, C]``."""
        bn, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(bn, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [B·nW, nH, N, N]
        bias = self.position_bias(window, gate)
        if bias.ndim == 4:  # one bias per window
            attn = (attn.view(-1, bias.shape[0], heads, n, n) + bias.unsqueeze(0)).view(-1, heads, n, n)
        else:
            attn = attn + bias.unsqueeze(0)
        if mask is not None:
            attn = attn.view(-1, mask.shape[0], heads, n, n) + mask.to(attn.dtype)[None, :, None]
            attn = attn.view(-1, heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bn, n, c))


class SwinBlock3D(nn.Module):
    """Pre-norm (shifted-)window attention and MLP, each a residual branch with stochastic depth.
    Channels-last ``[B, D, H, W, C]``; the stage gives the used window and shift."""

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int], mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, frag_bias: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window_size, num_heads, frag_bias=frag_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def attention_branch(self, x: torch.Tensor, window: Size3, shift: Size3, gate: torch.Tensor | None = None,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
        """norm1 → pad to whole windows → roll by −shift → window attention → undo → crop.
        ``gate``/``mask`` are built here when not given (a stage shares them between blocks)."""
        d, h, w = x.shape[1:4]
        padded = _padded((d, h, w), window)
        shifted = any(s > 0 for s in shift)
        y = self.norm1(x)
        if padded != (d, h, w):  # zeros after the norm, as released
            y = F.pad(y, (0, 0, 0, padded[2] - w, 0, padded[1] - h, 0, padded[0] - d))
        if shifted:
            y = torch.roll(y, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        if gate is None and self.attn.frag_bias:
            table = self.attn.relative_position_bias_table
            gate = fragment_gate(padded, window, shift, device=x.device, dtype=table.dtype)
        if mask is None and shifted:
            mask = shift_mask(padded, window, shift, device=x.device, dtype=y.dtype)
        out = self.attn(_partition(y, window), window, gate, mask if shifted else None)
        y = _unpartition(out, window, padded)
        if shifted:
            y = torch.roll(y, shifts=tuple(shift), dims=(1, 2, 3))
        return y[:, :d, :h, :w]

    def forward(self, x: torch.Tensor, window: Size3, shift: Size3, gate: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attention_branch(x, window, shift, gate, mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SwinStage(nn.Module):
    """One stage: ``depth`` blocks alternating unshifted and shifted windows, then (all stages but
    the last) patch merging. Channels-last in and out."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: Sequence[int], mlp_ratio: float,
                 drop_path: Sequence[float], frag_bias: bool, downsample: bool):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(w // 2 for w in self.window_size)  # of the configured window, always
        self.blocks = nn.ModuleList(
            SwinBlock3D(dim, num_heads, self.window_size, mlp_ratio, drop_path[i], frag_bias) for i in range(depth))
        self.downsample = PatchMerging(dim) if downsample else None
        # Gates and masks per geometry, device and dtype, built once: copying them to the device on
        # every call would cost a sync each time and is not allowed inside CUDA-graph capture.
        self._geometry_cache: dict[tuple, tuple[torch.Tensor | None, torch.Tensor | None]] = {}

    def _geometry(self, block: nn.Module, padded: Size3, window: Size3, shift: Size3, x: torch.Tensor):
        table = block.attn.relative_position_bias_table
        key = (padded, window, shift, block.attn.frag_bias, x.device, table.dtype, x.dtype)
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()  # an export builds them in its graph
        if tracing or key not in self._geometry_cache:
            gate = (fragment_gate(padded, window, shift, device=x.device, dtype=table.dtype)
                    if block.attn.frag_bias else None)
            mask = shift_mask(padded, window, shift, device=x.device, dtype=x.dtype) if any(shift) else None
            if tracing:
                return gate, mask
            self._geometry_cache[key] = (gate, mask)
        return self._geometry_cache[key]

    def forward(self, x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
        """``x [B, D, H, W, C]``; ``window``: the input-adapted window before clamping."""
        size = tuple(x.shape[1:4])
        window, shift = clamp_window(size, window, self.shift_size)
        padded = _padded(size, window)
        for i, block in enumerate(self.blocks):
            block_shift = shift if i % 2 else (0, 0, 0)
            x = block(x, window, block_shift, *self._geometry(block, padded, tuple(window), tuple(block_shift), x))
        return x if self.downsample is None else self.downsample(x)


class SwinTransformer3D(nn.Module):
    """The FAST-VQA backbone: normalised video ``[B, 3, T, H, W]`` → features ``[B, C_last, T', H', W']``
    (released defaults: Swin-T, window (8, 7, 7), fragment tables on the first three stages;
    FAST-VQA-M: ``window_size=(4, 4, 4)``, no fragment tables; FasterVQA keeps the defaults)."""

    def __init__(self, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: Sequence[int] = (8, 7, 7),
                 frag_biases: Sequence[bool] = (True, True, True, False), drop_path_rate: float = 0.1,
                 base_x_size: Sequence[int] = BASE_INPUT_SIZE, patch_size: Sequence[int] = (2, 4, 4),
                 in_chans: int = 3, mlp_ratio: float = 4.0):
        super().__init__()
        depths, num_heads, frag_biases = tuple(depths), tuple(num_heads), tuple(bool(f) for f in frag_biases)
        if not len(depths) == len(num_heads) == len(frag_biases):
            raise ValueError(f"depths, num_heads and frag_biases need one entry per stage: "
                             f"{depths}, {num_heads}, {frag_biases}")
        if len(window_size) != 3 or len(base_x_size) != 3 or len(patch_size) != 3:
            raise ValueError("window_size, base_x_size and patch_size are (time, height, width) triples")
        self.embed_dim = embed_dim
        self.window_size = tuple(window_size)
        self.base_x_size = tuple(base_x_size)
        self.patch_size = tuple(patch_size)
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.patch_embed = PatchEmbed3D(self.patch_size, in_chans, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth, linear over blocks
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.layers.append(SwinStage(
                embed_dim * 2 ** i, depth, num_heads[i], self.window_size, mlp_ratio, rates[start:start + depth],
                frag_biases[i], downsample=i < len(depths) - 1))
        self.norm = nn.LayerNorm(self.num_features)
        self.apply(_init_weights)

    def input_window(self, input_size: Sequence[int]) -> Size3:
        """The window adapted to an input of ``(T, H, W)``, before each stage clamps it."""
        window = adaptive_window_size(self.window_size, input_size, self.base_x_size)
        if min(window) < 1:
            raise ValueError(f"input {tuple(input_size)} is too small for window {self.window_size} at base "
                             f"{self.base_x_size}: adapted window {window}")
        return window

    def stage_geometry(self, input_size: Sequence[int]) -> list[dict]:
        """Per stage, for an input of ``(T, H, W)``: the feature ``size`` the blocks see, the used
        ``window`` and the ``shift`` of its shifted blocks."""
        size = [-(-int(s) // p) for s, p in zip(input_size, self.patch_size)]
        window = self.input_window(input_size)
        out = []
        for stage in self.layers:
            used, shift = clamp_window(size, window, stage.shift_size)
            out.append({"size": tuple(size), "window": used, "shift": shift})
            if stage.downsample is not None:
                size = [size[0], -(-size[1] // 2), -(-size[2] // 2)]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = self.input_window(tuple(x.shape[2:]))
        x = self.patch_embed(x).permute(0, 2, 3, 4, 1)  # channels-last through the stages
        for stage in self.layers:
            x = stage(x, window)
        return self.norm(x).permute(0, 4, 1, 2, 3)


def _init_weights(m: nn.Module) -> None:
    """Released init: Linear weights truncated normal (std 0.02, cut at ±2), biases 0; LayerNorm 1/0.
    The patch Conv3d keeps torch's default."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
