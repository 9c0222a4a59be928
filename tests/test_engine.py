"""QualityEngine: scores equal the model's on the frames it sampled, in order, bad inputs answered."""

import numpy as np
import pytest
import torch
from media import encode, moving_frames
from conftest import tiny_model

from qclip_engine import save_artifact
from qclip_engine.engine import QualityEngine
from qclip_engine.video import decode


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_clips")
    return [encode(root / f"c{i}.mp4", moving_frames(20 + 7 * i, h=48 + 8 * i, w=80, seed=i)) for i in range(5)]


def model_scores_on(model, path, indices):
    frames = decode.decode_frames(path, model.image_size, indices=indices)
    with torch.no_grad():
        return model(model.normalize(torch.from_numpy(frames)[None])).item()


# Both samplers on torch; ONNX Runtime (a 30 s export on CI's CPU) on the motion sampler, whose
# path (candidates, motion, picks) is the longer one — the backend does not see the sampler.
@pytest.mark.parametrize("backend,tolerance,sampler", [("torch", 1e-5, "segment_mse_mean"), ("torch", 1e-5, "uniform"),
                                                       ("onnxruntime", 1e-4, "segment_mse_mean")])
def test_engine_scores_equal_the_model_on_the_sampled_frames(clips, backend, tolerance, sampler, tmp_path, monkeypatch):
    monkeypatch.setenv("QCLIP_CACHE", str(tmp_path))  # the exported graph goes to a fresh cache
    model = tiny_model(sampler)
    engine = QualityEngine(model=model, engine=backend, device="cpu", batch=3)
    assert engine.backend.name == backend
    results = list(engine.score(clips))
    assert [r.input for r in results] == [str(c) for c in clips]
    for path, r in zip(clips, results):
        assert r.ok and len(r.frames) == 4 and r.frames == sorted(r.frames)
        assert abs(r.score - model_scores_on(model, path, r.frames)) < tolerance
        assert list(r.levels) == ["bad", "poor", "fair", "good", "excellent"]
    assert max(r.timing_ms["batch_size"] for r in results) == 3


def test_motion_free_sampler_picks_among_all_frames_not_the_candidates(clips):
    # `uniform` decodes only its frames by seeking, and picks among ALL N frames (the official
    # linspace(0, N-1, K).round()); max_analysis_frames caps motion analysis only.
    engine = QualityEngine(model=tiny_model("uniform"), engine="torch", max_analysis_frames=8)
    from qclip_engine.video.sampling import select_frames

    over_candidates = []
    for path, r in zip(clips, engine.score(clips)):
        info, table = decode.scan(path)
        official = np.linspace(0, info.frame_count - 1, 4).round().astype(int)
        assert r.frames == official.tolist()
        np.testing.assert_allclose(r.frame_times, table.times(official))
        cands = decode.decode_candidates(path, engine.image_size, max_frames=8)
        over_candidates.append(cands.indices[select_frames("uniform", np.zeros(len(cands.indices)), 4)].tolist())
    assert over_candidates != [r.frames for r in engine.score(clips)]  # the old rule would pick other frames


def test_bad_inputs_become_error_records_in_place(clips, tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 100)
    inputs = [clips[0], tmp_path / "missing.mp4", clips[1], tmp_path / "zero.mp4", tmp_path / "junk.mp4", clips[2]]
    results = list(QualityEngine(model=tiny_model(), engine="torch", batch=8).score(inputs))
    assert [r.input for r in results] == [str(p) for p in inputs]
    assert [r.error["code"] if r.error else None for r in results] == [None, "not_found", None, "empty_file", "not_a_video", None]
    record = results[1].to_record()
    assert set(record) == {"input", "error", "timing_ms"} and record["error"]["message"]


def test_batch_size_does_not_change_scores(clips):
    model = tiny_model()
    one = [r.score for r in QualityEngine(model=model, engine="torch", batch=1).score(clips)]
    many = [r.score for r in QualityEngine(model=model, engine="torch", batch=5).score(clips)]
    np.testing.assert_allclose(one, many, atol=1e-6)


def test_artifact_calibration_gives_mos(clips, tmp_path):
    model = tiny_model()
    calibration = {"pred_mean": 0.1, "pred_std": 0.02, "target_mean": 60.0, "target_std": 15.0}
    save_artifact(model, tmp_path / "art", calibration=calibration)
    r = QualityEngine(tmp_path / "art", engine="torch").score_one(clips[0])
    assert r.mos == pytest.approx((r.score - 0.1) / 0.02 * 15.0 + 60.0, rel=1e-6)


def test_unknown_sampler_fails_at_construction():
    with pytest.raises(ValueError, match="unknown sampler"):
        QualityEngine(model=tiny_model(), engine="torch", sampler="nope")
