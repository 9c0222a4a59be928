"""Decode → MSE → sampler on a generated clip whose motion is known: the rules' predicted frames."""

import numpy as np
import pytest
from conftest import tiny_model
from media import encode, lossless, moving_frames, static_with_burst

from qclip_engine.defaults import MAX_ANALYSIS_FRAMES
from qclip_engine.engine import QualityEngine
from qclip_engine.train.data import LabelledVideo, VideoClips
from qclip_engine.video import decode, frames as frame_sources
from qclip_engine.video.frame_mse import frame_mse
from qclip_engine.video.sampling import candidate_indices, select_frames

# 60 flat gray frames with independent uniform noise on frames 30, 31, 32. With uniform noise
# U{0..255} and gray 128: MSE(noise, noise) ≈ 2·5461 = 10922, MSE(noise, gray) ≈ 5461, so
#   m29 = m33 ≈ 2730, m30 = m32 ≈ 8191, m31 ≈ 10922, every other m = 0 (lossless file).
BURST = range(30, 33)


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    path = lossless(tmp_path_factory.mktemp("burst") / "burst.mkv", static_with_burst(60, BURST))
    cands = decode.decode_candidates(path, (64, 64))
    m = frame_mse(cands.frames)
    assert np.array_equal(np.nonzero(m)[0], [29, 30, 31, 32, 33])
    assert m[31] == m.max()
    return m


def test_mse_sorted_uniform_picks_the_predicted_frames(motion):
    # Sorted by m (stable): 55 zero frames in time order (0..28, 34..59), then 29/33, 30/32, 31.
    # Ranks round(linspace(0, 59, 8)) = 0, 8, 17, 25, 34, 42, 51, 59 → zero-list entries
    # 0, 8, 17, 25, 34 (=frame 39), 42 (=47), 51 (=56), and rank 59 = the largest m: frame 31.
    assert select_frames("mse_sorted_uniform", motion, 8).tolist() == [0, 8, 17, 25, 31, 39, 47, 56]


def test_segment_mse_mean_picks_the_predicted_frames(motion):
    # Six segments of ten. Flat segments (mean 0): their first frame. Segment 20..29: mean 273,
    # closest is a zero → frame 20. Segment 30..39: mean ≈ 30034/10 ≈ 3003 → m33 ≈ 2730 → 33.
    assert select_frames("segment_mse_mean", motion, 6).tolist() == [0, 10, 20, 33, 40, 50]


def test_segment_mse_median_picks_the_predicted_frames(motion):
    # Segment 30..39 holds six zeros: median 0 → its first zero frame, 34.
    assert select_frames("segment_mse_median", motion, 6).tolist() == [0, 10, 20, 34, 40, 50]


# -- a video longer than max_analysis_frames: the official indices, the candidate cap for motion only --
LONG = 600  # > 512 (defaults.MAX_ANALYSIS_FRAMES): where a uniform stride of candidates picks other frames


def official(n, k):
    """The official Q-CLIP loader's frames."""
    return np.linspace(0, n - 1, k).round().astype(int)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    path = encode(tmp_path_factory.mktemp("long") / "long.mp4", moving_frames(LONG, h=16, w=16, seed=2))
    assert decode.probe(path).frame_count == LONG
    return path


@pytest.fixture(scope="module")
def engine16():
    return QualityEngine(model=tiny_model("uniform", num_frames=16), engine="torch", device="cpu", decoder="host", batch=1)


def test_engine_uniform_picks_the_official_indices_of_a_long_video(long_clip, engine16):
    assert engine16.max_analysis_frames == MAX_ANALYSIS_FRAMES < LONG
    r = engine16.score_one(long_clip)
    assert r.ok and r.frames == official(LONG, 16).tolist()
    # Frames already in memory (the stream path) follow the same rule.
    frames = decode.decode_frames(long_clip, engine16.image_size)
    assert engine16.sample_frames(frames).indices.tolist() == official(LONG, 16).tolist()


def test_engine_device_source_picks_the_official_indices_too(long_clip, engine16):
    engine = QualityEngine(model=engine16.model, engine="torch", device="cpu", decoder="device")
    assert engine.source.name == "device" and engine.sample(long_clip).indices.tolist() == official(LONG, 16).tolist()


def test_a_motion_sampler_still_analyses_at_most_max_analysis_frames(long_clip, engine16, monkeypatch):
    analysed = []
    real = frame_sources.frame_motion
    monkeypatch.setattr(frame_sources, "frame_motion", lambda frames: analysed.append(len(frames)) or real(frames))
    engine16.sampler = "segment_mse_mean"
    try:
        s = engine16.sample(long_clip)
    finally:
        engine16.sampler = "uniform"
    assert analysed == [MAX_ANALYSIS_FRAMES]
    assert set(s.indices.tolist()) <= set(candidate_indices(LONG, MAX_ANALYSIS_FRAMES).tolist())
    # uniform decoded no candidates: frame_motion was not called for it.
    analysed.clear()
    engine16.sample(long_clip)
    assert analysed == []


@pytest.mark.parametrize("cache", [False, True])
def test_training_clips_use_the_official_indices_of_a_long_video(long_clip, cache):
    clips = VideoClips([LabelledVideo(str(long_clip), 50.0)], image_size=(32, 32), num_frames=16, sampler="uniform",
                       training=False, cache=cache)
    expected = decode.decode_frames(long_clip, (32, 32), indices=official(LONG, 16))
    for _ in range(2):  # with the cache, the second pass is served from memory
        np.testing.assert_array_equal(clips[0]["video"].numpy(), expected)
    if cache:
        assert sorted(clips.cache[0]) == official(LONG, 16).tolist()
