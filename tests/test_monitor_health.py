"""The monitor's health signals (``qclip_engine.monitor.health``): frozen and black spans timed to
the frame on generated clips, the per-window summary, bounded memory, and the ``freeze_mse``
default against a real H.264 encode (keyframes inside a freeze, slow real motion)."""

import av
import numpy as np
import pytest

from media import encode, moving_frames
from qclip_engine.monitor.health import HEALTH_KEYS, HealthSettings, HealthTracker
from qclip_engine.stream.windowing import Windower
from qclip_engine.video.resize import resize_rgb
from qclip_engine.video.frame_mse import pair_mse

FPS = 25
DT = 1 / FPS


def noise(n, seed=0, size=64, low=0, high=256):
    """Independent uniform noise frames: every frame differs from the last (pair MSE ~10⁴)."""
    return np.random.default_rng(seed).integers(low, high, (n, size, size, 3), dtype=np.uint8)


def feed(tracker, frames, times=None, drop=(), finish=True):
    """Every frame to ``tracker`` (``frame`` then ``pixels``); ``drop``: indices never received.
    Returns ``[(index, event)]``, index None for the events of ``finish``."""
    times = [i / FPS for i in range(len(frames))] if times is None else times
    events = []
    for i, (t, rgb) in enumerate(zip(times, frames)):
        if i in drop:
            continue
        tracker.frame(t)
        events += [(i, e) for e in tracker.pixels(t, rgb)]
    if finish:
        events += [(None, e) for e in tracker.finish(times[-1] + DT)]
    return events


def spans(events, kind):
    return [e for _, e in events if e["kind"] == kind]


@pytest.fixture(scope="module")
def clip():
    """300 frames: noise, frames 50..99 repeating frame 50 (2.0 s), frames 150..210 black (2.44 s)."""
    frames = noise(300)
    frames[50:100] = frames[50]
    frames[150:211] = 0
    return frames


def test_frozen_and_black_spans_are_timed_to_the_frame(clip):
    events = feed(HealthTracker(HealthSettings()), clip)
    frozen, black = spans(events, "frozen"), spans(events, "black")
    # The run is exactly freeze_s long: reported when the first differing frame (100) ends it.
    assert [e["status"] for e in frozen] == ["start", "end"]
    assert frozen[0]["start_s"] == pytest.approx(50 * DT, abs=DT)
    assert frozen[1]["end_s"] == pytest.approx(100 * DT, abs=DT)
    assert frozen[1]["duration_s"] == pytest.approx(2.0, abs=DT)
    assert [i for i, e in events if e["kind"] == "frozen"] == [100, 100]
    # Black: started once 2 s of it were seen (frame 200), ended by the first non-black frame (211).
    assert [(i, e["status"]) for i, e in events if e["kind"] == "black"] == [(200, "start"), (211, "end")]
    assert black[0]["start_s"] == pytest.approx(150 * DT, abs=DT)
    assert black[1]["end_s"] == pytest.approx(211 * DT, abs=DT)
    assert black[1]["duration_s"] == pytest.approx(61 * DT, abs=DT)
    # A black screen repeats itself exactly, yet it is reported as black only.
    assert len(frozen) == 2


def test_a_long_freeze_starts_once_it_reaches_freeze_s():
    frames = noise(200, seed=1)
    frames[20:120] = frames[20]  # 4 s
    events = feed(HealthTracker(HealthSettings(freeze_s=1.5)), frames)
    assert [(i, e["status"]) for i, e in events] == [(20 + round(1.5 * FPS), "start"), (120, "end")]
    assert events[0][1] == {"kind": "frozen", "status": "start", "start_s": pytest.approx(20 * DT)}
    assert events[1][1]["duration_s"] == pytest.approx(4.0)


def test_shorter_runs_give_no_events():
    frames = noise(250, seed=2)
    frames[30:70] = frames[30]  # 1.6 s frozen
    frames[100:145] = 0  # 1.8 s black
    frames[180:229] = 5  # 49 frames of flat dark: 1.96 s < 2 s
    tracker = HealthTracker(HealthSettings(horizon_s=100.0))
    assert feed(tracker, frames) == []
    # ... yet they count in the window's seconds.
    health = tracker.window(1.0, 3.0)
    assert health["frozen"] is False and health["frozen_s"] == pytest.approx(1.6)


def test_black_is_mean_luma_at_or_under_the_threshold():
    # Dark noise whose mean luma is just under 0.10 (mean 25/255 = 0.098), then just over (26/255).
    under = noise(80, seed=3, low=20, high=31)
    over = noise(40, seed=4, low=21, high=32)
    tracker = HealthTracker(HealthSettings())
    events = feed(tracker, np.concatenate([noise(20, seed=5), under, over]))
    assert [(i, e["status"]) for i, e in events] == [(20 + 2 * FPS, "start"), (100, "end")]
    assert events[0][1]["kind"] == "black" and events[0][1]["start_s"] == pytest.approx(20 * DT)
    assert events[1][1]["end_s"] == pytest.approx(100 * DT)
    health = tracker.window(1.0, 3.0)
    assert health["black"] and health["black_s"] == pytest.approx(2.0)
    assert health["luma"] == pytest.approx(np.mean([frame_luma(f) for f in under[5:55]]), abs=1e-4)
    assert health["luma"] < 0.1 < tracker.window(4.0, 4.8)["luma"]


def frame_luma(rgb):
    return float((rgb.reshape(-1, 3).mean(axis=0) * [0.299, 0.587, 0.114]).sum() / 255)


def test_runs_still_open_end_at_finish():
    frames = noise(150, seed=6)
    frames[50:] = frames[50]  # frozen to the end: 4 s
    events = feed(HealthTracker(HealthSettings()), frames)
    assert [(i, e["status"]) for i, e in events] == [(100, "start"), (None, "end")]
    assert events[1][1]["end_s"] == pytest.approx(150 * DT)
    # One that reaches freeze_s only at the end of the media (frame 99 + one step) is reported then.
    frames = noise(100, seed=7)
    frames[50:] = 0  # black for exactly 2 s up to the media's end
    events = feed(HealthTracker(HealthSettings()), frames)
    assert [(i, e["kind"], e["status"]) for i, e in events] == [(None, "black", "start"), (None, "black", "end")]
    assert events[1][1]["end_s"] == pytest.approx(4.0) and events[1][1]["duration_s"] == pytest.approx(2.0)
    # ... and a shorter one is not.
    assert feed(HealthTracker(HealthSettings(black_s=2.1)), frames) == []


def test_slow_drift_ends_a_freeze_but_coding_noise_does_not():
    rng = np.random.default_rng(8)
    base = rng.integers(30, 220, (64, 64, 3), dtype=np.uint8)
    base[:16, :16] //= 2  # room for +99 in the patch
    # A patch of 1/16 of the picture brightening one level a frame: every pair differs by MSE 1/16,
    # far under freeze_mse, but the picture drifts away from the run's first frame (MSE k²/16).
    drift = np.stack([base] * 100)
    for k in range(100):
        drift[k, :16, :16] = base[:16, :16] + k
    assert pair_mse(drift).max() <= 0.0625 + 1e-9
    tracker = HealthTracker(HealthSettings())
    assert feed(tracker, drift) == []
    assert tracker.window(0.0, 4.0)["frozen_s"] < 4.0
    # A frozen picture re-coded once (a keyframe: ±1 on every value, MSE 2/3) stays one frozen run.
    frozen = np.stack([base] * 100)
    frozen[40:] = np.clip(base.astype(int) + rng.integers(-1, 2, base.shape), 0, 255).astype(np.uint8)
    events = feed(HealthTracker(HealthSettings()), np.concatenate([noise(10, seed=9), frozen, noise(10, seed=10)]))
    assert [(i, e["status"]) for i, e in events] == [(60, "start"), (110, "end")]
    assert events[1][1]["duration_s"] == pytest.approx(4.0)


def test_window_summary(clip):
    drop = {10, 11, 12, 30, 120, 121}
    tracker = HealthTracker(HealthSettings(horizon_s=1000.0))
    received = [i for i in range(len(clip)) if i not in drop]
    feed(tracker, clip, drop=drop, finish=False)
    health = tracker.window(0.0, 2.0)
    assert list(health) == list(HEALTH_KEYS)
    assert health["frames"] == 46 and health["expected_frames"] == 50 and health["dropped_frames"] == 4
    # motion: the mean pair MSE of kept pairs whose later frame lies in the window (the first frame has none).
    inside = [i for i in received if i < 50]
    by_hand = [float(pair_mse(clip[[a, b]])[0]) for a, b in zip(inside, inside[1:])]
    assert health["motion"] == pytest.approx(round(np.mean(by_hand), 4))
    assert health["luma"] == pytest.approx(np.mean([frame_luma(clip[i]) for i in inside]), abs=1e-4)
    assert not health["frozen"] and health["frozen_s"] == 0.0 and not health["black"]
    # The frozen run [2, 4): all of window [2, 4), half of [1, 3) and [3, 5); in [2, 4) only the pair
    # (49, 50) into the frozen picture moved.
    motion = round(float(pair_mse(clip[[49, 50]])[0]) / 50, 4)
    assert tracker.window(2.0, 4.0) | {"luma": None} == {
        "frozen": True, "frozen_s": 2.0, "black": False, "black_s": 0.0, "motion": motion, "luma": None,
        "frames": 50, "expected_frames": 50, "dropped_frames": 0}
    assert tracker.window(1.0, 3.0)["frozen_s"] == pytest.approx(1.0) and tracker.window(1.0, 3.0)["frozen"]
    assert tracker.window(3.0, 5.0)["frozen_s"] == pytest.approx(1.0)
    assert not tracker.window(4.0, 6.0)["frozen"]  # the run ended at 4.0: [4, 6) lies after it
    # Black [6, 8.44): black_s and the flag; frames dropped there are counted too.
    health = tracker.window(4.0, 6.0)
    assert health["dropped_frames"] == 2 and health["frames"] == 48 and not health["black"]
    health = tracker.window(7.0, 9.0)
    assert health["black"] and health["black_s"] == pytest.approx(1.44) and health["luma"] > 0
    assert tracker.window(6.0, 8.0)["luma"] == 0.0
    # Past the last frame only the part up to one step after it is expected.
    health = tracker.window(11.0, 13.0)
    assert health["frames"] == 25 and health["expected_frames"] == 25 and health["dropped_frames"] == 0


def test_window_before_any_frame_and_with_one_frame():
    tracker = HealthTracker(HealthSettings())
    assert tracker.window(0.0, 2.0) == {"frozen": False, "frozen_s": 0.0, "black": False, "black_s": 0.0,
                                        "motion": 0.0, "luma": 0.0, "frames": 0, "expected_frames": 0,
                                        "dropped_frames": 0}
    tracker.frame(0.0)
    tracker.pixels(0.0, np.full((8, 8, 3), 255, np.uint8))
    health = tracker.window(0.0, 2.0)
    assert (health["frames"], health["expected_frames"], health["luma"]) == (1, 1, 1.0)


def test_frames_that_are_not_kept_still_count():
    # Only every other frame's pixels reach the tracker (the windower's memory cap): nothing is dropped.
    frames = noise(100, seed=11)
    tracker = HealthTracker(HealthSettings())
    for i, rgb in enumerate(frames):
        tracker.frame(i * DT)
        if i % 2 == 0:
            tracker.pixels(i * DT, rgb)
    health = tracker.window(0.0, 2.0)
    assert (health["frames"], health["expected_frames"], health["dropped_frames"]) == (50, 50, 0)
    by_hand = pair_mse(frames[0:50:2])
    assert health["motion"] == pytest.approx(round(by_hand.mean(), 4))


def test_memory_is_bounded_and_late_frames_are_ignored_for_runs():
    tracker = HealthTracker(HealthSettings(horizon_s=4.0))
    frames = noise(60, seed=12, size=8)
    events = []
    for i in range(10_000):
        t = i * DT
        tracker.frame(t)
        rgb = frames[0] if (i // 100) % 2 else frames[1 + i % 59]  # frozen every other 4 s
        events += tracker.pixels(t, rgb)
        if i % 97 == 0:  # a late frame, one step behind: counted, not part of a run
            tracker.frame(t - DT / 2)
            assert tracker.pixels(t - DT / 2, frames[(i + 1) % 60]) == []
    assert len(tracker.received) <= 4 * FPS + 5 and len(tracker.kept) <= 4 * FPS + 5
    assert all(len(runs) <= 3 for runs in tracker.runs.values())
    assert len(tracker.steps) <= 32
    # Frozen [100k, 100k + 100) for every odd k: 50 runs of 4 s, the last still open (no finish).
    starts = [e for e in events if e["status"] == "start"]
    ends = [e for e in events if e["status"] == "end"]
    assert len(starts) == 50 and len(ends) == 49
    assert all(e["duration_s"] == pytest.approx(4.0, abs=DT) for e in ends)


def test_driven_by_the_windower():
    """As the monitor wires it (``Windower(on_frame=…)``): every window's summary, the memory cap
    thinning the kept frames, a gap of lost frames counted where it lies."""
    frames = noise(290, seed=13, size=16)  # 11.6 s
    frames[100:175] = frames[100]  # frozen [4, 7)
    tracker = HealthTracker(HealthSettings(horizon_s=2.0 + 2 * 1.0))
    events = []

    def on_frame(t, rgb):
        tracker.frame(t)
        if rgb is not None:
            events.extend(tracker.pixels(t, rgb))

    windower = Windower(2.0, 1.0, 25, on_frame=on_frame)  # 12.5 kept frames a second: every other frame
    lost = set(range(200, 210))
    summaries = {}
    for i, rgb in enumerate(frames):
        if i not in lost:
            for w in windower.add(i * DT, lambda rgb=rgb: rgb):
                summaries[w.index] = tracker.window(w.start_s, w.end_s)
    for w in windower.finish():
        summaries[w.index] = tracker.window(w.start_s, w.end_s)
    events += tracker.finish(windower.last_t + windower.dt)
    assert [(e["status"], e["start_s"]) for e in events] == [("start", 4.0), ("end", 4.0)]
    assert events[1]["end_s"] == pytest.approx(7.0, abs=2 * DT)  # the kept frames are 2 steps apart
    assert sorted(summaries) == list(range(11))
    for k, health in summaries.items():
        lost_here = len([i for i in lost if k <= i * DT < k + 2.0 - 1e-9])
        assert health["expected_frames"] == (50 if k < 10 else 40)  # the last window reaches past the end
        assert health["dropped_frames"] == lost_here and health["frames"] == health["expected_frames"] - lost_here
    # Window [3, 5) closed (at 5 s) before the run had lasted 2 s (at 6 s); the run ends at the first kept
    # frame past 7 s (7.04: kept frames are 0.08 s apart), so [7, 9) just touches it.
    assert [k for k, h in summaries.items() if h["frozen"]] == [4, 5, 6, 7]
    assert summaries[5]["frozen_s"] == pytest.approx(2.0) and summaries[5]["motion"] == 0.0


def test_settings_are_checked():
    for bad in ({"freeze_s": 0}, {"black_s": -1}, {"freeze_mse": -0.1}, {"black_luma": 1.5},
                {"horizon_s": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            HealthSettings(**bad)
    with pytest.raises(ValueError, match="uint8 RGB"):
        HealthTracker(HealthSettings()).pixels(0.0, np.zeros((4, 4), np.uint8))


# -- a real H.264 encode ---------------------------------------------------------------------------
MODEL_SIZE = (224, 224)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """11 s at 25 fps, 320 × 240, x264 with 1 s GOPs (three keyframes inside the freeze):
    0–2 s moving, 2–5 s frozen, 5–6 s moving, 6–8.4 s a small patch swinging slowly on a still
    picture, 8.4–11 s black. Decoded and resized to model size."""
    frames = moving_frames(275, h=240, w=320, seed=3)
    frames[50:125] = frames[50]
    still = frames[149].copy()
    for i in range(150, 210):  # a patch of 1/80 of the picture, ±30 levels over ~2 s: slow real motion
        f = still.astype(np.int16)
        f[100:130, 140:172] += int(round(30 * np.sin((i - 150) / 8)))
        frames[i] = np.clip(f, 0, 255)
    frames[210:] = 0
    path = encode(tmp_path_factory.mktemp("health") / "clip.mp4", frames, options={"g": "25"})
    with av.open(str(path)) as container:
        decoded = [resize_rgb(f.to_ndarray(format="rgb24"), MODEL_SIZE) for f in container.decode(video=0)]
    return np.stack(decoded)


def test_encoder_noise_on_a_freeze_stays_under_the_default_and_motion_above(encoded):
    limit = HealthSettings().freeze_mse
    assert len(encoded) == 275
    pairs = pair_mse(encoded)
    # The freeze: keyframes re-code the picture (nonzero steps), always within freeze_mse of its first frame.
    to_first = pair_mse(np.stack([x for k in range(51, 125) for x in (encoded[50], encoded[k])]))[::2]
    assert to_first.max() <= limit / 2
    assert pairs[50:124].max() > 0  # the re-coding is there
    # Moving content: every pair far over it.
    assert pairs[:49].min() > 10 * limit and pairs[125:148].min() > 10 * limit
    # The slow patch: most frame-to-frame changes are under freeze_mse, but it leaves any frame by more
    # within 2 s, so no freeze is found there.
    assert np.median(pairs[150:209]) < limit
    tracker = HealthTracker(HealthSettings(horizon_s=100.0))
    events = feed(tracker, encoded)
    frozen, black = spans(events, "frozen"), spans(events, "black")
    assert [e["status"] for e in frozen] == ["start", "end"]
    assert frozen[0]["start_s"] == pytest.approx(2.0, abs=DT) and frozen[1]["end_s"] == pytest.approx(5.0, abs=DT)
    assert [e["status"] for e in black] == ["start", "end"]
    assert black[0]["start_s"] == pytest.approx(8.4, abs=DT) and black[1]["end_s"] == pytest.approx(11.0, abs=DT)
    assert tracker.window(2.0, 5.0)["frozen"] and tracker.window(2.0, 5.0)["frozen_s"] == pytest.approx(3.0, abs=DT)
    assert not tracker.window(6.0, 8.0)["frozen"]  # short runs only (frozen_s counts them)
