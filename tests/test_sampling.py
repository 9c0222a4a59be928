"""Frame sampling strategies (qclip_engine.video.sampling): hand-worked indices and properties."""

import numpy as np
import pytest

from qclip_engine.video import sampling
from qclip_engine.video.sampling import (
    MIXED_CHOICES,
    SAMPLER_NAMES,
    SAMPLERS,
    candidate_indices,
    choose_mixed_strategy,
    frame_indices,
    mse_sorted_uniform,
    random_indices,
    segment_bounds,
    segment_mse_mean,
    segment_mse_median,
    select_frames,
    uniform,
    uniform_random_start,
)

DETERMINISTIC = ("uniform", "mse_sorted_uniform", "segment_mse_mean", "segment_mse_median")
RANDOM_IN_TRAINING = ("random", "uniform_random_start", "mixed", "segment_middle")


def sel(strategy, mse, k, **kw):
    return select_frames(strategy, np.asarray(mse, dtype=np.float32), k, **kw)


def burst_mse():
    # N=100: zeros except a burst at frames 40..47 with m = 10, 20, …, 80.
    m = np.zeros(100, dtype=np.float32)
    m[40:48] = np.arange(10, 90, 10)
    return m


# -- constants -------------------------------------------------------------------------------
def test_the_registry_names_every_sampler_in_order():
    assert SAMPLER_NAMES == (
        "uniform",
        "random",
        "uniform_random_start",
        "mse_sorted_uniform",
        "segment_mse_mean",
        "segment_mse_median",
        "mixed",
        "segment_middle",
    )
    assert MIXED_CHOICES == SAMPLER_NAMES[:6]


def test_only_the_motion_free_samplers_say_they_ignore_motion():
    # The engine decodes only the picked frames (by seeking) for these: a wrong flag would
    # either waste a full decode or feed a motion sampler zeros.
    assert {name for name, s in SAMPLERS.items() if not s.needs_motion} == {
        "uniform", "random", "uniform_random_start", "segment_middle"}
    m = np.random.default_rng(9).random(120)
    for name, s in SAMPLERS.items():
        if not s.needs_motion:
            np.testing.assert_array_equal(select_frames(name, m, 8, seed=3), select_frames(name, np.zeros(120), 8, seed=3))


def test_a_registered_sampler_is_usable_everywhere_the_registry_is_consulted():
    from qclip_engine.model.qclip import QCLIPConfig

    sampling.register_sampler("first_k_test", needs_motion=False)(lambda m, k, rng, training: np.arange(k) % m.size)
    try:
        np.testing.assert_array_equal(select_frames("first_k_test", np.zeros(10), 3), [0, 1, 2])
        assert QCLIPConfig(sampler="first_k_test", pretrained=None).sampler == "first_k_test"
        with pytest.raises(ValueError, match="already registered"):
            sampling.register_sampler("first_k_test", needs_motion=False)(lambda m, k, rng, training: m)
    finally:
        del sampling.SAMPLERS["first_k_test"]
    with pytest.raises(ValueError, match="unknown sampler"):
        QCLIPConfig(sampler="first_k_test", pretrained=None)


# -- uniform ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "k", "expected"),
    [
        (6, 3, [0, 2, 5]),  # linspace(0,5,3) = [0, 2.5, 5]; 2.5 → 2 (half-to-even)
        (4, 3, [0, 2, 3]),  # [0, 1.5, 3]; 1.5 → 2 (half-to-even)
        (8, 3, [0, 4, 7]),  # [0, 3.5, 7]; 3.5 → 4
        (10, 3, [0, 4, 9]),  # [0, 4.5, 9]; 4.5 → 4 (not 5: not half-up)
        (3, 8, [0, 0, 1, 1, 1, 1, 2, 2]),  # N<K: [0, .29, .57, .86, 1.14, 1.43, 1.71, 2]
        (5, 5, [0, 1, 2, 3, 4]),  # N=K: every frame
        (10, 1, [0]),  # K=1: linspace(0, 9, 1) = [0]
        (1, 4, [0, 0, 0, 0]),  # a single frame, repeated
        (100, 8, [0, 14, 28, 42, 57, 71, 85, 99]),  # step 99/7 = 14.142857…
    ],
)
def test_uniform_hand_worked(n, k, expected):
    assert uniform(n, k).tolist() == expected
    assert sel("uniform", np.zeros(n), k).tolist() == expected


@pytest.mark.parametrize(("n", "k"), [(6, 3), (4, 3), (10, 3), (17, 8), (300, 16), (2, 7), (33, 5)])
def test_uniform_is_the_official_formula(n, k):
    official = np.linspace(0, n - 1, k).round().astype(int)
    np.testing.assert_array_equal(uniform(n, k), official)


def test_uniform_ignores_seed_and_mse():
    m = np.random.default_rng(0).random(50)
    results = {tuple(sel("uniform", m, 8, seed=s, training=t)) for s in (None, 0, 1, 2) for t in (False, True)}
    assert results == {tuple(uniform(50, 8))}


# -- frame_indices: (frame count, sampler, K) → frame indices ----------------------------------
@pytest.mark.parametrize("k", [1, 4, 8, 16, 32])
def test_frame_indices_uniform_is_the_official_loader_for_every_frame_count(k):
    # The official loader: np.linspace(0, N-1, K).round() over ALL N frames, whatever N —
    # above max_analysis_frames (512) too, where candidates at a stride would pick other frames.
    counts = np.arange(1, 5001)
    official = np.stack([np.linspace(0, n - 1, k).round().astype(int) for n in counts.tolist()])
    ours = np.stack([frame_indices(n, "uniform", k) for n in counts.tolist()])
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, official)


@pytest.mark.parametrize("strategy", ["random", "uniform_random_start"])
def test_frame_indices_motion_free_samplers_draw_among_all_frames(strategy):
    n, k = 20_000, 32
    allowed = set(candidate_indices(n, 64).tolist())
    outside = 0
    for seed in range(5):
        idx = frame_indices(n, strategy, k, seed=seed, training=True, max_analysis_frames=64)
        np.testing.assert_array_equal(idx, select_frames(strategy, np.zeros(n), k, seed=seed, training=True))
        outside += sum(i not in allowed for i in idx.tolist())
    assert outside > 0  # the candidate cap does not restrict them


@pytest.mark.parametrize("strategy", [name for name, s in SAMPLERS.items() if s.needs_motion])
def test_frame_indices_motion_samplers_pick_among_the_candidates(strategy):
    n, cap, k = 3001, 100, 8
    cand = candidate_indices(n, cap)
    assert len(cand) == cap
    m = np.random.default_rng(4).random(cap)
    for training in (False, True):
        idx = frame_indices(n, strategy, k, m, max_analysis_frames=cap, seed=7, training=training)
        np.testing.assert_array_equal(idx, cand[select_frames(strategy, m, k, seed=7, training=training)])
        assert set(idx.tolist()) <= set(cand.tolist())
    # The candidates a decoder actually produced (one left out) replace the default stride.
    kept = np.delete(cand, 3)
    idx = frame_indices(n, strategy, k, m[:-1], candidates=kept, seed=7)
    np.testing.assert_array_equal(idx, kept[select_frames(strategy, m[:-1], k, seed=7)])


def test_frame_indices_refuses_missing_or_mismatched_motion_and_bad_arguments():
    with pytest.raises(ValueError, match="needs the motion of its 512 candidate frames"):
        frame_indices(5000, "segment_mse_mean", 8)
    with pytest.raises(ValueError, match="motion has 10 values for 512 candidate frames"):
        frame_indices(5000, "segment_mse_mean", 8, np.zeros(10))
    with pytest.raises(ValueError, match="unknown sampler"):
        frame_indices(10, "nearest", 4)
    with pytest.raises(ValueError, match="at least one"):
        frame_indices(0, "uniform", 4)
    with pytest.raises(ValueError, match="k must be"):
        frame_indices(10, "uniform", 0)


# -- random ----------------------------------------------------------------------------------
def test_random_distinct_sorted_when_n_at_least_k():
    for seed in range(20):
        idx = sel("random", np.zeros(30), 8, seed=seed)
        assert len(set(idx.tolist())) == 8  # without replacement
        assert np.all(np.diff(idx) > 0)


def test_random_n_equals_k_is_every_frame():
    assert sel("random", np.zeros(8), 8, seed=3).tolist() == list(range(8))


def test_random_n_less_than_k_covers_every_frame():
    # N=3, K=8: frames 0, 1, 2 once each, plus 5 repeats drawn with replacement.
    for seed in range(20):
        idx = sel("random", [1.0, 2.0, 3.0], 8, seed=seed)
        assert len(idx) == 8
        assert set(idx.tolist()) == {0, 1, 2}
        assert np.all(np.diff(idx) >= 0)


def test_random_k1_and_seeding():
    draws = [sel("random", np.zeros(50), 1, seed=s).tolist() for s in range(10)]
    assert all(len(d) == 1 and 0 <= d[0] < 50 for d in draws)
    assert len({d[0] for d in draws}) > 1


def test_random_matches_seeded_generator():
    expected = np.sort(np.random.default_rng(7).choice(40, 8, replace=False))
    np.testing.assert_array_equal(sel("random", np.zeros(40), 8, seed=7), expected)
    np.testing.assert_array_equal(random_indices(40, 8, np.random.default_rng(7)), expected)


# -- uniform_random_start ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "k", "expected"),
    [
        # s = 12.5, r = 6.25: 6.25, 18.75, 31.25, 43.75, 56.25, 68.75, 81.25, 93.75
        (100, 8, [6, 18, 31, 43, 56, 68, 81, 93]),
        # s = 0.375, r = 0.1875: .19 .56 .94 1.31 1.69 2.06 2.44 2.81
        (3, 8, [0, 0, 0, 1, 1, 2, 2, 2]),
        (8, 8, [0, 1, 2, 3, 4, 5, 6, 7]),  # s = 1, r = .5
        (10, 1, [5]),  # s = 10, r = 5
        (9, 2, [2, 6]),  # s = 4.5, r = 2.25: 2.25, 6.75
    ],
)
def test_uniform_random_start_evaluation_is_centred(n, k, expected):
    assert uniform_random_start(n, k).tolist() == expected
    for seed in (None, 0, 1):
        assert sel("uniform_random_start", np.zeros(n), k, seed=seed).tolist() == expected


def test_uniform_random_start_training_stays_in_stride_windows():
    # N=100, K=8: s = 12.5, r ∈ [0, 12.5) → r + 12.5 i ∈ [12.5 i, 12.5 (i+1)), so index i
    # lies in [floor(12.5 i), ceil(12.5 (i+1))) (e.g. i=0: 0..12, i=1: 12..24).
    lo = np.floor(np.arange(8) * 12.5)
    hi = np.ceil(np.arange(1, 9) * 12.5)
    seen = set()
    for seed in range(200):
        idx = sel("uniform_random_start", np.zeros(100), 8, seed=seed, training=True)
        assert np.all(idx >= lo) and np.all(idx < hi)
        assert np.all(np.diff(idx) >= 12) and np.all(np.diff(idx) <= 13)  # a fixed stride of 12.5
        seen.add(tuple(idx))
    assert len(seen) > 1


def test_uniform_random_start_training_n_equals_k_is_every_frame():
    # s = 1, r ∈ [0, 1): floor(r + i) = i whatever r is.
    for seed in range(10):
        assert sel("uniform_random_start", np.zeros(6), 6, seed=seed, training=True).tolist() == list(range(6))


def test_uniform_random_start_training_n_less_than_k():
    # N=3, K=8, s = 0.375: indices repeat, stay in [0, 2], and are non-decreasing.
    for seed in range(20):
        idx = sel("uniform_random_start", np.zeros(3), 8, seed=seed, training=True)
        assert len(idx) == 8 and idx.min() >= 0 and idx.max() <= 2
        assert np.all(np.diff(idx) >= 0)


# -- mse_sorted_uniform -----------------------------------------------------------------------
def test_mse_sorted_uniform_hand_worked():
    # m = [9, 1, 5, 3, 7, 0]: ascending order of frames [5, 1, 3, 2, 4, 0];
    # ranks linspace(0, 5, 3) = [0, 2.5, 5] → [0, 2, 5] → frames [5, 3, 0] → by time [0, 3, 5].
    assert sel("mse_sorted_uniform", [9, 1, 5, 3, 7, 0], 3).tolist() == [0, 3, 5]
    assert mse_sorted_uniform(np.array([9, 1, 5, 3, 7, 0], dtype=np.float32), 3).tolist() == [0, 3, 5]


def test_mse_sorted_uniform_ties_keep_temporal_order():
    # m = [2, 1, 1, 2, 1]: stable ascending order [1, 2, 4, 0, 3]; ranks [0, 2, 4] → frames
    # [1, 4, 3] → [1, 3, 4]. (An unstable sort could pick 2 instead of 4, or 0 instead of 3.)
    assert sel("mse_sorted_uniform", [2, 1, 1, 2, 1], 3).tolist() == [1, 3, 4]
    # All equal: the order is plain time order, so this is exactly `uniform`.
    assert sel("mse_sorted_uniform", np.ones(10), 4).tolist() == uniform(10, 4).tolist()


def test_mse_sorted_uniform_n_less_than_k():
    # m = [5, 1, 3]: order [1, 2, 0]; ranks for N=3, K=8 are [0, 0, 1, 1, 1, 1, 2, 2]
    # → frames [1, 1, 2, 2, 2, 2, 0, 0] → by time [0, 0, 1, 1, 2, 2, 2, 2].
    assert sel("mse_sorted_uniform", [5, 1, 3], 8).tolist() == [0, 0, 1, 1, 2, 2, 2, 2]


def test_mse_sorted_uniform_n_equals_k_and_k1():
    assert sel("mse_sorted_uniform", [4, 2, 9, 1], 4).tolist() == [0, 1, 2, 3]
    # K=1: rank 0, the lowest-motion frame; of the tied minima (frames 1 and 3), the earliest.
    assert sel("mse_sorted_uniform", [3, 1, 2, 1], 1).tolist() == [1]


# -- segment strategies -----------------------------------------------------------------------
def test_segment_bounds():
    # N=10, K=3: floor([0, 3.33, 6.67, 10]) = [0, 3, 6, 10].
    starts, ends = segment_bounds(10, 3)
    assert starts.tolist() == [0, 3, 6] and ends.tolist() == [3, 6, 10]
    # N=122, K=14: 7·122/14 = 61 exactly, but floor(np.linspace(0, 122, 15))[7] is 60
    # (linspace gives 60.999…); the exact boundary is 61.
    starts, _ = segment_bounds(122, 14)
    assert starts[7] == 61
    # N<K: N=3, K=8: starts floor(3i/8) = [0,0,0,1,1,1,2,2]; each segment is one frame.
    starts, ends = segment_bounds(3, 8)
    assert starts.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert (ends - starts).tolist() == [1] * 8


def test_segment_mean_and_median_hand_worked():
    # N=8, K=2: segments [0, 4) and [4, 8).
    m = [0, 0, 1, 9, 8, 0, 7, 6]
    # Mean: seg 0 mean 2.5 → |m-2.5| = 2.5, 2.5, 1.5, 6.5 → frame 2;
    #       seg 1 mean 5.25 → 2.75, 5.25, 1.75, 0.75 → frame 7.
    assert sel("segment_mse_mean", m, 2).tolist() == [2, 7]
    assert segment_mse_mean(np.array(m, dtype=np.float32), 2).tolist() == [2, 7]
    # Median: seg 0 median 0.5 → 0.5, 0.5, 0.5, 8.5 → tie of frames 0, 1, 2 → earliest, 0;
    #         seg 1 median 6.5 → 1.5, 6.5, 0.5, 0.5 → tie of frames 6, 7 → earliest, 6.
    assert sel("segment_mse_median", m, 2).tolist() == [0, 6]
    assert segment_mse_median(np.array(m, dtype=np.float32), 2).tolist() == [0, 6]


def test_segment_ties_pick_earliest():
    # N=6, K=2; m = [1, 3, 1, 3, 1, 3]: seg [0,3) mean 5/3 → 0.67, 1.33, 0.67 → tie 0, 2 → 0;
    # seg [3,6) mean 7/3 → 0.67, 1.33, 0.67 → tie 3, 5 → 3.
    m = [1, 3, 1, 3, 1, 3]
    assert sel("segment_mse_mean", m, 2).tolist() == [0, 3]
    # Median seg 0 = 1 → frames 0, 2 exact → 0; seg 1 = 3 → frames 3, 5 exact → 3.
    assert sel("segment_mse_median", m, 2).tolist() == [0, 3]
    # Constant m: every frame ties, so each segment gives its first frame.
    assert sel("segment_mse_mean", np.full(10, 4.0), 3).tolist() == [0, 3, 6]
    assert sel("segment_mse_median", np.full(10, 4.0), 3).tolist() == [0, 3, 6]


@pytest.mark.parametrize("strategy", ["segment_mse_mean", "segment_mse_median"])
def test_segment_n_less_than_k_uses_floor_i_n_over_k(strategy):
    # N=3, K=8: segment i is the single frame floor(3i/8) whatever m is.
    for m in ([5, 1, 3], [0, 0, 0], [1, 100, 2]):
        assert sel(strategy, m, 8).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    # N=1: the one frame, K times.
    assert sel(strategy, [7.0], 4).tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("strategy", ["segment_mse_mean", "segment_mse_median"])
def test_segment_n_equals_k_and_k1(strategy):
    assert sel(strategy, [4, 2, 9, 1, 3], 5).tolist() == [0, 1, 2, 3, 4]  # one frame per segment
    # K=1, one segment [0, 5): m = [4, 2, 9, 1, 3]; mean 3.8 → closest 4 → frame 0;
    # median 3 → frame 4 exact.
    expected = [0] if strategy == "segment_mse_mean" else [4]
    assert sel(strategy, [4, 2, 9, 1, 3], 1).tolist() == expected


# -- motion burst ----------------------------------------------------------------------------
def test_motion_burst_mse_sorted_uniform():
    # Stable ascending order: the 92 zero frames by time (0..39, 48..99), then 40..47.
    # Ranks linspace(0, 99, 8).round() = [0, 14, 28, 42, 57, 71, 85, 99]:
    #   0→0, 14→14, 28→28, 42→50 (rank r ≥ 40 of a zero frame is frame r+8), 57→65,
    #   71→79, 85→93, 99→47 (m = 80, the highest).
    idx = sel("mse_sorted_uniform", burst_mse(), 8)
    assert idx.tolist() == [0, 14, 28, 47, 50, 65, 79, 93]
    assert 47 in idx  # highest m (rank N-1)
    assert 0 in idx  # lowest m (rank 0; earliest of the ties)


def test_motion_burst_segments():
    # Segments floor(100 i / 8): [0,12) [12,25) [25,37) [37,50) [50,62) [62,75) [75,87) [87,100).
    # All but [37,50) are zero → every frame ties → the segment's first frame.
    # [37,50): 13 frames: 37..39 = 0, 40..47 = 10..80, 48..49 = 0.
    #   mean = 360/13 = 27.69 → closest m is 30 (|2.31|) → frame 42.
    #   median = 7th of the sorted 13 (five 0s, then 10, 20, …) = 20 → frame 41.
    m = burst_mse()
    assert sel("segment_mse_mean", m, 8).tolist() == [0, 12, 25, 42, 50, 62, 75, 87]
    assert sel("segment_mse_median", m, 8).tolist() == [0, 12, 25, 41, 50, 62, 75, 87]


# -- mixed -----------------------------------------------------------------------------------
def test_mixed_chooses_all_six_over_seeds():
    chosen = [choose_mixed_strategy(np.random.default_rng(seed)) for seed in range(200)]
    assert set(chosen) == set(MIXED_CHOICES)
    assert "mixed" not in chosen
    # Roughly uniform: each of the six is drawn well over a handful of times in 200.
    assert min(chosen.count(s) for s in MIXED_CHOICES) >= 15


def test_mixed_evaluation_is_segment_mse_mean():
    rng = np.random.default_rng(1)
    for n, k in ((100, 8), (3, 8), (8, 8), (57, 1)):
        m = rng.random(n).astype(np.float32)
        for seed in (None, 0, 5):
            np.testing.assert_array_equal(sel("mixed", m, k, seed=seed), segment_mse_mean(m, k))
    np.testing.assert_array_equal(sel("mixed", burst_mse(), 8), [0, 12, 25, 42, 50, 62, 75, 87])


def test_mixed_training_applies_the_chosen_strategy_with_the_same_rng():
    m = burst_mse()
    chosen = set()
    for seed in range(60):
        rng = np.random.default_rng(seed)
        name = choose_mixed_strategy(rng)
        chosen.add(name)
        # Continue with the same generator, in training mode.
        expected = {
            "uniform": lambda: uniform(100, 8),
            "random": lambda: random_indices(100, 8, rng),
            "uniform_random_start": lambda: uniform_random_start(100, 8, rng),
            "mse_sorted_uniform": lambda: mse_sorted_uniform(m, 8),
            "segment_mse_mean": lambda: segment_mse_mean(m, 8),
            "segment_mse_median": lambda: segment_mse_median(m, 8),
        }[name]()
        np.testing.assert_array_equal(select_frames("mixed", m, 8, seed=seed, training=True), expected)
    assert chosen == set(MIXED_CHOICES)


# -- determinism -----------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", SAMPLER_NAMES)
@pytest.mark.parametrize("training", [False, True])
def test_same_seed_same_result(strategy, training):
    m = np.random.default_rng(0).random(77).astype(np.float32)
    for seed in (0, 1, 123):
        a = select_frames(strategy, m, 8, seed=seed, training=training)
        b = select_frames(strategy, m.copy(), 8, seed=seed, training=training)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("strategy", DETERMINISTIC + ("uniform_random_start", "mixed", "segment_middle"))
def test_evaluation_is_deterministic_without_seed(strategy):
    m = np.random.default_rng(2).random(64).astype(np.float32)
    results = {tuple(select_frames(strategy, m, 8, seed=s)) for s in (None, None, 0, 1, 99)}
    assert len(results) == 1


@pytest.mark.parametrize("strategy", DETERMINISTIC)
def test_deterministic_strategies_ignore_seed_in_training(strategy):
    m = np.random.default_rng(3).random(64).astype(np.float32)
    results = {tuple(select_frames(strategy, m, 8, seed=s, training=True)) for s in (None, 0, 1, 99)}
    assert len(results) == 1


@pytest.mark.parametrize("strategy", RANDOM_IN_TRAINING)
def test_different_seeds_differ_in_training(strategy):
    m = np.random.default_rng(4).random(200).astype(np.float32)
    results = {tuple(select_frames(strategy, m, 8, seed=s, training=True)) for s in range(8)}
    assert len(results) > 1


def test_segment_middle_is_the_released_clipvqa_rule():
    # evaluation: the middle of K equal segments of N-1 frames, truncated; by hand for N = 100, K = 4:
    # t = 24.75 → 12.375, 37.125, 61.875, 86.625
    assert frame_indices(100, "segment_middle", 4).tolist() == [12, 37, 61, 86]
    assert frame_indices(1, "segment_middle", 3).tolist() == [0, 0, 0]
    for n in range(1, 400):
        for k in (1, 4, 8, 32):
            t = (n - 1) / k
            assert frame_indices(n, "segment_middle", k).tolist() == [int(i * t + t / 2) for i in range(k)], (n, k)
    # training: one draw inside each segment of d = (N-1)//K frames, every offset reachable
    seen = set()
    for seed in range(200):
        picks = frame_indices(100, "segment_middle", 4, seed=seed, training=True)
        offsets = picks - np.arange(4) * 24
        assert ((offsets >= 0) & (offsets < 24)).all()
        seen.update(offsets.tolist())
    assert seen == set(range(24))
    # training with fewer than K+1 frames: round(i·(N-1)/K), half to even (N = 5, K = 8: t = 0.5)
    assert frame_indices(5, "segment_middle", 8, seed=0, training=True).tolist() == [0, 0, 1, 2, 2, 2, 3, 4]


def test_random_differs_across_seeds_at_evaluation_too():
    m = np.zeros(200)
    results = {tuple(select_frames("random", m, 8, seed=s)) for s in range(5)}
    assert len(results) > 1


# -- properties ------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", SAMPLER_NAMES)
@pytest.mark.parametrize("training", [False, True])
def test_property_shape_dtype_range_order(strategy, training):
    rng = np.random.default_rng(2 * SAMPLER_NAMES.index(strategy) + int(training))
    for case in range(150):
        n = int(rng.integers(1, 301))
        k = int(rng.integers(1, 17))
        kind = case % 3  # continuous, heavily tied, and bursty motion
        if kind == 0:
            m = rng.random(n).astype(np.float32) * 100
        elif kind == 1:
            m = rng.integers(0, 3, n).astype(np.float32)
        else:
            m = np.where(rng.random(n) < 0.05, 1e4, 0).astype(np.float32)
        idx = select_frames(strategy, m, k, seed=case, training=training)
        assert idx.shape == (k,), (n, k)
        assert idx.dtype == np.int64
        assert idx.min() >= 0 and idx.max() <= n - 1, (n, k, idx)
        assert np.all(np.diff(idx) >= 0), (n, k, idx)


@pytest.mark.parametrize("strategy", ["segment_mse_mean", "segment_mse_median"])
def test_property_segment_pick_lies_in_its_segment(strategy):
    rng = np.random.default_rng(5)
    for _ in range(100):
        n, k = int(rng.integers(1, 301)), int(rng.integers(1, 17))
        idx = select_frames(strategy, rng.random(n).astype(np.float32), k)
        starts, ends = segment_bounds(n, k)
        assert np.all(idx >= starts) and np.all(idx < ends)


# -- validation ------------------------------------------------------------------------------
def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError, match="unknown sampler") as e:
        select_frames("nearest", np.zeros(10), 4)
    for name in SAMPLER_NAMES:
        assert name in str(e.value)


@pytest.mark.parametrize("strategy", SAMPLER_NAMES)
@pytest.mark.parametrize(
    ("mse", "k", "match"),
    [
        (np.zeros(0), 4, "0 frames"),
        (np.zeros((4, 2)), 4, "1-D"),
        (np.array([0.0, np.nan, 1.0]), 2, "finite"),
        (np.array([0.0, np.inf]), 2, "finite"),
        (np.zeros(10), 0, "k must be"),
        (np.zeros(10), -3, "k must be"),
        (np.zeros(10), 2.5, "k must be"),
    ],
)
def test_invalid_inputs_raise(strategy, mse, k, match):
    with pytest.raises(ValueError, match=match):
        select_frames(strategy, mse, k, seed=0, training=True)


def test_per_strategy_functions_validate():
    with pytest.raises(ValueError, match="0 frames"):
        uniform(0, 4)
    with pytest.raises(ValueError, match="k must be"):
        random_indices(10, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="0 frames"):
        uniform_random_start(0, 3)
    with pytest.raises(ValueError, match="finite"):
        mse_sorted_uniform(np.array([1.0, np.nan]), 1)
    with pytest.raises(ValueError, match="1-D"):
        segment_mse_median(np.zeros((2, 2)), 1)


def test_module_exports():
    missing = [name for name in sampling.__all__ if not hasattr(sampling, name)]
    assert not missing
