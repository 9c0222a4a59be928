"""The pure windower (``qclip_engine.stream.windowing``): bounds, memory cap, clock jumps, gaps and
the end of media — fast, no decoding, no model. Each test states one rule of the stream docstring."""

import re

import numpy as np
import pytest

from qclip_engine.stream.windowing import Windower


def run(times, window_s=1.0, hop_s=1.0, max_frames=100, nominal_dt=None, converted=None):
    """Feed frames at ``times`` (pixel value = frame number) and finish: every window, in order."""
    w = Windower(window_s, hop_s, max_frames)
    windows = []
    for i, t in enumerate(times):
        def convert(i=i):
            if converted is not None:
                converted.append(i)
            return np.full((1, 1, 3), i % 256, np.uint8)

        windows += w.add(t, convert)
    return windows + w.finish(nominal_dt)


def test_window_k_covers_k_hop_to_k_hop_plus_window():
    # hop 0.1 s: bounds are k·hop computed, never accumulated (30 additions of 0.1 ≠ 30 · 0.1).
    times = [i / 100 for i in range(500)]  # 100 fps for 5 s
    windows = run(times, window_s=0.3, hop_s=0.1)
    assert [w.index for w in windows] == list(range(len(windows)))
    assert [w.start_s for w in windows] == [k * 0.1 for k in range(len(windows))]
    assert [w.end_s for w in windows] == [k * 0.1 + 0.3 for k in range(len(windows))]
    for w in windows:  # each window holds exactly the frames of [start, end)
        inside = [i for i, t in enumerate(times) if w.start_s - 1e-9 <= t < w.end_s - 1e-9]
        assert w.numbers.tolist() == inside
        np.testing.assert_array_equal(w.frames[:, 0, 0, 0], np.array(inside) % 256)
        np.testing.assert_allclose(w.times, [times[i] for i in inside])


def test_frames_are_kept_on_the_time_grid_and_capped():
    converted = []
    times = [i / 200 for i in range(200)]  # 200 fps for 1 s, windows of 0.5 s, 20 frames at most
    windows = run(times, window_s=0.5, hop_s=0.5, max_frames=20, converted=converted)
    assert [len(w.frames) for w in windows] == [20, 20]
    for w in windows:  # one frame per 0.025 s grid step: every 5th frame
        np.testing.assert_allclose(np.diff(w.times), 0.025)
        assert w.numbers.tolist() == list(range(w.index * 100, w.index * 100 + 100, 5))
    assert converted == list(range(0, 200, 5))  # dropped frames are never converted
    # Below the cap nothing is dropped.
    assert [len(w.frames) for w in run(times, window_s=0.5, hop_s=0.5, max_frames=100)] == [100, 100]


def test_a_backwards_clock_jump_rebases_the_timeline():
    times = [i / 10 for i in range(30)] + [i / 10 for i in range(20)]  # the clock restarts at 0
    windows = run(times)
    assert [w.start_s for w in windows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [len(w.frames) for w in windows] == [10] * 5
    # The restarted frames continue one step after the last: 3.0, 3.1, …
    np.testing.assert_allclose(windows[3].times, [3.0 + i / 10 for i in range(10)])
    assert windows[3].numbers.tolist() == list(range(30, 40))
    # A small step back (less than a window) is jitter, not a restart: no re-base.
    jitter = run([0.0, 0.1, 0.2, 0.15, 0.3, 1.0, 1.1])
    assert [w.start_s for w in jitter] == [0.0, 1.0]
    assert jitter[0].numbers.tolist() == [0, 1, 2, 4]  # 0.15 lies behind the last grid slot


@pytest.mark.parametrize("loop_s", [1.0, 2.0])
def test_a_looping_clock_rebases_on_every_loop_and_says_so(loop_s):
    # An endless HTTP MPEG-TS repeating a short clip: 25 fps timestamps 1.4 … 1.4 + loop_s − 0.04,
    # then back to 1.4 — a jump back shorter than the 2 s window.
    fps, loops = 25, 5
    per_loop = round(loop_s * fps)
    times = [1.4 + (i % per_loop) / fps for i in range(loops * per_loop)]
    windows = run(times, window_s=2.0, hop_s=1.0)
    # The timeline is the frames' own rate, end to end: window k holds frames 25k … 25k + 49.
    assert [w.start_s for w in windows] == [float(k) for k in range(len(windows))]
    assert len(windows) == loops * loop_s - 1 and windows[-1].end_s == loops * loop_s
    for w in windows:
        assert w.numbers.tolist() == list(range(w.index * fps, w.index * fps + 2 * fps))
        np.testing.assert_allclose(w.times, w.numbers / fps, atol=1e-9)
    # Each jump is told once, on the first window closed after it, with the frame it happened at.
    jumps = [n for n in range(per_loop, loops * per_loop, per_loop)]
    told = [w for w in windows if w.warnings]
    assert all(len(w.warnings) == 1 and w.warnings[0]["code"] == "clock_jump" for w in told)
    assert [int(m) for w in told for m in re.findall(r"frame (\d+)", w.warnings[0]["message"])] == jumps
    assert f"back {loop_s - 1 / fps:.3f} s" in told[0].warnings[0]["message"]


def test_late_frames_within_two_steps_are_not_clock_jumps():
    # A frame one or two steps late (reordered) is not a jump; a frame 3 steps back is one.
    late = run([0.0, 0.1, 0.2, 0.3, 0.4, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1])
    assert not any(w.warnings for w in late) and late[0].end_s == 1.0
    assert late[0].numbers.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]  # 0.25 lies behind the last grid slot
    jumped = run([0.0, 0.1, 0.2, 0.3, 0.4, 0.05, 0.5])
    np.testing.assert_allclose(jumped[0].times, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.95])
    assert jumped[0].warnings[0]["code"] == "clock_jump" and "frame 5" in jumped[0].warnings[0]["message"]
    # Steps are a median of the latest: one near-duplicate timestamp does not make the next late frame a jump.
    jitter = run([0.0, 0.1, 0.2, 0.2001, 0.3, 0.25, 0.4])
    assert not any(w.warnings for w in jitter)


def test_a_forward_gap_skips_empty_windows_without_reusing_indices():
    times = [i / 10 for i in range(20)] + [100 + i / 10 for i in range(20)]  # a 98 s outage
    windows = run(times)
    assert [w.index for w in windows] == [0, 1, 100, 101]
    assert [w.start_s for w in windows] == [0.0, 1.0, 100.0, 101.0]
    assert all(len(w.frames) == 10 for w in windows)
    # Overlapping windows: [1, 3) … [8, 10) are empty and skipped; [9, 11) holds the frames
    # after the gap and reaches the media's end (10.5 + one 0.5 s step).
    overlap = run([0.0, 0.5, 10.0, 10.5], window_s=2.0, hop_s=1.0)
    assert [(w.index, w.start_s) for w in overlap] == [(0, 0.0), (9, 9.0)]
    assert [w.numbers.tolist() for w in overlap] == [[0, 1], [2, 3]]
    assert not overlap[-1].partial


def test_finish_emits_up_to_the_first_window_reaching_the_end_and_marks_it_partial():
    # 6.5 s at 10 fps: media end 6.5; [5, 7) reaches past it (partial), [6, 8) is not emitted.
    windows = run([i / 10 for i in range(65)], window_s=2.0, hop_s=1.0)
    assert [(w.start_s, w.end_s) for w in windows][-2:] == [(4.0, 6.0), (5.0, 7.0)]
    assert windows[-1].partial and not any(w.partial for w in windows[:-1])
    assert len(windows[-1].frames) == 15
    # Exactly 6 s: [4, 6) reaches the end and is complete; nothing after it.
    exact = run([i / 10 for i in range(60)], window_s=2.0, hop_s=1.0)
    assert [w.start_s for w in exact] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert not any(w.partial for w in exact)
    # One frame: its end is the nominal frame duration; the window reaches past it.
    single = run([0.0], window_s=1.0, hop_s=1.0, nominal_dt=0.04)
    assert [(w.index, w.partial, len(w.frames)) for w in single] == [(0, True, 1)]
    assert Windower(1.0, 1.0, 10).finish(0.04) == []  # no frames, no windows


def test_frames_without_a_time_follow_the_last_step():
    w = Windower(1.0, 1.0, 100)
    for t in [0.0, 0.25, None, None]:
        w.add(t, lambda: np.zeros((1, 1, 3), np.uint8))
    (window,) = w.finish()
    np.testing.assert_allclose(window.times, [0.0, 0.25, 0.5, 0.75])
    assert not window.partial  # media end 1.0 = the window's end
