"""Fragments: FAST-VQA's grid mini-patch sampling, in numpy (torch-free: ``container`` imports it).

A model of size (H, W) sees a grid of ``H // 32 × W // 32`` cells; each cell of the output is a
``FRAGMENT_SIZE`` (32) square cut at NATIVE resolution from the matching cell of the frame, so a
1080p frame keeps its pixels (no resize blurs the artefacts a quality model should see). Frames
in an aligned group of ``aligned`` consecutive frames share one layout, so a cell is a small
video of its own. Rules, the released code's (FAST-VQA, ``get_spatial_fragments``) and ours:

* grid: released: ``fragments_h × fragments_w`` and ``fsize_h × fsize_w`` options; ours: the
  model size decides, cells of ``FRAGMENT_SIZE`` (both sides multiples of it, ``ValueError``
  otherwise) — the released models are 7 × 7 × 32 = 224.
* cells: ``start_i = min(E // g · i, E − 32)`` and ``length = E // g`` on each axis (E the
  frame's side, g the cells on it); the cut is ``[start_i + o, start_i + o + 32)``.
* offset ``o`` when training: released and ours: ``o ~ U{0 … length − 33}`` per (cell row,
  cell column, aligned group) when ``length > 32``, else 0; all the row offsets are drawn first,
  then the column ones, each of shape ``(gh, gw, groups)`` (:func:`draw_offsets`).
* offset at evaluation: released: drawn at random as in training (its test scores are
  stochastic); ours: the centred ``(length − 32) // 2`` (else 0). Why: a served score must be a
  function of the video, and the per-frame ``fragments`` preprocessing of
  ``container.to_rgb`` must give every frame of a video the same layout without a shared draw
  — the centred layout is the same for every frame of one size, so per-frame and per-clip
  fragments agree for any ``aligned``.
* frames smaller than the grid: released and ours: ``ratio = min(H / size_h, W / size_w)``; if
  ``ratio < 1`` the frame is upscaled by ``torch.nn.functional.interpolate(x / 255,
  scale_factor=1 / ratio, mode="bilinear")`` and brought back with ``(x · 255).type_as(uint8)``,
  i.e. truncated. :func:`bilinear_upscale` computes it in numpy bit-identically to torch's CPU
  float32 kernel (output size ``floor(side · scale)``; source position ``(d + 0.5) / scale −
  0.5`` from the scale factor, not the size ratio; each ``a·b + c·d`` a fused multiply-add, as
  ATen's AVX2 / AVX-512 builds compute it — ``fused=False`` is its scalar ``DEFAULT`` build).
  Only the pixels the cells read are computed.
* the released code lays the cells out on the frame's size BEFORE the upscale (its
  ``res_h, res_w`` are read first): the cells then cover the top-left, native-size part of the
  upscaled frame. Ours: the same, so a released model sees what it was trained on. Where a side
  is under 32 pixels the released layout starts cells at negative rows and fails; ours lays that
  side out on the upscaled frame (and, should float rounding leave it a pixel short of 32,
  repeats its edge pixel).
* a single frame: released and ours: ``aligned`` becomes 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..defaults import FRAGMENT_SIZE

__all__ = [
    "FRAGMENT_SIZE",
    "FragmentGeometry",
    "fragment_grid",
    "fragment_geometry",
    "centred_offsets",
    "draw_offsets",
    "fragment_layout",
    "fragment_frame",
    "fragment_clip",
    "bilinear_upscale",
]

Offsets = tuple[np.ndarray, np.ndarray]  # (row offsets, column offsets), each int (gh, gw, groups)


def fragment_grid(size: tuple[int, int]) -> tuple[int, int]:
    """Cells (rows, columns) of a model of ``size`` (H, W): ``size // FRAGMENT_SIZE``; both sides
    must be positive multiples of ``FRAGMENT_SIZE``."""
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W), got {size!r}") from None
    if h < FRAGMENT_SIZE or w < FRAGMENT_SIZE or h % FRAGMENT_SIZE or w % FRAGMENT_SIZE:
        raise ValueError(f"fragments need a model size whose sides are positive multiples of {FRAGMENT_SIZE}, "
                         f"got {(h, w)}")
    return h // FRAGMENT_SIZE, w // FRAGMENT_SIZE


@dataclass(frozen=True)
class FragmentGeometry:
    """Where the cells of one frame size lie (module docstring)."""

    grid: tuple[int, int]  # cells (rows, columns)
    frame: tuple[int, int]  # the native frame (H, W)
    scale_factor: float | None  # torch's scale_factor of the upscale; None: cut at native size
    cut_from: tuple[int, int]  # the frame the cells are cut from: native, or the upscaled one
    extent: tuple[int, int]  # the sides the cell starts and lengths are computed on
    starts: tuple[np.ndarray, np.ndarray]  # int64 [gh], [gw]: start of each cell row / column
    length: tuple[int, int]  # cell length on each axis; an offset lies in [0, length − 32)


def _starts(extent: int, cells: int) -> np.ndarray:
    # The released rule; the clamp at 0 only matters where float rounding left an upscaled side short.
    return np.maximum(np.minimum(extent // cells * np.arange(cells, dtype=np.int64), extent - FRAGMENT_SIZE), 0)


def fragment_geometry(height: int, width: int, size: tuple[int, int]) -> FragmentGeometry:
    """The grid, the upscale (frames smaller than ``size``) and the cells of a ``height × width`` frame."""
    gh, gw = fragment_grid(size)
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"frame must be at least 1×1, got {height}×{width}")
    ratio = min(height / size[0], width / size[1])  # Python floats, as the released code computes them
    scale_factor, cut_from = None, (height, width)
    if ratio < 1:
        scale_factor = 1 / ratio
        # torch's output size: the double product truncated
        cut_from = (int(height * scale_factor), int(width * scale_factor))
    # The released layout reads the sides before the upscale; a side under one cell fails there,
    # so that side is laid out on the upscaled frame.
    extent = tuple(native if native >= FRAGMENT_SIZE else scaled
                   for native, scaled in zip((height, width), cut_from))
    return FragmentGeometry(
        grid=(gh, gw), frame=(height, width), scale_factor=scale_factor, cut_from=cut_from, extent=extent,
        starts=(_starts(extent[0], gh), _starts(extent[1], gw)),
        length=(extent[0] // gh, extent[1] // gw),
    )


def centred_offsets(height: int, width: int, size: tuple[int, int], groups: int = 1) -> Offsets:
    """Evaluation offsets (ours): ``(length − 32) // 2`` in every cell, else 0; each ``(gh, gw, groups)``."""
    g = fragment_geometry(height, width, size)
    return tuple(np.full((*g.grid, groups), max(length - FRAGMENT_SIZE, 0) // 2, dtype=np.int64)
                 for length in g.length)


def draw_offsets(height: int, width: int, size: tuple[int, int], groups: int, rng: np.random.Generator) -> Offsets:
    """Training offsets: ``U{0 … length − 33}`` per (cell row, cell column, group) where a cell is
    longer than 32, else 0; rows drawn first, then columns (the released order)."""
    g = fragment_geometry(height, width, size)
    out = []
    for length in g.length:
        if length > FRAGMENT_SIZE:
            out.append(rng.integers(length - FRAGMENT_SIZE, size=(*g.grid, groups)).astype(np.int64))
        else:
            out.append(np.zeros((*g.grid, groups), dtype=np.int64))
    return tuple(out)


def _check_offsets(offsets, geometry: FragmentGeometry, groups: int) -> Offsets:
    try:
        off_h, off_w = offsets
    except (TypeError, ValueError):
        raise ValueError("offsets must be a pair (row offsets, column offsets)") from None
    checked = []
    for name, off, length in (("row", off_h, geometry.length[0]), ("column", off_w, geometry.length[1])):
        off = np.asarray(off)
        if off.shape == geometry.grid and groups == 1:
            off = off[..., None]
        if off.shape != (*geometry.grid, groups) or not np.issubdtype(off.dtype, np.integer):
            raise ValueError(f"{name} offsets must be integers of shape {(*geometry.grid, groups)}, "
                             f"got {off.dtype} {off.shape}")
        top = max(length - FRAGMENT_SIZE, 1)  # a cell no longer than 32 takes offset 0 only
        if off.min() < 0 or off.max() >= top:
            raise ValueError(f"{name} offsets must lie in [0, {top - 1}], got {off.min()}..{off.max()}")
        checked.append(off.astype(np.int64))
    return tuple(checked)


def _tops_lefts(g: FragmentGeometry, offsets: Offsets, groups: int) -> Offsets:
    off_h, off_w = _check_offsets(offsets, g, groups)
    return g.starts[0][:, None, None] + off_h, g.starts[1][None, :, None] + off_w


def fragment_layout(height: int, width: int, size: tuple[int, int], offsets: Offsets | None = None) -> Offsets:
    """Top and left of every cell's cut, each int64 ``(gh, gw, groups)``, in the frame the cells are
    cut from (``fragment_geometry(...).cut_from``: the native frame unless it is upscaled).
    ``offsets`` None: the centred ones (one group); else each ``(gh, gw, groups)`` or ``(gh, gw)``."""
    g = fragment_geometry(height, width, size)
    if offsets is None:
        offsets = centred_offsets(height, width, size)
    groups = np.shape(offsets[0])[-1] if np.ndim(offsets[0]) == 3 else 1
    return _tops_lefts(g, offsets, groups)


def fragment_frame(frame: np.ndarray, size: tuple[int, int], offsets: Offsets | None = None) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` → its fragments, uint8 ``[size..., 3]``; centred offsets unless
    ``offsets`` (each ``(gh, gw)`` or ``(gh, gw, 1)``) are given. ``container``'s per-frame
    ``fragments`` preprocessing."""
    frame = np.asarray(frame)
    if frame.ndim != 3:
        raise ValueError(f"frame must be uint8 [H, W, 3], got shape {frame.shape}")
    return fragment_clip(frame[None], size, aligned=1, offsets=offsets)[0]


def fragment_clip(frames: np.ndarray, size: tuple[int, int], *, aligned: int,
                  rng: np.random.Generator | None = None, offsets: Offsets | None = None) -> np.ndarray:
    """uint8 RGB ``[T, H, W, 3]`` → fragments uint8 ``[T, size..., 3]``: each group of ``aligned``
    consecutive frames shares one layout (T must be a multiple of ``aligned``; a single frame
    takes ``aligned`` 1). Offsets: ``offsets`` if given (each ``(gh, gw, T // aligned)``), else
    drawn from ``rng`` (training), else centred (evaluation)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if isinstance(aligned, bool) or not isinstance(aligned, (int, np.integer)) or aligned < 1:
        raise ValueError(f"aligned must be a positive integer, got {aligned!r}")
    if rng is not None and offsets is not None:
        raise ValueError("give rng (draw the offsets) or offsets, not both")
    t, height, width = frames.shape[:3]
    if t == 1:
        aligned = 1  # an image: released too
    if t == 0 or t % aligned:
        raise ValueError(f"{t} frames do not split into groups of aligned={aligned}")
    groups = t // aligned
    g = fragment_geometry(height, width, size)
    if offsets is None:
        offsets = (draw_offsets(height, width, size, groups, rng) if rng is not None
                   else centred_offsets(height, width, size, groups))
    tops, lefts = _tops_lefts(g, offsets, groups)  # (gh, gw, groups)
    cell = np.arange(FRAGMENT_SIZE)
    out = np.empty((t, *(int(s) for s in size), 3), dtype=np.uint8)
    gh, gw = g.grid
    for group in range(groups):
        # rows[i, j, a], cols[i, j, b]: the cut of cell (i, j) in the frame the cells are cut from
        rows = np.minimum(tops[:, :, group, None] + cell, g.cut_from[0] - 1)
        cols = np.minimum(lefts[:, :, group, None] + cell, g.cut_from[1] - 1)
        clip = frames[group * aligned:(group + 1) * aligned]
        if g.scale_factor is None:
            cut = clip[:, rows[:, :, :, None], cols[:, :, None, :]]
        else:  # a frame at a time: its float64 temporaries stay in cache
            cut = np.concatenate([_upscaled_at(clip[i:i + 1], g.cut_from, g.scale_factor, rows[:, :, :, None],
                                               cols[:, :, None, :]) for i in range(len(clip))])
        # (T, gh, gw, 32, 32, 3) → (T, gh, 32, gw, 32, 3): cell (i, j) lands at rows i·32…, columns j·32…
        out[group * aligned:(group + 1) * aligned] = cut.transpose(0, 1, 3, 2, 4, 5).reshape(
            len(clip), gh * FRAGMENT_SIZE, gw * FRAGMENT_SIZE, 3)
    return out


# -- torch's bilinear upscale, bit for bit --------------------------------------------------------
def _fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``a·b + c`` of float32 arrays rounded once to float32, as a fused multiply-add does. The
    product is exact in float64 and the float64 sum is rounded once more to float32; that double
    rounding errs only where the float64 sum lands exactly halfway between two float32 values
    (normal range) while the exact sum does not: there the sum is nudged toward the exact one."""
    p = a.astype(np.float64) * b.astype(np.float64)
    s = np.ascontiguousarray(p + c)  # fresh: written below through its ravel()
    halfway = (s.view(np.int64) & 0x1FFFFFFF) == 0x10000000  # the 29 bits float32 drops: exactly ½ ulp
    if halfway.any():
        at = np.flatnonzero(halfway)
        ps, cs, ss = p.ravel()[at], np.broadcast_to(c, s.shape).astype(np.float64).ravel()[at], s.ravel()[at]
        bp = ss - ps
        err = (ps - (ss - bp)) + (cs - bp)  # Knuth's two-sum: ss + err == ps + cs exactly
        s.ravel()[at] = np.where(err == 0, ss, np.nextafter(ss, np.where(err > 0, np.inf, -np.inf)))
    return s.astype(np.float32)


def _linear_taps(n_in: int, n_out: int, scale_factor: float, fused: bool):
    """torch's (align_corners=False, antialias=False) taps of each output position: the two source
    indices and their float32 weights."""
    d = np.arange(n_out)
    if n_out == n_in:  # torch copies when a side keeps its size
        return d, d, np.ones(n_out, np.float32), np.zeros(n_out, np.float32)
    scale = np.float32(1.0 / scale_factor)  # from the scale factor (recompute_scale_factor None)
    centre = d.astype(np.float32) + np.float32(0.5)
    if fused:
        src = _fma32(np.full(n_out, scale, np.float32), centre, np.full(n_out, -0.5, np.float32))
    else:
        src = scale * centre - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1)).astype(np.float32)
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, np.float32(1) - w1, w1


def _upscaled_at(frames: np.ndarray, scaled: tuple[int, int], scale_factor: float, rows: np.ndarray,
                 cols: np.ndarray, fused: bool = True) -> np.ndarray:
    """The pixels at (``rows``, ``cols``) (broadcast together) of uint8 ``frames`` ``[T, H, W, C]``
    upscaled to ``scaled`` as the released code does: ``(interpolate(x / 255) · 255).type_as(uint8)``."""
    (h0, h1, a0, a1), (w0, w1, b0, b1) = (
        _linear_taps(n_in, n_out, scale_factor, fused) for n_in, n_out in zip(frames.shape[1:3], scaled))
    x = frames.astype(np.float32) / np.float32(255)  # torch's uint8 / 255.0: a float32 division
    r0, r1, c0, c1 = h0[rows], h1[rows], w0[cols], w1[cols]
    ra0, ra1 = a0[rows][..., None], a1[rows][..., None]  # a channel axis to broadcast over
    cb0, cb1 = b0[cols][..., None], b1[cols][..., None]
    x00, x01, x10, x11 = x[:, r0, c0], x[:, r0, c1], x[:, r1, c0], x[:, r1, c1]
    if fused:  # torch: top·wa0 + bottom·wa1 of (left·wb0 + right·wb1), each ``p·q + r·s`` one fma
        top = _fma32(x00, np.broadcast_to(cb0, x00.shape), x01 * cb1)
        bottom = _fma32(x10, np.broadcast_to(cb0, x10.shape), x11 * cb1)
        value = _fma32(top, np.broadcast_to(ra0, top.shape), bottom * ra1)
    else:
        value = (x00 * cb0 + x01 * cb1) * ra0 + (x10 * cb0 + x11 * cb1) * ra1
    return (value * np.float32(255)).astype(np.uint8)  # float → uint8 truncates, as torch's type_as


def bilinear_upscale(frames: np.ndarray, scale_factor: float, *, fused: bool = True) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` upscaled as ``(F.interpolate(x / 255.0, scale_factor=scale_factor,
    mode="bilinear") * 255.0).type_as(x)`` on torch's CPU, bit for bit: ``[T, floor(H·s),
    floor(W·s), 3]``. ``fused``: ATen's AVX2 / AVX-512 kernels (fused multiply-adds); False: its
    scalar ``DEFAULT`` build. (The fragments compute only the pixels their cells read.)"""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, C], got {frames.dtype} {frames.shape}")
    if not scale_factor > 0:
        raise ValueError(f"scale_factor must be positive, got {scale_factor!r}")
    h, w = frames.shape[1:3]
    out = (int(h * scale_factor), int(w * scale_factor))
    return _upscaled_at(frames, out, float(scale_factor), np.arange(out[0])[:, None], np.arange(out[1])[None, :],
                        fused)
