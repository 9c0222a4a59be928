"""How a decoded frame reaches model size: every preprocessing of ``defaults.PREPROCESSINGS`` on an
upright uint8 RGB frame (:func:`resize_rgb`; ``container.to_rgb`` calls it for a decoded frame, the
stream sources for frames handed over in memory) — swscale's bilinear (``fast``), PIL's
(``reference``), the short side and a centre crop (``short_side_crop``, ``mmcv_short_side_crop``:
the released CLIPVQA transform's rounding and OpenCV's fixed-point bilinear), FAST-VQA's fragments
(``fragments``, ``video/fragments.py``) or the fragments and the crop side by side
(``fragments_and_crop``, DVLTA-VQA's two inputs from one decode) — and the model sizes each can make
(:func:`check_preprocessing_size`). Torch-free."""

from __future__ import annotations

import av
import numpy as np

from ..defaults import PREPROCESSING, PREPROCESSINGS, short_side_for_crop
from .fragments import fragment_frame, fragment_grid

INTERPOLATION = "BILINEAR"  # PE-Core's preprocessing: bilinear squash-resize


def pil_resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` → ``size`` (H, W) by PIL's bilinear ``Image.resize`` (antialiased when
    shrinking: the filter widens with the scale), which is what torchvision's
    ``Resize(BILINEAR)`` does to a PIL image. PIL releases the GIL while it resizes."""
    from PIL import Image  # only the reference preprocessing needs PIL

    h, w = size
    resized = Image.fromarray(np.ascontiguousarray(frame)).resize((w, h), Image.Resampling.BILINEAR)
    return np.array(resized)  # writable, as the swscale path's arrays are


def short_side_crop(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` → square ``size`` (H, W): the short side resized to
    ``defaults.short_side_for_crop(size)`` by :func:`pil_resize` (the long side in proportion,
    rounded down), then the centre ``size`` crop (offsets rounded to nearest) — what torchvision's
    ``Resize(S)`` and ``CenterCrop(size)`` do to a PIL image."""
    if size[0] != size[1]:  # the short side alone decides the scale: a square crop always fits
        raise ValueError(f"short_side_crop takes a square model size, got {tuple(size)}")
    h, w = frame.shape[:2]
    short = short_side_for_crop(size)
    scaled = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    resized = pil_resize(frame, scaled)
    c = size[0]
    top, left = int(round((scaled[0] - c) / 2.0)), int(round((scaled[1] - c) / 2.0))
    return np.ascontiguousarray(resized[top : top + c, left : left + c])


def mmcv_short_side_crop(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` → square ``size`` (H, W) as the released CLIPVQA evaluation
    transform makes it: the short side scaled to ``defaults.short_side_for_crop(size)`` with the
    long side in proportion, rounded to nearest; then the centre ``size`` crop, offsets rounded
    down; the resize by :func:`linear_resize_window` (bilinear without antialiasing). Only the
    crop's pixels are computed: each resized pixel depends on its own coordinate alone."""
    if size[0] != size[1]:  # the short side alone decides the scale: a square crop always fits
        raise ValueError(f"mmcv_short_side_crop takes a square model size, got {tuple(size)}")
    h, w = frame.shape[:2]
    scale = short_side_for_crop(size) / min(h, w)
    scaled_h, scaled_w = int(h * scale + 0.5), int(w * scale + 0.5)
    c = size[0]
    top, left = (scaled_h - c) // 2, (scaled_w - c) // 2
    return linear_resize_window(frame, (scaled_h, scaled_w), (top, left), (c, c))


# Fixed-point bilinear, as OpenCV's 8-bit INTER_LINEAR computes it: each tap weight in
# LINEAR_WEIGHT_BITS bits, the two passes' product rounded once at the end.
LINEAR_WEIGHT_BITS = 11


def linear_taps(n_in: int, n_out: int, first: int, count: int) -> tuple[np.ndarray, ...]:
    """Source indices and fixed-point weights ``(i0, i1, w0, w1)`` of outputs ``first`` …
    ``first + count - 1`` when ``n_in`` samples are resized to ``n_out`` by non-antialiased linear
    interpolation with half-pixel centres: output ``d`` reads source position
    ``(d + 0.5) · n_in / n_out − 0.5``, clamped to the edge samples (no filter widening when
    shrinking). Positions in float32 and weights rounded half to even, as OpenCV does."""
    d = np.arange(first, first + count, dtype=np.float64)
    position = ((d + 0.5) * (1 / (n_out / n_in)) - 0.5).astype(np.float32)
    i0 = np.floor(position).astype(np.int64)
    frac = position - i0.astype(np.float32)
    frac[i0 < 0] = 0  # before the first centre: the first sample alone
    frac[i0 >= n_in - 1] = 0  # past the last centre: the last sample alone
    i0 = np.clip(i0, 0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    one = 1 << LINEAR_WEIGHT_BITS
    w0 = np.rint((np.float32(1) - frac) * one).astype(np.int32)
    w1 = np.rint(frac * one).astype(np.int32)
    return i0, i1, w0, w1


def linear_resize_window(frame: np.ndarray, scaled: tuple[int, int], origin: tuple[int, int],
                         size: tuple[int, int]) -> np.ndarray:
    """The ``size`` (H, W) window at ``origin`` (top, left) of uint8 RGB ``frame`` resized to
    ``scaled`` (H, W) by :func:`linear_taps` in both directions; integer arithmetic throughout
    (int32 cannot overflow: 255 · 2049² < 2³¹), so the result does not depend on the pass order."""
    y0, y1, b0, b1 = linear_taps(frame.shape[0], scaled[0], origin[0], size[0])
    x0, x1, a0, a1 = linear_taps(frame.shape[1], scaled[1], origin[1], size[1])
    rows = frame[y0].astype(np.int32) * b0[:, None, None] + frame[y1].astype(np.int32) * b1[:, None, None]
    both = rows[:, x0] * a0[None, :, None] + rows[:, x1] * a1[None, :, None]
    shift = 2 * LINEAR_WEIGHT_BITS
    return ((both + (1 << (shift - 1))) >> shift).astype(np.uint8)


def check_preprocessing_size(preprocessing: str, size: tuple[int, int]) -> None:
    """ValueError, when a model or dataset is built, for a model size ``preprocessing`` can never
    make (rather than one error per video): fragments need whole 32-pixel cells, and
    ``fragments_and_crop`` two such square halves side by side."""
    if preprocessing == "fragments":
        fragment_grid(size)
    elif preprocessing == "fragments_and_crop":
        fragment_grid(packed_half(size))


def packed_half(size: tuple[int, int]) -> tuple[int, int]:
    """The square half (S, S) of a ``fragments_and_crop`` model size (S, 2S); ValueError otherwise."""
    h, w = size
    if w != 2 * h:
        raise ValueError(f"fragments_and_crop takes a model size (S, 2S): two square halves side by side, "
                         f"got {tuple(size)}")
    return h, h


def fragments_and_crop(frame: np.ndarray, size: tuple[int, int], fragments: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` (upright, native size) → ``size`` (S, 2S): on the left the frame's
    fragments of (S, S) (``fragments.fragment_frame``, centred; or ``fragments``, cut already, e.g.
    with a layout drawn for training), on the right its ``mmcv_short_side_crop`` of (S, S). One
    decoded frame makes both of DVLTA-VQA's inputs (``qclip_engine/model/dvlta``)."""
    half = packed_half(size)
    left = fragment_frame(frame, half) if fragments is None else fragments
    if tuple(left.shape) != (*half, 3):
        raise ValueError(f"fragments must be {(*half, 3)}, got {tuple(left.shape)}")
    return np.concatenate([left, mmcv_short_side_crop(frame, half)], axis=1)


def resize_rgb(frame: np.ndarray, size: tuple[int, int], preprocessing: str = PREPROCESSING) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` → ``size`` (H, W): swscale with the decoder's interpolation (``fast``),
    PIL's bilinear resize (``reference``), resize and centre crop (``short_side_crop``,
    ``mmcv_short_side_crop``), the centred fragments of the upright native frame (``fragments``:
    ``fragments.fragment_frame``) or both of those side by side (``fragments_and_crop``), as
    :func:`to_rgb` makes a decoded frame model-size."""
    if preprocessing not in PREPROCESSINGS:
        raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
    if preprocessing == "reference":
        return pil_resize(frame, size)
    if preprocessing == "short_side_crop":
        return short_side_crop(frame, size)
    if preprocessing == "mmcv_short_side_crop":
        return mmcv_short_side_crop(frame, size)
    if preprocessing == "fragments":
        return fragment_frame(frame, size)
    if preprocessing == "fragments_and_crop":
        return fragments_and_crop(frame, size)
    h, w = size
    av_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    return av_frame.reformat(width=w, height=h, format="rgb24", interpolation=INTERPOLATION).to_ndarray()
