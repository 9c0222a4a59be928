"""Per-frame motion ``m`` wherever the frames are: numpy, torch on the CPU, torch on a GPU.

* numpy ``[T, H, W, 3]`` → the reference, :func:`qclip_engine.video.frame_mse.frame_mse`;
* a torch CUDA tensor → the NVRTC kernel (``qclip_engine.kernels.frame_mse``) when cuda-python
  imports, on torch's current stream;
* any other torch tensor (CPU, or CUDA without cuda-python) → :func:`pair_sums_torch` on the
  tensor's own device.

All three are exact: integer sums of squared differences (int64), one float64 division per
pair, the same neighbour average. Only ``m`` (4 bytes a frame) comes back to the host: the
sampler runs there, on ``m`` alone, while the frames stay where they are.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from .frame_mse import frame_mse, neighbour_average

log = logging.getLogger(__name__)
_CHUNK = 32  # pairs per step of the torch path: bounds its int32 temporary (~chunk × H·W·3 × 4 bytes)


def pair_sums_torch(frames):
    """Sum of squared differences of each adjacent pair of uint8 frames ``[T, H, W, C]`` →
    int64 tensor ``[T − 1]`` on the frames' device (exact)."""
    import torch

    if frames.dtype != torch.uint8 or frames.dim() != 4:
        raise ValueError(f"expected uint8 frames [T, H, W, C], got {frames.dtype} {tuple(frames.shape)}")
    flat = frames.reshape(frames.shape[0], -1)
    sums = torch.empty(max(flat.shape[0] - 1, 0), dtype=torch.int64, device=frames.device)
    for start in range(0, flat.shape[0] - 1, _CHUNK):
        stop = min(start + _CHUNK, flat.shape[0] - 1)
        diff = flat[start + 1 : stop + 1].to(torch.int32) - flat[start:stop].to(torch.int32)
        sums[start:stop] = (diff * diff).sum(dim=1, dtype=torch.int64)  # ≤ 65025 a byte: int32 squares are exact
    return sums


def kernel_available() -> bool:
    """Whether the CUDA kernel can run here (cuda-python's bindings import)."""
    import importlib.util

    try:
        return importlib.util.find_spec("cuda.bindings") is not None
    except ModuleNotFoundError:  # no "cuda" package at all
        return False


@functools.lru_cache(maxsize=1)
def _kernel_failed(exc: Exception) -> None:
    log.warning("the CUDA frame-MSE kernel failed (%s: %s); motion runs in torch on the GPU instead",
                type(exc).__name__, exc)


def frame_motion(frames) -> np.ndarray:
    """Per-frame motion ``m`` (float32 ``[T]``, on the host) of uint8 frames ``[T, H, W, 3]``."""
    if isinstance(frames, np.ndarray):
        return frame_mse(frames)
    if len(frames) == 0:
        raise ValueError("frame_mse needs at least one frame")
    if frames.is_cuda and kernel_available():
        try:
            from ..kernels.frame_mse import frame_mse_cuda

            return frame_mse_cuda(frames.contiguous()).cpu().numpy()
        except Exception as exc:  # NVRTC or driver trouble: the torch path gives the same values
            _kernel_failed(exc)
    sums = pair_sums_torch(frames).cpu().numpy()  # T − 1 integers: the only copy back
    return neighbour_average(sums / (frames[0].numel()))
