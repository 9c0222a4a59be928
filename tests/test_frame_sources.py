"""Frame sources: the host path (PyAV → numpy) and the device path (frames stay on the backend's
device) give the same indices, times and scores; motion is exact wherever the frames are; no frame
crosses to the host on the device path. CI runs the device path's CPU stand-in (torch CPU
tensors through the same source, motion, gather and backend code); the CUDA pieces have their
own GPU tests (test_frame_mse_kernel.py, test_decode_dali.py)."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_model
from media import encode, moving_frames, static_with_burst

from qclip_engine.cli.score import main as score_main
from qclip_engine.engine import QualityEngine
from qclip_engine.samples import sample_clips
from qclip_engine import save_artifact
from qclip_engine.video import decode, frames as frame_sources
from qclip_engine.video.frame_mse import frame_mse
from qclip_engine.video.motion import frame_motion, pair_sums_torch


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    generated = [encode(root / "moving.mp4", moving_frames(40, seed=3)),
                 encode(root / "burst.mkv", static_with_burst(30, range(12, 16))),
                 encode(root / "vp9.webm", moving_frames(25, seed=5), codec="libvpx-vp9")]
    return [str(p) for p in sample_clips()] + [str(p) for p in generated]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_motion_is_exact_wherever_the_frames_are(clips):
    rng = np.random.default_rng(0)
    for frames in (rng.integers(0, 256, (17, 24, 40, 3), dtype=np.uint8),
                   decode.decode_candidates(clips[0], (64, 64), max_frames=70).frames,  # > one chunk of pairs
                   rng.integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)):
        reference = frame_mse(frames)
        on_torch = frame_motion(torch.from_numpy(frames))
        assert on_torch.dtype == np.float32 and np.array_equal(on_torch, reference)
        assert np.array_equal(frame_motion(frames), reference)
    diff = np.array([[[[255]]], [[[0]]]], dtype=np.uint8)  # the largest difference: 255² must not overflow
    assert pair_sums_torch(torch.from_numpy(diff)).tolist() == [255 * 255]
    with pytest.raises(ValueError):
        pair_sums_torch(torch.zeros(2, 4, 4, 3, dtype=torch.float32))


@pytest.mark.parametrize("sampler", ["uniform", "segment_mse_mean"])
def test_host_and_device_paths_give_the_same_frames_and_scores(model, clips, sampler):
    # batch 1: which videos share a backend call depends on decode timing, and float sums on the batch
    host = QualityEngine(model=model, engine="torch", device="cpu", decoder="host", sampler=sampler, batch=1)
    device = QualityEngine(model=model, engine="torch", device="cpu", decoder="device", sampler=sampler, batch=1)
    assert host.source.name == "host" and device.source.name == "device"
    for path in clips:
        a, b = host.sample(path), device.sample(path)
        assert isinstance(a.frames, np.ndarray) and isinstance(b.frames, torch.Tensor)
        np.testing.assert_array_equal(b.frames.numpy(), a.frames)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.times, b.times)
        assert a.video["decoder"] == b.video["decoder"] == "pyav"
    by_host = [r.to_record() for r in host.score(clips)]
    by_device = [r.to_record() for r in device.score(clips)]
    assert [r["frames"] for r in by_host] == [r["frames"] for r in by_device]
    assert [r["frame_times"] for r in by_host] == [r["frame_times"] for r in by_device]
    assert [r["score"] for r in by_host] == [r["score"] for r in by_device]  # bit for bit


def test_no_frame_crosses_to_the_host_on_the_device_path(model, clips):
    device = QualityEngine(model=model, engine="torch", device="cpu", decoder="device", sampler="segment_mse_mean")
    before = frame_sources.host_copy_count()
    results = list(device.score(clips))
    assert all(r.ok for r in results) and frame_sources.host_copy_count() == before
    # ONNX Runtime reads device tensors in place too (I/O binding), with the same scores as from numpy.
    onnx = QualityEngine(model=model, engine="onnxruntime", precision="fp32", device="cpu", decoder="device", batch=1)
    bound = onnx.score_one(clips[0])
    assert bound.ok and frame_sources.host_copy_count() == before
    from_numpy = onnx.backend.run(np.stack([onnx.sample(clips[0]).frames.numpy()]))[1]
    assert bound.score == float(from_numpy[0])
    # And the counter does see a crossing when one happens.
    frame_sources.to_host(torch.zeros(2, 2, 2, 3, dtype=torch.uint8))
    assert frame_sources.host_copy_count() == before + 1


def test_auto_takes_the_host_path_unless_a_cuda_backend_has_dali_and_cuda_python(model, monkeypatch):
    engine = QualityEngine(model=model, engine="torch", device="cpu")
    assert engine.source.name == "host" and engine.decoder_reason == "the backend runs on the CPU"
    reason = frame_sources.device_path_unavailable("cuda")
    assert reason  # CI has neither DALI's GPU path nor a GPU: a stated reason, not a crash
    monkeypatch.setattr("qclip_engine.engine.device_path_unavailable", lambda device, preprocessing="fast": None)
    assert QualityEngine(model=model, engine="torch", device="cpu").source.name == "device"
    with pytest.raises(ValueError, match="decoder must be one of"):
        QualityEngine(model=model, engine="torch", device="cpu", decoder="gpu")


def test_qclip_score_decoder_option(model, clips, tmp_path):
    artifact = save_artifact(model, tmp_path / "artifact")
    records = {}
    for decoder in ("host", "device"):
        out = tmp_path / f"{decoder}.jsonl"
        assert score_main([*clips[:2], "--artifact", str(artifact), "--engine", "torch", "--decoder", decoder, "--batch", "1",
                           "--out", str(out), "--quiet"]) == 0
        records[decoder] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["score"] for r in records["host"]] == [r["score"] for r in records["device"]]
    assert {r["video"]["decoder"] for r in records["device"]} == {"pyav"}


def test_fixed_shape_modes_pad_partial_batches_to_a_prepared_size():
    from qclip_engine.runtime.torch_backend import padded_sizes, run_padded

    assert padded_sizes(32) == (1, 2, 4, 8, 16, 32) and padded_sizes(12) == (1, 2, 4, 8, 12)
    calls = []

    def call(x):  # a per-video model: row i's outputs depend on video i only
        calls.append(x.shape[0])
        flat = x.reshape(x.shape[0], -1).float()
        return flat[:, :5], flat.sum(dim=1)

    x = torch.arange(11 * 6, dtype=torch.uint8).reshape(11, 2, 1, 1, 3)
    sims, score = run_padded(call, x, padded_sizes(4))
    assert calls == [4, 4, 4]  # 4 + 4 + 3 padded to 4
    expected_sims, expected_score = call(x)
    torch.testing.assert_close(sims, expected_sims)
    torch.testing.assert_close(score, expected_score)
    calls.clear()
    run_padded(call, x[:3], padded_sizes(8))
    assert calls == [4]  # 3 → the nearest prepared size above


def test_fixed_shape_modes_are_for_cuda_and_the_cpu_stays_eager(model):
    from qclip_engine.runtime import create_backend
    from qclip_engine.runtime.torch_backend import TorchBackend

    with pytest.raises(ValueError, match="CUDA"):
        TorchBackend(model, "cpu", mode="cuda_graphs")
    with pytest.raises(ValueError, match="CUDA"):
        create_backend(model, "torch", "cpu", torch_mode="compile")
    with pytest.raises(ValueError, match="mode must be one of"):
        TorchBackend(model, "cpu", mode="fast")


def test_a_batch_is_stacked_where_its_frames_are():
    from qclip_engine.engine import SampledVideo, stack_frames

    def video(frames):
        return SampledVideo("x", frames, np.zeros(2, int), np.zeros(2), None, {})

    a = np.zeros((2, 4, 4, 3), np.uint8)
    assert isinstance(stack_frames([video(a), video(a + 1)]), np.ndarray)
    mixed = stack_frames([video(torch.from_numpy(a)), video(a + 1)])  # a stream's numpy frames join device ones
    assert isinstance(mixed, torch.Tensor) and mixed.shape == (2, 2, 4, 4, 3) and int(mixed[1].max()) == 1


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_on_cuda_the_device_path_gives_the_host_paths_picks_without_host_copies(model, clips):
    host = QualityEngine(model=model, engine="torch", device="cuda", decoder="host", sampler="uniform", batch=4)
    device = QualityEngine(model=model, engine="torch", device="cuda", decoder="device", sampler="uniform", batch=4)
    before = frame_sources.host_copy_count()
    by_host, by_device = list(host.score(clips)), list(device.score(clips))
    assert frame_sources.host_copy_count() == before
    assert [r.frames for r in by_host] == [r.frames for r in by_device]
    assert [r.frame_times for r in by_host] == [r.frame_times for r in by_device]
    # DALI's frames are within its stated tolerance of PyAV's (test_decode_dali.py), so the scores are close.
    np.testing.assert_allclose([r.score for r in by_device], [r.score for r in by_host], atol=2e-2)
    assert {r.video["decoder"] for r in by_device} <= {"dali", "pyav"}


@needs_cuda
@pytest.mark.parametrize("mode", ["cuda_graphs", "compile"])
def test_on_cuda_the_fixed_shape_modes_equal_eager(model, mode):
    from qclip_engine.runtime.torch_backend import TorchBackend

    eager = TorchBackend(model, "cuda", max_batch=8)
    fixed = TorchBackend(model, "cuda", mode=mode, max_batch=8)
    fixed.warm_up()
    frames = torch.randint(0, 256, (5, model.config.num_frames, *model.image_size, 3), dtype=torch.uint8)
    np.testing.assert_allclose(fixed.run(frames.numpy())[1], eager.run(frames.numpy())[1], atol=5e-3)
