"""The monitor's alert rules (``qclip_engine.monitor.alerts``): hand-made window records, health
spans and state changes; each alert raised once and cleared once, the hysteresis band, ``for_s`` /
``clear_s`` on their clocks, per-source rules and config errors."""

import pytest

from qclip_engine.monitor.alerts import RULES, AlertRule, SourceAlerts, merge_rules


def windows(scores, window_s=2.0, hop_s=1.0, first=0):
    """Window records ``[k·hop, k·hop + window)`` with these scores (None: an error record)."""
    out = []
    for k, score in enumerate(scores, start=first):
        record = {"index": k, "start_s": k * hop_s, "end_s": k * hop_s + window_s}
        if score is None:
            record["error"] = {"code": "decode_failed", "message": "boom"}
        else:
            record["score"] = score
        out.append(record)
    return out


def run(alerts, records):
    """Feed the records; ``[(record index, event)]``."""
    return [(i, e) for i, r in enumerate(records) for e in alerts.on_window(r)]


def statuses(events):
    return [(i, e["rule"], e["status"]) for i, e in events]


def test_score_below_is_raised_once_and_cleared_once():
    alerts = SourceAlerts([AlertRule("score_below", threshold=0.5)])
    events = run(alerts, windows([0.8, 0.4, 0.3, 0.45, 0.2, 0.6, 0.7, 0.9]))
    assert statuses(events) == [(1, "score_below", "raised"), (5, "score_below", "cleared")]
    raised, cleared = events[0][1], events[1][1]
    assert raised == {"type": "alert", "rule": "score_below", "status": "raised",
                      "detail": {"threshold": 0.5, "score": 0.4, "start_s": 1.0, "end_s": 3.0}}
    # Cleared: the clearing window's score; the run from the first to the last window below.
    assert cleared["detail"] == {"threshold": 0.5, "score": 0.6, "start_s": 1.0, "end_s": 6.0}
    assert alerts.active == []
    # After clearing it may be raised again.
    assert statuses(run(alerts, windows([0.1], first=8))) == [(0, "score_below", "raised")]
    assert alerts.active == ["score_below"]


def test_the_hysteresis_band_does_not_flap():
    alerts = SourceAlerts([AlertRule("score_below", threshold=0.5, margin=0.05)])
    wavering = [0.49, 0.52, 0.50, 0.549, 0.51, 0.54, 0.50, 0.53, 0.49, 0.545]
    events = run(alerts, windows(wavering))
    assert statuses(events) == [(0, "score_below", "raised")]  # in the band: neither cleared nor raised again
    events = run(alerts, windows([0.56, 0.49, 0.5, 0.52], first=10))
    assert statuses(events) == [(0, "score_below", "cleared"), (1, "score_below", "raised")]
    # Not raised: a score in the band breaks a run below (for_s counts consecutive windows below).
    alerts = SourceAlerts([AlertRule("score_below", threshold=0.5, for_s=3.0)])
    assert run(alerts, windows([0.4, 0.51, 0.4, 0.51, 0.4, 0.51])) == []


def test_for_s_counts_media_seconds_of_consecutive_windows_below():
    alerts = SourceAlerts([AlertRule("score_below", threshold=0.5, for_s=4.0)])
    # Windows of 2 s every 1 s: [0,2) [1,3) [2,4) cover 4 s at the third.
    events = run(alerts, windows([0.4, 0.4, 0.4, 0.4, 0.4]))
    assert statuses(events) == [(2, "score_below", "raised")]
    assert events[0][1]["detail"] | {"score": None} == {"threshold": 0.5, "score": None, "start_s": 0.0, "end_s": 4.0}
    # A window at or over the threshold starts the count over.
    alerts = SourceAlerts([AlertRule("score_below", threshold=0.5, for_s=4.0)])
    assert statuses(run(alerts, windows([0.4, 0.4, 0.5, 0.4, 0.4, 0.4]))) == [(5, "score_below", "raised")]
    # A single window covers window_s: for_s ≤ window_s raises at the first one.
    alerts = SourceAlerts([AlertRule("score_below", threshold=0.5, for_s=2.0)])
    assert statuses(run(alerts, windows([0.4]))) == [(0, "score_below", "raised")]


def test_clear_s_counts_media_seconds_of_consecutive_good_windows():
    alerts = SourceAlerts([AlertRule("score_below", threshold=0.5, clear_s=3.0)])
    # below, good, band (the good run starts over), good, below, good, good: [5, 7) and [6, 8) cover 3 s.
    events = run(alerts, windows([0.3, 0.9, 0.51, 0.8, 0.3, 0.8, 0.8, 0.8]))
    assert statuses(events) == [(0, "score_below", "raised"), (6, "score_below", "cleared")]
    assert events[1][1]["detail"]["end_s"] == 6.0  # the last window below: [4, 6)


def test_error_records_neither_raise_clear_nor_break_a_run():
    alerts = SourceAlerts([AlertRule("score_below", threshold=0.5, for_s=3.0)])
    events = run(alerts, windows([0.4, None, 0.4, 0.9, None, 0.9]))
    assert statuses(events) == [(2, "score_below", "raised"), (3, "score_below", "cleared")]
    alerts = SourceAlerts([AlertRule("score_below", threshold=0.5)])
    assert run(alerts, windows([None, None, float("nan")])) == []


def test_frozen_and_black_follow_the_health_spans():
    alerts = SourceAlerts([AlertRule("frozen"), AlertRule("black")])
    start = {"kind": "frozen", "status": "start", "start_s": 2.0}
    end = {"kind": "frozen", "status": "end", "start_s": 2.0, "end_s": 5.0, "duration_s": 3.0}
    assert alerts.on_health(start) == [{"type": "alert", "rule": "frozen", "status": "raised",
                                        "detail": {"start_s": 2.0}}]
    assert alerts.tick(100.0) == [] and alerts.active == ["frozen"]
    assert alerts.on_health(end) == [{"type": "alert", "rule": "frozen", "status": "cleared",
                                      "detail": {"start_s": 2.0, "end_s": 5.0, "duration_s": 3.0}}]
    assert alerts.on_health({"kind": "black", "status": "start", "start_s": 8.0})[0]["rule"] == "black"
    assert alerts.active == ["black"]
    # Only the rules given produce events.
    alerts = SourceAlerts([AlertRule("black")])
    assert alerts.on_health(start) == [] and alerts.on_health(end) == [] and alerts.active == []


def test_frozen_for_s_and_clear_s_are_wall_seconds_on_top():
    alerts = SourceAlerts([AlertRule("frozen", for_s=1.0, clear_s=2.0)])
    start = {"kind": "frozen", "status": "start", "start_s": 2.0}
    end = {"kind": "frozen", "status": "end", "start_s": 2.0, "end_s": 3.5, "duration_s": 1.5}
    # A freeze that ends before for_s raises nothing.
    assert alerts.on_health(start) == [] and alerts.tick(10.0) == [] and alerts.tick(10.5) == []
    assert alerts.on_health(end) == [] and alerts.tick(12.0) == []
    # One that lasts: raised at the first tick ≥ for_s after the start (its first tick: 20.0).
    assert alerts.on_health(dict(start, start_s=30.0)) == [] and alerts.tick(20.0) == [] and alerts.tick(20.75) == []
    assert [e["status"] for e in alerts.tick(21.0)] == ["raised"]
    assert alerts.tick(22.0) == []
    # A short good spell leaves it raised; the next one long enough clears it, once.
    assert alerts.on_health(dict(end, start_s=30.0), now=25.0) == [] and alerts.tick(26.0) == []
    assert alerts.on_health(dict(start, start_s=34.0), now=26.5) == [] and alerts.tick(30.0) == []
    assert alerts.on_health(dict(end, start_s=34.0, end_s=40.0, duration_s=6.0), now=31.0) == []
    assert alerts.tick(32.9) == []
    cleared = alerts.tick(33.0)
    assert [(e["status"], e["detail"]) for e in cleared] == [
        ("cleared", {"start_s": 34.0, "end_s": 40.0, "duration_s": 6.0})]
    assert alerts.tick(40.0) == [] and alerts.active == []


def test_stalled_and_failed_follow_the_state_on_the_wall_clock():
    alerts = SourceAlerts([AlertRule("stalled", for_s=2.0), AlertRule("failed")])
    assert alerts.on_state("live", 0.0) == []
    assert alerts.on_state("stalled", 1.0) == [] and alerts.tick(2.5) == []
    events = alerts.tick(3.0)
    assert events == [{"type": "alert", "rule": "stalled", "status": "raised",
                       "detail": {"state": "stalled", "seconds": 2.0}}]
    assert alerts.tick(4.0) == []
    events = alerts.on_state("live", 5.5)
    assert events == [{"type": "alert", "rule": "stalled", "status": "cleared",
                       "detail": {"state": "live", "seconds": 4.5}}]
    # A stall shorter than for_s: nothing.
    assert alerts.on_state("stalled", 6.0) == [] and alerts.tick(7.0) == [] and alerts.on_state("live", 7.5) == []
    assert alerts.tick(20.0) == []
    # failed (for_s 0): raised at once, cleared when the source is live again.
    assert [(e["rule"], e["status"]) for e in alerts.on_state("failed", 21.0)] == [("failed", "raised")]
    assert alerts.on_state("reconnecting", 22.0)[0]["detail"] == {"state": "reconnecting", "seconds": 1.0}
    assert alerts.active == []


def test_a_flapping_state_with_clear_s_raises_once_and_clears_once():
    alerts = SourceAlerts([AlertRule("stalled", clear_s=5.0)])
    events = alerts.on_state("stalled", 0.0)
    for now in range(1, 20):  # live for 1 s, stalled for 1 s, ...
        events += alerts.on_state("live" if now % 2 else "stalled", float(now))
        events += alerts.tick(now + 0.5)
    for now in (21.0, 23.9, 24.0, 26.0):  # live since 19.0
        events += alerts.tick(now)
    assert [e["status"] for e in events] == ["raised", "cleared"]
    assert events[1]["detail"] == {"state": "live", "seconds": 19.0}  # from the first stall to the last


def test_stopped_clears_everything_raised():
    alerts = SourceAlerts([AlertRule(r, threshold=0.5 if r == "score_below" else None) for r in RULES])
    alerts.on_window(windows([0.1])[0])
    alerts.on_health({"kind": "black", "status": "start", "start_s": 1.0})
    alerts.on_state("stalled", 10.0)
    assert alerts.active == ["score_below", "black", "stalled"]
    events = alerts.on_state("stopped", 12.0)
    assert sorted(e["rule"] for e in events) == ["black", "score_below", "stalled"]
    assert all(e["status"] == "cleared" and e["detail"]["reason"] == "stopped" for e in events)
    assert next(e for e in events if e["rule"] == "stalled")["detail"]["seconds"] == 2.0
    assert alerts.active == []
    # A stopped source raises nothing more (late records, ticks) until its state changes.
    assert alerts.on_window(windows([0.1], first=3)[0]) == [] and alerts.tick(100.0) == []
    assert alerts.on_health({"kind": "frozen", "status": "start", "start_s": 5.0}) == []


def test_history_is_bounded_newest_last():
    alerts = SourceAlerts([AlertRule("failed")], history=3)
    returned = []
    for n in range(5):
        returned += alerts.on_state("failed", 2.0 * n)
        returned += alerts.on_state("live", 2.0 * n + 1)
    assert len(returned) == 10 and alerts.history == returned[-3:]
    assert alerts.history[-1]["status"] == "cleared"


def test_merge_rules_a_source_replaces_global_rules_of_the_same_name():
    global_rules = [AlertRule("score_below", threshold=0.4), AlertRule("stalled", for_s=5.0), AlertRule("black")]
    merged = merge_rules(global_rules, [{"rule": "stalled", "for_s": 1.0}, AlertRule("frozen")])
    assert merged == [AlertRule("score_below", threshold=0.4), AlertRule("stalled", for_s=1.0), AlertRule("black"),
                      AlertRule("frozen")]
    assert merge_rules(global_rules, None) == global_rules and merge_rules(None, None) == []
    with pytest.raises(ValueError, match="stalled given more than once"):
        merge_rules([], [AlertRule("stalled"), AlertRule("stalled", for_s=1.0)])
    with pytest.raises(ValueError, match="more than once"):
        SourceAlerts([AlertRule("black"), AlertRule("black")])


@pytest.mark.parametrize("d, message", [
    ({"rule": "score_low", "threshold": 0.5}, "unknown rule 'score_low'"),
    ({"rule": "frozen", "for": 2}, "unknown key for "),
    ({"rule": "frozen", "for": 2, "clear": 1}, "unknown keys clear, for"),
    ({"rule": "score_below"}, "threshold is required"),
    ({"rule": "score_below", "threshold": "high"}, "threshold must be a finite number"),
    ({"rule": "stalled", "for_s": -1}, "for_s must be ≥ 0"),
    ({"rule": "stalled", "clear_s": -0.5}, "clear_s must be ≥ 0"),
    ({"rule": "score_below", "threshold": 0.5, "margin": -0.1}, "margin must be ≥ 0"),
    ({"rule": "black", "for_s": True}, "for_s must be a finite number"),
    ({"rule": "frozen", "threshold": 0.5}, "threshold applies to score_below only"),
    ({"threshold": 0.5}, "needs the key 'rule'"),
    (["score_below"], "must be a mapping"),
])
def test_from_dict_errors_name_the_key(d, message):
    with pytest.raises(ValueError, match=message):
        AlertRule.from_dict(d)


def test_from_dict():
    assert AlertRule.from_dict({"rule": "score_below", "threshold": 1, "for_s": 10}) == \
        AlertRule("score_below", threshold=1.0, for_s=10.0)
    rule = AlertRule.from_dict({"rule": "stalled"})
    assert (rule.threshold, rule.for_s, rule.clear_s, rule.margin) == (None, 0.0, 0.0, 0.02)
