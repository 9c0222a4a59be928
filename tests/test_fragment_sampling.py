"""The ``temporal_fragments:T`` sampler family (qclip_engine/video/sampling.py): FAST-VQA's temporal
fragments — hand-worked indices (wrap-around included), training draws, the parametrised names,
and the decoders returning frames in the sampler's (unsorted, repeating) order. The released
``FragmentSampleFrames`` against ours: tests/test_fragments.py (gated on QCLIP_FASTVQA_SOURCE)."""

import numpy as np
import pytest
from conftest import tiny_model
from media import encode, lossless, moving_frames

from qclip_engine.artifact_schema import INPUT_SPEC
from qclip_engine.video import decode
from qclip_engine.video.frames import HostSource
from qclip_engine.video.sampling import (
    FRAGMENT_FRAME_STRIDE,
    MIXED_CHOICES,
    SAMPLER_NAMES,
    SAMPLERS,
    check_sampler,
    frame_indices,
    select_frames,
    temporal_fragments,
)


# -- the rule, by hand ---------------------------------------------------------------------------
# Segment length L = N // T, f = K / T frames at stride 2 (span 2f); evaluation start r = (L − 2f) // 2
# when L > 2f, else 0; segment i takes i·L + r + 2j, mod N.
@pytest.mark.parametrize(("n", "k", "t", "expected"), [
    # L = 30, f = 4, span 8, r = 11
    (240, 32, 8, [11, 13, 15, 17, 41, 43, 45, 47, 71, 73, 75, 77, 101, 103, 105, 107, 131, 133, 135, 137,
                  161, 163, 165, 167, 191, 193, 195, 197, 221, 223, 225, 227]),
    # L = 240, f = 32, span 64, r = 88: 88, 90, …, 150
    (240, 32, 1, list(range(88, 151, 2))),
    # L = 25, f = 4, span 8, r = 8
    (100, 16, 4, [8, 10, 12, 14, 33, 35, 37, 39, 58, 60, 62, 64, 83, 85, 87, 89]),
    # N < 2K: L = 20 ≤ span 32, r = 0, and the segment wraps: 20 → 0, 22 → 2, …
    (20, 16, 1, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 0, 2, 4, 6, 8, 10]),
    # L = 12 ≤ span 16: segments overlap (starts 0, 12, 24, 36) and the last wraps at 50
    (50, 32, 4, [0, 2, 4, 6, 8, 10, 12, 14, 12, 14, 16, 18, 20, 22, 24, 26, 24, 26, 28, 30, 32, 34, 36, 38,
                 36, 38, 40, 42, 44, 46, 48, 0]),
    # L = 2, f = 2: [0, 2], [2, 4]
    (5, 4, 2, [0, 2, 2, 4]),
    # N < T: L = 0, every segment starts at 0
    (3, 8, 8, [0] * 8),
    # one frame
    (1, 4, 2, [0, 0, 0, 0]),
])
def test_temporal_fragments_hand_worked(n, k, t, expected):
    assert FRAGMENT_FRAME_STRIDE == 2
    assert temporal_fragments(n, k, t).tolist() == expected
    got = frame_indices(n, f"temporal_fragments:{t}", k)
    assert got.dtype == np.int64 and got.tolist() == expected
    assert select_frames(f"temporal_fragments:{t}", np.zeros(n), k).tolist() == expected


def test_training_draws_one_start_per_segment_within_bounds_and_seeded():
    n, k, t = 1000, 32, 8  # L = 125, f = 4, span 8: r_i in [0, 116]
    name = f"temporal_fragments:{t}"
    starts = []
    for seed in range(200):
        idx = frame_indices(n, name, k, seed=seed, training=True)
        segments = idx.reshape(t, k // t)
        assert (np.diff(segments, axis=1) == 2).all()  # stride 2 inside a segment
        r = segments[:, 0] - np.arange(t) * 125
        assert ((0 <= r) & (r <= 125 - 8 - 1)).all()
        starts.append(r)
        np.testing.assert_array_equal(idx, frame_indices(n, name, k, seed=seed, training=True))  # seeded
    starts = np.array(starts)
    assert starts.min() == 0 and starts.max() == 116  # the whole range is reached
    assert len({tuple(s) for s in starts}) == 200  # segments draw on their own
    assert not np.array_equal(frame_indices(n, name, k, seed=0, training=True),
                              frame_indices(n, name, k, seed=1, training=True))
    # evaluation ignores the seed: the centred start (125 − 8) // 2 = 58
    evaluation = {tuple(frame_indices(n, name, k, seed=s)) for s in range(5)}
    assert evaluation == {tuple(temporal_fragments(n, k, t))}
    assert temporal_fragments(n, k, t)[0] == 58
    # no room to draw (L ≤ span): training is the evaluation rule, wrap-around included
    for seed in range(5):
        np.testing.assert_array_equal(frame_indices(20, "temporal_fragments:1", 16, seed=seed, training=True),
                                      temporal_fragments(20, 16, 1))


# -- the names -------------------------------------------------------------------------------------
def test_the_family_answers_every_segment_count_and_adds_no_plain_name():
    for t in (1, 2, 4, 8, 13, 64):
        s = check_sampler(f"temporal_fragments:{t}")
        assert s.name == f"temporal_fragments:{t}" and not s.needs_motion and s.draws
        assert check_sampler(f"temporal_fragments:{t}") is s  # built once per name
        assert INPUT_SPEC["sampler"](s.name) is None  # an artifact may record it
    assert SAMPLER_NAMES == ("uniform", "random", "uniform_random_start", "mse_sorted_uniform", "segment_mse_mean",
                             "segment_mse_median", "mixed", "segment_middle")
    assert MIXED_CHOICES == SAMPLER_NAMES[:6]  # mixed never draws a temporal fragment
    assert not any(name.startswith("temporal_fragments") for name in SAMPLERS)  # families are not stored


@pytest.mark.parametrize("name", ["temporal_fragments", "temporal_fragments:", "temporal_fragments:0",
                                  "temporal_fragments:-1", "temporal_fragments:x", "temporal_fragments:08",
                                  "temporal_fragments: 8", "temporal_fragments:8 ", "temporal_fragments:2.0",
                                  "temporal_fragments:8:2", "temporal_fragments:٣", "fragments:8", "uniform:2"])
def test_malformed_names_are_unknown_samplers(name):
    with pytest.raises(ValueError, match="unknown sampler"):
        check_sampler(name)
    assert name not in SAMPLERS
    assert INPUT_SPEC["sampler"](name) is not None


def test_the_unknown_sampler_message_shows_the_parametrised_form():
    with pytest.raises(ValueError, match=r"temporal_fragments:T") as info:
        check_sampler("nope")
    assert "segment_middle" in str(info.value)


def test_k_must_be_a_multiple_of_the_segments_at_pick_time():
    check_sampler("temporal_fragments:3")  # the name alone is fine
    with pytest.raises(ValueError, match="multiple of 3"):
        frame_indices(100, "temporal_fragments:3", 8)
    with pytest.raises(ValueError, match="segments"):
        temporal_fragments(100, 8, 0)


def test_a_model_or_engine_refuses_a_frame_count_its_sampler_cannot_feed_when_built():
    from qclip_engine.engine import QualityEngine
    from qclip_engine.model.clipvqa import CLIPVQAConfig
    from qclip_engine.model.fastvqa import FASTVQAConfig
    from qclip_engine.model.qclip import QCLIPConfig

    with pytest.raises(ValueError, match="multiple of 3"):
        check_sampler("temporal_fragments:3", 8)
    assert check_sampler("temporal_fragments:4", 8).name == "temporal_fragments:4"
    for config in (lambda: QCLIPConfig(num_frames=8, sampler="temporal_fragments:3"),
                   lambda: CLIPVQAConfig(num_frames=8, sampler="temporal_fragments:3"),
                   lambda: FASTVQAConfig(num_frames=32, sampler="temporal_fragments:3")):
        with pytest.raises(ValueError, match="multiple of 3"):
            config()
    model = tiny_model(num_frames=4)
    with pytest.raises(ValueError, match="multiple of 3"):  # qclip-score --sampler temporal_fragments:3
        QualityEngine(model=model, engine="torch", device="cpu", sampler="temporal_fragments:3")


def test_configs_take_it_and_the_trunk_cache_refuses_it():
    from qclip_engine.model.qclip import QCLIPConfig
    from qclip_engine.train.errors import ConfigError
    from qclip_engine.train.trunk_cache import check_sampler_cacheable

    assert QCLIPConfig(sampler="temporal_fragments:4", pretrained=None).sampler == "temporal_fragments:4"
    with pytest.raises(ValueError, match="unknown sampler"):
        QCLIPConfig(sampler="temporal_fragments:0", pretrained=None)
    with pytest.raises(ConfigError, match="draws new frames"):
        check_sampler_cacheable("temporal_fragments:4")


# -- the decoders keep the sampler's order ------------------------------------------------------------
def numbered_frames(n: int, h: int = 64, w: int = 64) -> np.ndarray:
    """Frame i flat at value 10·i (i < 25): which frame came back is read off any pixel."""
    return np.stack([np.full((h, w, 3), 10 * i, dtype=np.uint8) for i in range(n)])


def test_the_host_source_returns_wrapped_picks_in_their_order(tmp_path):
    frames = numbered_frames(20)
    path = lossless(tmp_path / "numbered.mkv", frames)
    expected = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 0, 2, 4, 6, 8, 10]  # N = 20 < 2K: wraps
    for preprocessing in ("fast", "fragments"):  # fragments of a 64 × 64 frame at 64 × 64: the frame itself
        sampled = HostSource((64, 64), 16, preprocessing=preprocessing).sample(path,
                                                                               check_sampler("temporal_fragments:1"))
        assert sampled.indices.tolist() == expected
        np.testing.assert_array_equal(sampled.frames, frames[expected])
        np.testing.assert_allclose(sampled.times, np.array(expected) / 25)


def test_decode_frames_follows_any_order_with_repeats_by_seeking_or_not(tmp_path):
    path = encode(tmp_path / "moving.mp4", moving_frames(40), options={"g": "8", "bf": "2"})  # B-frames, seeks
    order = [33, 2, 2, 17, 0, 39, 8, 33, 1]
    sequential = decode.decode_frames(path, (64, 96), indices=order, seek=False)
    seeking = decode.decode_frames(path, (64, 96), indices=order, seek=True)
    every = decode.decode_frames(path, (64, 96))
    np.testing.assert_array_equal(sequential, every[order])
    np.testing.assert_array_equal(seeking, every[order])
