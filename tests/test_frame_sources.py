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
    # The counter does see a crossing: the ONNX Runtime CPU backend needs host memory.
    onnx = QualityEngine(model=model, engine="onnxruntime", precision="fp32", device="cpu", decoder="device")
    assert onnx.score_one(clips[0]).ok and frame_sources.host_copy_count() > before


def test_auto_takes_the_host_path_unless_a_cuda_backend_has_dali_and_cuda_python(model, monkeypatch):
    engine = QualityEngine(model=model, engine="torch", device="cpu")
    assert engine.source.name == "host" and engine.decoder_reason == "the backend runs on the CPU"
    reason = frame_sources.device_path_unavailable("cuda")
    assert reason  # CI has neither DALI's GPU path nor a GPU: a stated reason, not a crash
    monkeypatch.setattr("qclip_engine.engine.device_path_unavailable", lambda device: None)
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
