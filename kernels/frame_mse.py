"""Launcher for ``frame_mse.cu``: per-frame motion ``m`` of uint8 frames on the GPU.

``frame_mse_cuda(frames)`` is the GPU twin of :func:`qclip_engine.video.frame_mse.frame_mse`
and returns the same values (exact integer sums, the same float64 finish, float32 out).

The ``.cu`` source is compiled at run time with NVRTC for the device's own architecture
(``sm_XY`` from :func:`torch.cuda.get_device_capability`) into a cubin, loaded with the CUDA
driver API into the device's primary context (the one torch uses) and launched on torch's
current stream. Both go through the low-level ``cuda.bindings`` (``nvrtc`` and ``driver``)
modules of cuda-python, whose call signatures have been stable across cuda-python 12.x/13.x;
they are imported lazily, so importing this module needs neither cuda-python nor a GPU.
``compile_ptx_with_nvcc`` builds PTX with the command-line ``nvcc`` instead (CI, no GPU).
"""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

KERNEL_SOURCE = Path(__file__).with_name("frame_mse.cu")
KERNEL_NAMES = ("frame_mse_pair_sums", "frame_mse_finalize")

# Launch shape of the pair kernel. THREADS_PER_BLOCK must be a multiple of 32 and at most
# FRAME_MSE_MAX_THREADS in frame_mse.cu (256). Each thread owns 16 bytes of every frame on
# the vectorised path (4 on the byte path), so a block spans 2048 (512) bytes of a frame:
# 384×384×3 frames give 216 blocks, enough to spread over all SMs of an H100 (132).
THREADS_PER_BLOCK = 128
MAX_THREADS_PER_BLOCK = 256
VECTOR_BYTES = 16  # bytes per thread and frame, vectorised path (one uint4 load)
SCALAR_BYTES = 4  # bytes per thread and frame, byte path (4 coalesced byte loads)
FINALIZE_THREADS = 256
assert THREADS_PER_BLOCK % 32 == 0 and 32 <= THREADS_PER_BLOCK <= MAX_THREADS_PER_BLOCK

_cache: dict[tuple[int, str], "_Module"] = {}
_cache_lock = threading.Lock()


# --------------------------------------------------------------------------- validation


def _check_frames(frames: Any) -> None:
    """Reject anything the kernels cannot take, before any CUDA / cuda-python work.

    The device is checked last so that every other check also runs on a CPU tensor.
    """
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"frame_mse_cuda expects a torch.Tensor, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"frame_mse_cuda expects uint8 frames, got dtype {frames.dtype}")
    if frames.ndim != 4:
        raise ValueError(f"frame_mse_cuda expects frames [T, H, W, 3] (4 dims), got shape {tuple(frames.shape)}")
    if not frames.is_contiguous():
        raise ValueError("frame_mse_cuda expects a contiguous tensor (call .contiguous() first)")
    if frames.shape[0] < 1:
        raise ValueError("frame_mse_cuda needs at least one frame")
    if frames.shape[0] > 2**31 - 1:
        raise ValueError(f"frame_mse_cuda: too many frames ({frames.shape[0]})")
    if math.prod(frames.shape[1:]) == 0:
        raise ValueError(f"frame_mse_cuda got empty frames, shape {tuple(frames.shape)}")
    if frames.device.type != "cuda":
        raise ValueError(f"frame_mse_cuda expects a CUDA tensor, got device {frames.device}")


# --------------------------------------------------------------------------- nvcc (CI)


def compile_ptx_with_nvcc(arch: str = "sm_90") -> str:
    """PTX of ``frame_mse.cu`` from the command-line compiler: ``nvcc --ptx -arch=ARCH``."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("nvcc not found on PATH: install the CUDA toolkit to compile frame_mse.cu")
    with tempfile.TemporaryDirectory(prefix="frame_mse_") as tmp:
        out = Path(tmp) / "frame_mse.ptx"
        cmd = [nvcc, "--ptx", f"-arch={arch}", "-o", str(out), str(KERNEL_SOURCE)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"nvcc failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
            )
        return out.read_text()


# --------------------------------------------------------------------------- NVRTC + driver


def _nvrtc_check(result: tuple, what: str, prog: Any = None) -> tuple:
    from cuda.bindings import nvrtc

    err, *values = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        msg = f"{what} failed: {err!r}"
        if prog is not None:
            msg += "\n" + _nvrtc_log(prog)
        raise RuntimeError(msg)
    return tuple(values)


def _nvrtc_log(prog: Any) -> str:
    from cuda.bindings import nvrtc

    err, size = nvrtc.nvrtcGetProgramLogSize(prog)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS or size <= 1:
        return ""
    log = b" " * size
    (err,) = nvrtc.nvrtcGetProgramLog(prog, log)
    return log.rstrip(b"\x00").decode(errors="replace") if err == nvrtc.nvrtcResult.NVRTC_SUCCESS else ""


def compile_cubin_with_nvrtc(arch: str = "sm_90") -> bytes:
    """Cubin of ``frame_mse.cu`` for ``arch`` (``"sm_90"``) from NVRTC; needs no GPU."""
    from cuda.bindings import nvrtc

    major, minor = (int(x) for x in _nvrtc_check(nvrtc.nvrtcVersion(), "nvrtcVersion"))
    (supported,) = _nvrtc_check(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs")
    if not arch.startswith("sm_") or int(arch[3:]) not in supported:
        raise RuntimeError(
            f"NVRTC {major}.{minor} cannot compile for {arch}; it supports "
            + ", ".join(f"sm_{a}" for a in sorted(supported))
        )
    (prog,) = _nvrtc_check(
        nvrtc.nvrtcCreateProgram(KERNEL_SOURCE.read_bytes(), b"frame_mse.cu", 0, [], []),
        "nvrtcCreateProgram",
    )
    try:
        options = [f"--gpu-architecture={arch}".encode(), b"--std=c++17"]
        _nvrtc_check(nvrtc.nvrtcCompileProgram(prog, len(options), options), "NVRTC compile", prog)
        (size,) = _nvrtc_check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _nvrtc_check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _cu_check(result: Any, what: str) -> tuple:
    from cuda.bindings import driver

    err, *values = result if isinstance(result, tuple) else (result,)
    if err != driver.CUresult.CUDA_SUCCESS:
        _, name = driver.cuGetErrorName(err)
        _, text = driver.cuGetErrorString(err)
        name = name.decode() if name else repr(err)
        raise RuntimeError(f"{what} failed: {name}: {text.decode() if text else ''}")
    return tuple(values)


class _Module:
    """The loaded cubin of one device: its primary context and the two kernels."""

    def __init__(self, device_index: int, arch: str) -> None:
        from cuda.bindings import driver

        cubin = compile_cubin_with_nvrtc(arch)
        _cu_check(driver.cuInit(0), "cuInit")
        (cu_device,) = _cu_check(driver.cuDeviceGet(device_index), "cuDeviceGet")
        # torch's runtime uses the device's primary context; retaining it here (for the
        # life of the process) gives the driver calls the very same context.
        (self.context,) = _cu_check(
            driver.cuDevicePrimaryCtxRetain(cu_device), "cuDevicePrimaryCtxRetain"
        )
        # The image goes in by address (an int), which every cuda.bindings version accepts.
        image = np.frombuffer(cubin, dtype=np.uint8)
        with self.current():
            (self.module,) = _cu_check(driver.cuModuleLoadData(image.ctypes.data), "cuModuleLoadData")
            self.pair_sums, self.finalize = (
                _cu_check(driver.cuModuleGetFunction(self.module, name.encode()), f"cuModuleGetFunction({name})")[0]
                for name in KERNEL_NAMES
            )

    def current(self) -> "_PushedContext":
        return _PushedContext(self.context)


class _PushedContext:
    """Make a context current on this thread for a block (cuCtxPushCurrent / cuCtxPopCurrent)."""

    def __init__(self, context: Any) -> None:
        self.context = context

    def __enter__(self) -> None:
        from cuda.bindings import driver

        _cu_check(driver.cuCtxPushCurrent(self.context), "cuCtxPushCurrent")

    def __exit__(self, *exc: object) -> None:
        from cuda.bindings import driver

        _cu_check(driver.cuCtxPopCurrent(), "cuCtxPopCurrent")


def _device_arch(device_index: int) -> str:
    major, minor = torch.cuda.get_device_capability(device_index)
    return f"sm_{major}{minor}"


def _module_for(device_index: int) -> _Module:
    """Compile and load once per (device, arch); later calls reuse the cached kernels."""
    key = (device_index, _device_arch(device_index))
    with _cache_lock:
        module = _cache.get(key)
        if module is None:
            module = _cache[key] = _Module(*key)
        return module


def _launch(kernel: Any, grid: int, block: int, stream: int, args: tuple, types: tuple) -> None:
    """cuLaunchKernel of a 1-D grid; ``args`` are packed as the ctypes ``types`` name."""
    from cuda.bindings import driver

    _cu_check(
        driver.cuLaunchKernel(
            kernel,
            grid, 1, 1,
            block, 1, 1,
            0,  # dynamic shared memory (the kernels use static shared memory only)
            driver.CUstream(stream),
            (args, types),
            0,
        ),
        "cuLaunchKernel",
    )


def launch_config(bytes_per_frame: int, data_ptr: int) -> tuple[int, int, bool]:
    """``(grid, block, vectorised)`` of the pair kernel for frames of ``bytes_per_frame``.

    The 16-byte path needs every frame to start on a 16-byte boundary: an aligned base
    pointer (a view may start anywhere) and a frame size that is a multiple of 16.
    """
    vectorised = data_ptr % VECTOR_BYTES == 0 and bytes_per_frame % VECTOR_BYTES == 0
    per_block = THREADS_PER_BLOCK * (VECTOR_BYTES if vectorised else SCALAR_BYTES)
    grid = -(-bytes_per_frame // per_block)
    return grid, THREADS_PER_BLOCK, vectorised


def frame_mse_cuda(frames: torch.Tensor) -> torch.Tensor:
    """Per-frame motion ``m`` of contiguous CUDA uint8 frames ``[T, H, W, 3]`` → float32 ``[T]``.

    Same definition and values as :func:`qclip_engine.video.frame_mse.frame_mse`; runs
    asynchronously on ``torch.cuda.current_stream()`` of the frames' device.
    """
    _check_frames(frames)  # before any cuda-python import: CPU-only callers get a ValueError

    num_frames = int(frames.shape[0])
    bytes_per_frame = math.prod(frames.shape[1:])
    device_index = frames.device.index if frames.device.index is not None else torch.cuda.current_device()

    with torch.cuda.device(device_index):
        stream = torch.cuda.current_stream(device_index)
        module = _module_for(device_index)
        # Allocated (and zeroed) on `stream` by torch's caching allocator, so they are ready
        # for kernels on that stream and their memory is not reused before those finish.
        pair_sums = torch.zeros(max(num_frames - 1, 1), dtype=torch.int64, device=frames.device)
        m = torch.empty(num_frames, dtype=torch.float32, device=frames.device)

        with module.current():
            if num_frames > 1:
                grid, block, vectorised = launch_config(bytes_per_frame, frames.data_ptr())
                _launch(
                    module.pair_sums, grid, block, stream.cuda_stream,
                    (frames.data_ptr(), pair_sums.data_ptr(), num_frames, bytes_per_frame, int(vectorised)),
                    (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_ulonglong, ctypes.c_int),
                )
            _launch(
                module.finalize, -(-num_frames // FINALIZE_THREADS), FINALIZE_THREADS, stream.cuda_stream,
                (pair_sums.data_ptr(), m.data_ptr(), num_frames, bytes_per_frame),
                (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_ulonglong),
            )
        # `frames` is only read by kernels on `stream`; callers that hand it to another
        # stream follow torch's usual record_stream rules, as for any torch op.
    return m
