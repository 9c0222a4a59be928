"""The CUDA frame-MSE kernels (kernels/frame_mse.cu) against the CPU reference.

Runs everywhere: input validation, the nvcc PTX build (where nvcc is on PATH) and the NVRTC
cubin build (where cuda-python's NVRTC loads; no GPU needed). The parity tests need a CUDA
device and cuda-python and skip cleanly otherwise.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys

import numpy as np
import pytest
import torch

from qclip_engine.kernels import frame_mse as fm
from qclip_engine.video.frame_mse import frame_mse as frame_mse_cpu


def _has_cuda_bindings() -> bool:
    try:
        return importlib.util.find_spec("cuda.bindings") is not None
    except ImportError:  # no `cuda` namespace package at all
        return False


requires_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or not _has_cuda_bindings(),
    reason="needs a CUDA device and cuda-python (cuda.bindings)",
)


def _frames(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


# --------------------------------------------------------------------------- everywhere


def test_cuda_source_compiles_to_ptx_for_sm90():
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH")
    ptx = fm.compile_ptx_with_nvcc("sm_90")
    entries = re.findall(r"\.entry\s+(\w+)\s*\(", ptx)
    assert set(fm.KERNEL_NAMES) <= set(entries), entries


def test_cuda_source_compiles_to_cubin_with_nvrtc():
    pytest.importorskip("cuda.bindings.nvrtc")
    from cuda.bindings import nvrtc

    try:
        nvrtc.nvrtcVersion()
    except Exception as exc:  # the NVRTC shared library itself is missing
        pytest.skip(f"NVRTC library not loadable: {exc}")
    cubin = fm.compile_cubin_with_nvrtc("sm_90")
    assert cubin[:4] == b"\x7fELF"
    for name in fm.KERNEL_NAMES:
        assert name.encode() in cubin


def test_block_size_fits_the_kernel_limit():
    """The launcher's block size must respect FRAME_MSE_MAX_THREADS in the .cu source."""
    source = fm.KERNEL_SOURCE.read_text()
    limit = int(re.search(r"#define\s+FRAME_MSE_MAX_THREADS\s+(\d+)", source).group(1))
    assert limit == fm.MAX_THREADS_PER_BLOCK
    assert fm.THREADS_PER_BLOCK % 32 == 0 and fm.THREADS_PER_BLOCK <= limit
    # Many blocks for analysis-size frames; the 16-byte path needs 16-byte aligned frames.
    grid, block, vectorised = fm.launch_config(384 * 384 * 3, data_ptr=0)
    assert vectorised and grid * block * fm.VECTOR_BYTES >= 384 * 384 * 3 and grid >= 132
    assert not fm.launch_config(17 * 9 * 3, data_ptr=0)[2]
    assert not fm.launch_config(384 * 384 * 3, data_ptr=1)[2]


@pytest.mark.parametrize(
    "frames, match",
    [
        (torch.zeros(2, 4, 4, 3, dtype=torch.uint8), "CUDA tensor"),
        (torch.zeros(2, 4, 4, 3, dtype=torch.float32), "uint8"),
        (torch.zeros(2, 4, 4, 3, dtype=torch.int16), "uint8"),
        (torch.zeros(4, 4, 3, dtype=torch.uint8), "4 dims"),
        (torch.zeros(2, 4, 4, 3, dtype=torch.uint8).transpose(1, 2), "contiguous"),
        (torch.zeros(0, 4, 4, 3, dtype=torch.uint8), "at least one frame"),
        (torch.zeros(2, 0, 4, 3, dtype=torch.uint8), "empty frames"),
        (np.zeros((2, 4, 4, 3), dtype=np.uint8), "torch.Tensor"),
    ],
)
def test_rejects_bad_input_before_touching_cuda_python(frames, match, monkeypatch):
    # Make any `import cuda...` fail: validation must raise before reaching cuda-python.
    for name in [m for m in sys.modules if m == "cuda" or m.startswith("cuda.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cuda", None)
    with pytest.raises(ValueError, match=match):
        fm.frame_mse_cuda(frames)


# --------------------------------------------------------------------------- GPU parity


def _check_against_reference(frames_cpu: torch.Tensor, out: torch.Tensor, device: torch.device) -> None:
    t = frames_cpu.shape[0]
    assert out.device == device
    assert out.dtype == torch.float32
    assert out.shape == (t,)
    expected = torch.from_numpy(frame_mse_cpu(frames_cpu))
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=0.0)


@requires_gpu
@pytest.mark.parametrize(
    "shape",
    [
        (1, 384, 384, 3),  # T = 1 → m = [0]
        (2, 384, 384, 3),
        (100, 384, 384, 3),  # many steps of the 8-frame time loop, 216 blocks
        (9, 384, 384, 3),  # one full step + one pair
        (1, 17, 9, 3),
        (2, 17, 9, 3),
        (13, 17, 9, 3),  # 459 bytes per frame: not a multiple of 16 → byte path, tail block
        (7, 33, 31, 3),  # odd size over several blocks
        (5, 16, 16, 3),  # 768 bytes: 16-byte path, tail inside the only block
    ],
)
def test_matches_cpu_reference(shape):
    frames = _frames(shape, seed=sum(shape))
    out = fm.frame_mse_cuda(frames.cuda())
    _check_against_reference(frames, out, torch.device("cuda", torch.cuda.current_device()))


@requires_gpu
def test_identical_neighbours_give_zero():
    frame = _frames((1, 384, 384, 3), seed=1)
    static = frame.expand(6, -1, -1, -1).contiguous()
    out = fm.frame_mse_cuda(static.cuda())
    assert torch.equal(out.cpu(), torch.zeros(6))
    # A cut between two static shots: only the frames at the cut move.
    cut = torch.cat([static[:3], _frames((1, 384, 384, 3), seed=2).expand(4, -1, -1, -1)]).contiguous()
    _check_against_reference(cut, fm.frame_mse_cuda(cut.cuda()), out.device)
    assert (fm.frame_mse_cuda(cut.cuda()).cpu()[[0, 1, 4, 5, 6]] == 0).all()


@requires_gpu
def test_extreme_differences_do_not_overflow():
    """Alternating black / white frames: every byte contributes 255², m = 65025 exactly."""
    frames = torch.zeros(11, 384, 384, 3, dtype=torch.uint8)
    frames[1::2] = 255
    out = fm.frame_mse_cuda(frames.cuda())
    assert torch.equal(out.cpu(), torch.full((11,), 65025.0))


@requires_gpu
def test_misaligned_view_uses_byte_path():
    """A view that starts 1 byte into its storage cannot take 16-byte loads; same result."""
    t, h, w = 10, 64, 48
    flat = _frames((t * h * w * 3 + 1,), seed=3).cuda()
    frames = flat[1:].view(t, h, w, 3)
    assert frames.is_contiguous() and frames.data_ptr() % 16 != 0
    _check_against_reference(frames.cpu(), fm.frame_mse_cuda(frames), frames.device)


@requires_gpu
def test_bit_identical_to_cpu_reference():
    """Exact integer sums + the reference's float64 finish: equal, not just close."""
    frames = _frames((37, 96, 80, 3), seed=4)
    out = fm.frame_mse_cuda(frames.cuda()).cpu().numpy()
    np.testing.assert_array_equal(out, frame_mse_cpu(frames))


@requires_gpu
def test_runs_on_a_non_default_stream():
    frames_cpu = _frames((20, 384, 384, 3), seed=5)
    expected = fm.frame_mse_cuda(frames_cpu.cuda())
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        frames = frames_cpu.cuda(non_blocking=False)
        out = fm.frame_mse_cuda(frames)
        again = fm.frame_mse_cuda(frames)  # the compiled module is reused
    torch.cuda.current_stream().wait_stream(stream)
    stream.synchronize()
    assert torch.equal(out, expected) and torch.equal(again, expected)
    _check_against_reference(frames_cpu, out, expected.device)
