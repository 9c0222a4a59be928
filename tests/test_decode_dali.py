"""GPU decoding through DALI/NVDEC (qclip_engine/video/decode_dali.py) against the PyAV path.

Three tiers, each skipping cleanly where its needs are missing:

* everywhere: the module imports without DALI or a GPU and says why it is unavailable;
  the pure helpers (which files go to PyAV, the colour correction, sequence lengths);
* DALI installed, no GPU needed: the streaming plumbing (sequences, kept frames, frame
  count check, rotation, pipeline reuse) through DALI's CPU backend on VP9;
* ``decode_dali.available()`` (DALI + CUDA + NVDEC): parity with PyAV on NVDEC.

Pixel tolerance of NVDEC frames against PyAV frames, on 0..255: mean |Δ| ≤ 4.0 and 99th
percentile ≤ 12. Both decoders produce the same YUV (H.264/HEVC decoding is bit-exact);
they differ in YUV → RGB and resize: PyAV converts and scales in one swscale call (chroma
scaled on its own plane), DALI upsamples chroma bilinearly at full size (BT.601 kernel,
colour-matrix corrected afterwards), rounds to uint8 and then resizes with an antialiased
linear filter. An emulation of DALI's kernel (numpy, on PyAV's YUV planes, DALI's CPU
resize) on these clips gave mean 1.7–2.5, p99 6, max 14 at 96×128…384×384, and a one-frame
index shift gives mean ≈ 17.5 — so the bounds leave room for the emulation's inexactness
while a misnumbered frame still fails (each frame is also matched to its nearest PyAV
frame, which must be itself).
"""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import media
import numpy as np
import pytest
import torch

from qclip_engine.errors import VideoError
from qclip_engine.video import decode
from qclip_engine.video import decode_dali as dd
from qclip_engine.video.decode import VideoInfo
from qclip_engine.video.frame_mse import frame_mse
from qclip_engine.video.sampling import select_frames

ROOT = Path(__file__).resolve().parents[1]
MEAN_TOL = 4.0
P99_TOL = 12.0
SIZE = (112, 112)

requires_dali = pytest.mark.skipif(
    dd._dali_import_error() is not None, reason=dd._dali_import_error() or ""
)
requires_nvdec = pytest.mark.skipif(not dd.available(), reason=f"DALI GPU path unavailable: {dd.why_unavailable()}")


# -- clips ----------------------------------------------------------------------------------
def smooth_frames(t: int, h: int = 192, w: int = 256) -> np.ndarray:
    """Smooth coloured patterns moving a few pixels a frame (camera-like, not noise)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        base = 127.5 + 90 * np.sin((x + 4 * i) / 11.0) * np.cos((y - 3 * i) / 13.0)
        out[i, ..., 0] = np.clip(base + 50 * np.sin((x + y + 6 * i) / 23.0), 0, 255)
        out[i, ..., 1] = np.clip(base + 50 * np.cos((x - y + 5 * i) / 29.0), 0, 255)
        out[i, ..., 2] = np.clip(base - 50 * np.sin((x + 2 * y + 4 * i) / 31.0), 0, 255)
    return out


def encode_tagged(path: Path, frames: np.ndarray, colorspace: int, color_range: int = 1) -> Path:
    """H.264 whose stream and frames carry a colour matrix tag (1 = BT.709, 9 = BT.2020)."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"bf": "3", "g": "12"}
        stream.codec_context.colorspace = colorspace
        stream.codec_context.color_range = color_range
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.colorspace, frame.color_range = colorspace, color_range
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


H264 = {"options": {"bf": "3", "g": "12"}}
HEVC = {"codec": "libx265", "options": {"x265-params": "bframes=3:keyint=12:log-level=error"}}


def pixel_stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float(d.mean()), float(np.percentile(d, 99))


def assert_close_to_pyav(got: np.ndarray, ref: np.ndarray, every: np.ndarray, indices: np.ndarray) -> None:
    """Within the stated tolerance, and each frame nearest to its own PyAV frame."""
    assert got.shape == ref.shape and got.dtype == np.uint8
    mean, p99 = pixel_stats(got, ref)
    assert mean <= MEAN_TOL and p99 <= P99_TOL, f"mean |Δ| {mean:.2f} (≤ {MEAN_TOL}), p99 {p99:.1f} (≤ {P99_TOL})"
    nearest = [int(np.abs(every.astype(np.int16) - g).mean(axis=(1, 2, 3)).argmin()) for g in got]
    assert nearest == [int(i) for i in indices]


def _info(**over) -> VideoInfo:
    base = dict(path="x.mp4", container="mov", codec="h264", width=256, height=192, fps=25.0, frame_count=10,
                duration=0.4, vfr=False, rotation=0, has_b_frames=True)
    return VideoInfo(**{**base, **over})


# -- everywhere -------------------------------------------------------------------------------
def test_import_without_dali_and_says_why():
    """With DALI made unimportable, the module imports, available() is False and the reason is one line."""
    code = (
        "import sys; sys.modules['nvidia.dali'] = None\n"
        "from qclip_engine.video import decode_dali as d\n"
        "assert 'nvidia.dali' not in {k for k, v in sys.modules.items() if v is not None}\n"
        "print(d.available()); print(repr(d.why_unavailable()))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    flag, reason = proc.stdout.strip().splitlines()
    assert flag == "False"
    assert ("DALI" in reason or "CUDA" in reason) and "\\n" not in reason


def test_available_matches_reason():
    assert isinstance(dd.available(), bool)
    reason = dd.why_unavailable()
    assert isinstance(reason, str) and "\n" not in reason
    assert (reason == "") == dd.available()
    if not torch.cuda.is_available():
        assert not dd.available() and "CUDA" in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_gpu_entry_points_need_cuda(tmp_path):
    path = media.encode(tmp_path / "a.mp4", media.moving_frames(3))
    with pytest.raises(RuntimeError, match="CUDA"):
        dd.decode_candidates_gpu(path, (32, 32))
    with pytest.raises(RuntimeError, match="CUDA"):
        dd.decode_frames_gpu(path, (32, 32), [0])


def test_which_files_take_pyav():
    assert dd.gpu_unsupported_reason(_info()) is None
    assert "codec" in dd.gpu_unsupported_reason(_info(codec="mpeg4"))
    assert "codec" in dd.gpu_unsupported_reason(_info(codec="av1"))
    assert "variable frame rate" in dd.gpu_unsupported_reason(_info(vfr=True))
    assert "dropped frames" in dd.gpu_unsupported_reason(_info(dropped_frames=2))  # gaps: DALI numbers frames as CFR
    assert "mirrored" in dd.gpu_unsupported_reason(_info(hflip=True))  # the GPU path would not mirror
    assert "minimum" in dd.gpu_unsupported_reason(_info(codec="hevc", width=96, height=64))
    assert "odd" in dd.gpu_unsupported_reason(_info(width=255))
    # rotation: the coded size is checked (display 192x256 portrait = coded 256x192)
    assert dd.gpu_unsupported_reason(_info(width=192, height=256, rotation=90)) is None
    fmt = dd._FrameFormat("yuv420p", 1, 1)
    assert dd.gpu_unsupported_reason(_info(), fmt) is None
    assert "pixel format" in dd.gpu_unsupported_reason(_info(), dd._FrameFormat("yuv420p10le", 1, 1))
    assert "pixel format" in dd.gpu_unsupported_reason(_info(), dd._FrameFormat("yuv444p", 2, 0))
    assert "colour matrix" in dd.gpu_unsupported_reason(_info(), dd._FrameFormat("yuv420p", 8, 1))


def test_color_correction_turns_bt601_rgb_into_the_tagged_matrix():
    assert dd.color_correction(2) is None and dd.color_correction(5) is None and dd.color_correction(6) is None
    rng = np.random.default_rng(0)
    yuv = np.stack([rng.uniform(0, 1, 1000), rng.uniform(-0.4, 0.4, 1000), rng.uniform(-0.4, 0.4, 1000)])
    rgb601 = dd._yuv_to_rgb_matrix(0.299, 0.114) @ yuv
    for cs, (kr, kb) in [(1, (0.2126, 0.0722)), (9, (0.2627, 0.0593))]:
        np.testing.assert_allclose(dd.color_correction(cs) @ rgb601, dd._yuv_to_rgb_matrix(kr, kb) @ yuv, atol=1e-12)


def test_sequence_lengths_leave_a_partial_last_sequence():
    assert dd.chunk_frames((2160, 3840)) == 16 and dd.chunk_frames((1080, 1920)) == 64
    assert dd.chunk_frames((64, 64)) == dd.MAX_CHUNK_FRAMES and dd.chunk_frames((8640, 15360)) == dd.MIN_CHUNK_FRAMES
    for n in list(range(1, 400)) + [512 * 7, 128 * 127 * 126 * 125]:
        seq, checked = dd.sequence_length(n, 128)
        assert 124 < seq <= 128
        assert checked == bool(n % seq)
    assert dd.sequence_length(840, 8) == (8, False)  # 840 = lcm(5..8): not reused, see _dali_decode


# -- DALI installed, CPU backend (no GPU needed) ----------------------------------------------
@requires_dali
@pytest.mark.parametrize("frames,rotation,max_frames", [(37, None, 512), (40, None, 16), (5, None, 512), (20, 90, 12), (20, 270, 512), (20, 180, 512)])
def test_stream_plumbing_on_dali_cpu_backend(tmp_path, frames, rotation, max_frames):
    """DALI's CPU decoder (VP9) through the same streaming code, in 8-frame sequences."""
    path = media.encode(tmp_path / "c.mp4", smooth_frames(frames, 144, 176), codec="libvpx-vp9", rotation=rotation)
    info, _ = decode.scan(path)
    wanted = decode.candidate_indices(info.frame_count, max_frames)
    got = dd._dali_decode(path, info, (96, 128), wanted, dd._frame_format(path), torch.device("cpu"), chunk_bytes=1)
    ref = decode.decode_candidates(path, (96, 128), max_frames=max_frames)
    np.testing.assert_array_equal(ref.indices, wanted)
    assert_close_to_pyav(got.numpy(), ref.frames, decode.decode_frames(path, (96, 128)), wanted)


@requires_dali
def test_frame_count_mismatch_is_caught_and_the_pipeline_recovers(tmp_path):
    path = media.encode(tmp_path / "c.webm", smooth_frames(21, 144, 176), codec="libvpx-vp9")
    info, _ = decode.scan(path)
    fmt, cpu = dd._frame_format(path), torch.device("cpu")
    for lie in (info.frame_count - 1, info.frame_count + 1, info.frame_count + 9):
        wrong = VideoInfo(**{**info.to_dict(), "frame_count": lie})
        with pytest.raises(dd._Mismatch):
            dd._dali_decode(path, wrong, (64, 64), np.arange(min(lie, 21)), fmt, cpu, chunk_bytes=1)
    got = dd._dali_decode(path, info, (64, 64), np.arange(21), fmt, cpu, chunk_bytes=1)
    every = decode.decode_frames(path, (64, 64))
    assert_close_to_pyav(got.numpy(), every, every, np.arange(21))


# -- GPU: NVDEC through DALI -------------------------------------------------------------------
@requires_nvdec
@pytest.mark.parametrize("codec", ["h264", "hevc"])
@pytest.mark.parametrize("small_chunks", [False, True])
def test_candidates_match_pyav(tmp_path, monkeypatch, codec, small_chunks):
    if small_chunks:
        monkeypatch.setattr(dd, "CHUNK_BYTES", 1)  # 8-frame sequences: many runs, partial last one
    path = media.encode(tmp_path / f"{codec}.mp4", smooth_frames(75), **(H264 if codec == "h264" else HEVC))
    for max_frames in (512, 30):
        gpu = dd.decode_candidates_gpu(path, SIZE, max_frames=max_frames, backend="dali")
        cpu = decode.decode_candidates(path, SIZE, max_frames=max_frames)
        assert gpu.backend == "dali" and gpu.fallback_reason is None
        assert gpu.frames.is_cuda and gpu.frames.dtype == torch.uint8 and gpu.frames.is_contiguous()
        np.testing.assert_array_equal(gpu.indices, cpu.indices)
        np.testing.assert_array_equal(gpu.indices, decode.candidate_indices(cpu.info.frame_count, max_frames))
        np.testing.assert_array_equal(gpu.times, cpu.times)
        assert gpu.info == cpu.info
        assert_close_to_pyav(gpu.frames.cpu().numpy(), cpu.frames, decode.decode_frames(path, SIZE), cpu.indices)


@requires_nvdec
@pytest.mark.parametrize("colorspace,color_range", [(1, 1), (9, 1), (1, 2), (5, 2)])
def test_tagged_colour_matrix_and_range_match_pyav(tmp_path, colorspace, color_range):
    """BT.709 / BT.2020 matrices (corrected from DALI's BT.601) and full-range (yuvj420p) streams."""
    path = encode_tagged(tmp_path / "tagged.mp4", smooth_frames(24), colorspace, color_range)
    gpu = dd.decode_candidates_gpu(path, SIZE, backend="dali")
    cpu = decode.decode_candidates(path, SIZE)
    assert_close_to_pyav(gpu.frames.cpu().numpy(), cpu.frames, cpu.frames, cpu.indices)


@requires_nvdec
@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video_matches_pyav(tmp_path, rotation):
    path = media.encode(tmp_path / "rot.mp4", smooth_frames(20), rotation=rotation, **H264)
    gpu = dd.decode_candidates_gpu(path, (96, 128), backend="dali")
    cpu = decode.decode_candidates(path, (96, 128))
    assert gpu.info.rotation == rotation
    assert_close_to_pyav(gpu.frames.cpu().numpy(), cpu.frames, cpu.frames, cpu.indices)


@requires_nvdec
def test_sparse_frames_match_pyav(tmp_path):
    path = media.encode(tmp_path / "s.mp4", smooth_frames(60), **H264)
    order = np.array([59, 3, 3, 30, 0, 47, 12, 59])
    frames, backend, reason = dd.decode_frames_gpu_detailed(path, SIZE, order, backend="dali")
    assert backend == "dali" and reason is None
    ref = decode.decode_frames(path, SIZE, order)
    assert_close_to_pyav(frames.cpu().numpy(), ref, decode.decode_frames(path, SIZE), order)
    assert torch.equal(dd.decode_frames_gpu(path, SIZE, order), frames)
    with pytest.raises(IndexError):
        dd.decode_frames_gpu(path, SIZE, [60])


@requires_nvdec
def test_motion_burst_gives_the_same_samples(tmp_path):
    """frame_mse + select_frames on NVDEC frames pick what they pick on PyAV frames.

    The rank-based ``mse_sorted_uniform`` and ``random`` are not compared: inside the burst
    every frame is independent uniform noise, so their ``m`` are statistically equal and
    their order is decided by sub-level colour-conversion differences.
    """
    burst = range(18, 26)
    path = media.encode(tmp_path / "burst.mp4", media.static_with_burst(48, burst, h=192, w=256), **H264)
    size = (224, 224)
    gpu = dd.decode_candidates_gpu(path, size, backend="dali")
    cpu = decode.decode_candidates(path, size)
    m_gpu, m_cpu = frame_mse(gpu.frames), frame_mse(cpu.frames)
    moving = lambda m: set(np.flatnonzero(m > 0.1 * m.max()).tolist())  # noqa: E731
    assert moving(m_gpu) == moving(m_cpu)
    for strategy in ("uniform", "uniform_random_start", "segment_mse_mean", "segment_mse_median", "mixed"):
        picked_gpu = select_frames(strategy, m_gpu, 8, seed=0)
        picked_cpu = select_frames(strategy, m_cpu, 8, seed=0)
        np.testing.assert_array_equal(gpu.indices[picked_gpu], cpu.indices[picked_cpu], err_msg=strategy)
    assert any(i in burst for i in gpu.indices[select_frames("segment_mse_mean", m_gpu, 8)])


@requires_nvdec
def test_vfr_falls_back_to_pyav(tmp_path):
    pts = [0, 40, 80, 100, 120, 200, 260, 300, 310, 320, 400, 440]
    path = media.encode(tmp_path / "vfr.mkv", smooth_frames(12), pts=pts, time_base=Fraction(1, 1000))
    gpu = dd.decode_candidates_gpu(path, SIZE)
    cpu = decode.decode_candidates(path, SIZE)
    assert cpu.info.vfr and gpu.backend == "pyav" and "variable frame rate" in gpu.fallback_reason
    assert gpu.frames.is_cuda
    np.testing.assert_array_equal(gpu.frames.cpu().numpy(), cpu.frames)
    np.testing.assert_array_equal(gpu.times, cpu.times)


def _encode_av1(path: Path) -> Path | None:
    for codec in ("libsvtav1", "libaom-av1", "librav1e"):
        try:
            return media.encode(path, smooth_frames(10, 128, 128), codec=codec)
        except Exception:
            continue
    return None


@requires_nvdec
@pytest.mark.parametrize("codec", ["mpeg4", "av1"])
def test_other_codecs_fall_back_to_pyav(tmp_path, codec):
    if codec == "av1":
        path = _encode_av1(tmp_path / "av1.mkv")
        if path is None:
            pytest.skip("no AV1 encoder in this PyAV build")
    else:
        path = media.encode(tmp_path / "m4.avi", smooth_frames(10), codec="mpeg4")
    gpu = dd.decode_candidates_gpu(path, SIZE)
    cpu = decode.decode_candidates(path, SIZE)
    assert gpu.backend == "pyav" and "codec" in gpu.fallback_reason
    np.testing.assert_array_equal(gpu.frames.cpu().numpy(), cpu.frames)
    frames, backend, _ = dd.decode_frames_gpu_detailed(path, SIZE, [1, 0])
    assert backend == "pyav"
    np.testing.assert_array_equal(frames.cpu().numpy(), decode.decode_frames(path, SIZE, [1, 0]))
    with pytest.raises(dd.DaliDecodeError):
        dd.decode_candidates_gpu(path, SIZE, backend="dali")


@requires_nvdec
def test_broken_files_raise_the_cpu_paths_typed_errors(tmp_path):
    good = media.encode(tmp_path / "good.mp4", smooth_frames(24), **H264)
    data = good.read_bytes()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "junk.mov").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for name in ("trunc.mp4", "zero.mp4", "junk.mov", "missing.mp4"):
        path = tmp_path / name
        with pytest.raises(VideoError) as cpu_error:
            decode.decode_candidates(path, SIZE)
        with pytest.raises(VideoError) as gpu_error:
            dd.decode_candidates_gpu(path, SIZE)
        assert type(gpu_error.value) is type(cpu_error.value), name
        assert gpu_error.value.code == cpu_error.value.code
        with pytest.raises(type(cpu_error.value)):
            dd.decode_frames_gpu(path, SIZE, [0])


@requires_nvdec
def test_pyav_backend_on_request_and_pipeline_reuse(tmp_path):
    path = media.encode(tmp_path / "a.mp4", smooth_frames(30), **H264)
    forced = dd.decode_candidates_gpu(path, SIZE, backend="pyav")
    assert forced.backend == "pyav"
    np.testing.assert_array_equal(forced.frames.cpu().numpy(), decode.decode_candidates(path, SIZE).frames)
    first = dd.decode_candidates_gpu(path, SIZE, backend="dali")
    again = dd.decode_candidates_gpu(path, SIZE, backend="dali")  # the cached pipeline, a second file's worth
    assert torch.equal(first.frames, again.frames)
