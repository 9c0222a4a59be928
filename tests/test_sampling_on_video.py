"""Decode → MSE → sampler on a generated clip whose motion is known: the rules' predicted frames."""

import numpy as np
import pytest
from media import lossless, static_with_burst

from qclip_engine.video import decode
from qclip_engine.video.frame_mse import frame_mse
from qclip_engine.video.sampling import select_frames

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
