"""Frame-difference MSE, the motion signal the MSE-based samplers rank frames by.

For RGB uint8 frames ``v_0 … v_{T-1}`` at analysis resolution::

    MSE(a, b) = mean over H·W·3 of (a − b)²
    m_t = ½ (MSE(v_t, v_{t+1}) + MSE(v_t, v_{t−1}))

the first and last frame use their single neighbour; a single frame has m = 0.
This is the CPU reference; ``kernels/frame_mse.cu`` computes the same on the GPU.
"""

from __future__ import annotations

import numpy as np

# Pairs per chunk of the pairwise pass: bounds the int16 temporary (~chunk × H·W·3 × 2 bytes).
_CHUNK = 32


def pair_mse(frames) -> np.ndarray:
    """MSE of each adjacent pair, float64 ``[T − 1]`` (exact: integer sums, one division)."""
    # A torch tensor (any device) is copied to host memory; torch itself is not imported here.
    x = frames.numpy(force=True) if type(frames).__module__.startswith("torch") else np.asarray(frames)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"expected uint8 frames [T, H, W, C], got {x.dtype} {x.shape}")
    t = x.shape[0]
    flat = x.reshape(t, -1)
    sums = np.empty(max(t - 1, 0), dtype=np.int64)
    for start in range(0, t - 1, _CHUNK):
        stop = min(start + _CHUNK, t - 1)
        # |diff| ≤ 255 fits int16; the squares are summed in int64 by einsum: exact, ~2.5× int64 math.
        diff = np.subtract(flat[start + 1 : stop + 1], flat[start:stop], dtype=np.int16)
        sums[start:stop] = np.einsum("ij,ij->i", diff, diff, dtype=np.int64)
    return sums / flat.shape[1]


def frame_pair_mse(a: np.ndarray, b: np.ndarray) -> float:
    """``MSE(a, b)`` of two uint8 frames of one shape: ``pair_mse`` of the pair, without stacking them
    (the monitor's health takes it for every frame of every source)."""
    diff = np.subtract(b.reshape(-1), a.reshape(-1), dtype=np.int16)
    return int(np.einsum("i,i->", diff, diff, dtype=np.int64)) / diff.size


def neighbour_average(pair: np.ndarray) -> np.ndarray:
    """Pair MSEs ``[T − 1]`` → per-frame ``m`` ``[T]`` (float32)."""
    pair = np.asarray(pair, dtype=np.float64)
    if pair.size == 0:
        return np.zeros(1, dtype=np.float32)
    m = np.empty(pair.size + 1, dtype=np.float64)
    m[0], m[-1] = pair[0], pair[-1]
    m[1:-1] = 0.5 * (pair[:-1] + pair[1:])
    return m.astype(np.float32)


def frame_mse(frames_u8) -> np.ndarray:
    """Per-frame motion ``m`` of uint8 frames ``[T, H, W, 3]`` → float32 ``[T]``."""
    if len(frames_u8) == 0:
        raise ValueError("frame_mse needs at least one frame")
    return neighbour_average(pair_mse(frames_u8))
