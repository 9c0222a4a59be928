"""The multi-stream monitor: windows of concurrent sources share backend calls and equal what
stream_windows gives each source alone; faulty sources (stalled, garbage, dropped and back, never
connecting) are tracked and reconnected while the others keep their pace; frozen and black spans
are found exactly and alert once; config files and qclip-monitor."""

import dataclasses
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict

import numpy as np
import pytest
from conftest import tiny_model
from live_sources import LiveTSServer, encode_ts, refused_url
from media import encode, hls_playlist, moving_frames

from qclip_engine.artifact import save_artifact
from qclip_engine.cli.monitor import main as monitor_main
from qclip_engine.engine import QualityEngine
from qclip_engine.monitor import AlertRule, Monitor, MonitorError, MonitorSettings, SourceSpec, load_config
from qclip_engine.stream import stream_windows

FPS = 25


@pytest.fixture(scope="module")
def model():
    return tiny_model(sampler="mixed", num_frames=2)  # QCLIPConfig's own sampler


@pytest.fixture(scope="module")
def engine(model):
    return QualityEngine(model=model, engine="torch", device="cpu", batch=8)


class SlowSpy:
    """The engine, recording which windows each backend call held; each call takes at least
    ``delay_s``, so windows that close while it runs wait for the next call together."""

    def __init__(self, engine, delay_s: float = 0.0):
        self._engine, self.delay_s, self.calls = engine, delay_s, []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def run_batch(self, videos):
        self.calls.append([v.input for v in videos])
        time.sleep(self.delay_s)
        return self._engine.run_batch(videos)


def collect(monitor, until, timeout_s: float) -> list[dict]:
    """Feed items until ``until(items)`` holds or ``timeout_s`` passes."""
    items, deadline = [], time.monotonic() + timeout_s
    with monitor.subscribe() as sub:
        monitor.start()
        while time.monotonic() < deadline and not until(items):
            item = sub.get(0.2)
            if item is not None:
                items.append(item)
    return items


def windows_of(items, source):
    return [i for i in items if i["type"] == "window" and i["source"] == source]


def states_of(items, source):
    return [i["state"] for i in items if i["type"] == "state" and i["source"] == source]


def test_concurrent_sources_share_backend_calls_and_equal_stream_windows_alone(engine, tmp_path):
    clips = [encode(tmp_path / f"clip{k}.mp4", moving_frames(int(2.6 * FPS), h=48, w=80, seed=k), fps=FPS)
             for k in range(5)]
    spy = SlowSpy(engine, delay_s=0.08)
    monitor = Monitor(spy, MonitorSettings(window_s=1.0, hop_s=0.5))
    for k, clip in enumerate(clips):  # files are played in real time and stop at their end
        monitor.add(SourceSpec(name=f"cam{k}", url=str(clip)))
    try:
        items = collect(monitor, lambda items: sum(i["type"] == "state" and i["state"] == "stopped" for i in items) == 5,
                        timeout_s=30)
    finally:
        monitor.stop()
    for k, clip in enumerate(clips):
        alone = list(stream_windows(engine, clip, window_s=1.0, hop_s=0.5))
        got = windows_of(items, f"cam{k}")
        assert [w["index"] for w in got] == [w.index for w in alone]
        for record, expected in zip(got, alone):
            assert (record["start_s"], record["end_s"], record["partial"]) == (round(expected.start_s, 6),
                                                                               round(expected.end_s, 6), expected.partial)
            assert record["frames"] == expected.frames and record["frame_times"] == expected.frame_times
            assert record["score"] == pytest.approx(expected.score, abs=1e-5)
            assert set(record["health"]) >= {"frozen", "black", "motion", "frames", "expected_frames", "dropped_frames"}
        assert states_of(items, f"cam{k}") == ["live", "stopped"]
    # Windows from at least four sources went through one backend call, and fewer calls than windows.
    sources_per_call = [len({name.split("#")[0] for name in call}) for call in spy.calls]
    assert max(sources_per_call) >= 4, spy.calls
    windows = sum(len(call) for call in spy.calls)
    assert monitor.batcher.calls == len(spy.calls) < windows == monitor.batcher.windows
    assert sum(size * n for size, n in monitor.batcher.sizes.items()) == windows
    batch_sizes = [w["timing_ms"]["batch_size"] for w in items if w["type"] == "window"]
    assert max(batch_sizes) >= 4


@pytest.fixture(scope="module")
def live_clip(tmp_path_factory):
    return encode_ts(tmp_path_factory.mktemp("live") / "live.ts", seconds=4, size=(160, 90), fps=FPS)


@pytest.fixture(scope="module")
def changing_clip(tmp_path_factory, live_clip):
    """2 s at 160×90, then 2 s at 320×240 whose clock starts again at 0: a resolution change and a
    clock restart mid-stream (and on every loop)."""
    second = encode_ts(tmp_path_factory.mktemp("live") / "second.ts", seconds=2, size=(320, 240), pattern="testsrc")
    first = encode_ts(tmp_path_factory.mktemp("live") / "first.ts", seconds=2, size=(160, 90), fps=FPS)
    joined = second.with_name("joined.ts")
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    return joined


def test_faulty_sources_are_tracked_and_reconnected_while_the_others_keep_time(engine, live_clip, changing_clip):
    settings = MonitorSettings(window_s=1.0, hop_s=0.5, stall_s=1.0, timeout_s=2.0, backoff_s=0.2, backoff_max_s=0.8,
                               fail_after=2)
    good, changing = LiveTSServer(live_clip), LiveTSServer(changing_clip)
    stalling, dropping = LiveTSServer(live_clip), LiveTSServer(live_clip)
    garbage = LiveTSServer(garbage=True, rate=40_000)
    monitor = Monitor(engine, settings, [AlertRule("stalled"), AlertRule("failed")])
    for k in range(3):
        monitor.add({"name": f"good{k}", "url": good.url_for(f"good{k}")})
    monitor.add({"name": "good3", "url": changing.url})  # changes resolution and restarts its clock every 2 s
    monitor.add({"name": "stalls", "url": stalling.url})
    monitor.add({"name": "drops", "url": dropping.url})
    monitor.add({"name": "garbage", "url": garbage.url})
    monitor.add({"name": "never", "url": refused_url()})
    events: dict[str, float] = {}

    def faults():
        time.sleep(3.0)
        events["stall"] = time.time()
        stalling.stall()
        dropping.drop()
        time.sleep(2.0)
        dropping.come_back()

    injector = threading.Thread(target=faults, daemon=True)
    try:
        with monitor.subscribe() as sub:
            monitor.start()
            injector.start()
            items, deadline = [], time.monotonic() + 11.0
            while time.monotonic() < deadline:
                item = sub.get(0.2)
                if item is not None:
                    items.append(item)
            snapshot = {s["name"]: s for s in monitor.snapshot()}
    finally:
        monitor.stop()
        for server in (good, changing, stalling, dropping, garbage):
            server.close()
    # The stalled source: stalled within stall_s of its last frame, then reconnecting once its read timed out.
    stalls = [i for i in items if i["type"] == "state" and i["source"] == "stalls"]
    assert [s["state"] for s in stalls][:2] == ["live", "stalled"], stalls
    stalled_at = next(s["time"] for s in stalls if s["state"] == "stalled")
    assert events["stall"] < stalled_at < events["stall"] + settings.stall_s + 1.0
    assert "reconnecting" in [s["state"] for s in stalls]
    alerts = [(i["source"], i["rule"], i["status"]) for i in items if i["type"] == "alert"]
    assert ("stalls", "stalled", "raised") in alerts and alerts.count(("stalls", "stalled", "raised")) == 1
    # The dropped source came back: reconnecting, then live again, and windows after it.
    drops = states_of(items, "drops")  # (stalled first when FFmpeg's own HTTP reconnect outlasts stall_s)
    assert drops[0] == "live" and "reconnecting" in drops and "live" in drops[drops.index("reconnecting"):], drops
    assert snapshot["drops"]["reconnects"] >= 1 and snapshot["drops"]["state"] == "live"
    back_at = [s["time"] for s in items if s["type"] == "state" and s["source"] == "drops" and s["state"] == "live"
               and s["previous"] in ("reconnecting", "failed")][0]
    assert any(w["time"] > back_at for w in windows_of(items, "drops"))
    # Garbage never goes live; the source that never connects fails after fail_after attempts, with its reason.
    assert "live" not in states_of(items, "garbage") and snapshot["garbage"]["state"] in ("reconnecting", "failed")
    assert snapshot["garbage"]["error"]["code"] in ("not_a_video", "decode_failed", "unreachable")
    assert states_of(items, "never")[:2] == ["reconnecting", "failed"]
    assert snapshot["never"]["error"]["code"] == "unreachable" and ("never", "failed", "raised") in alerts
    assert not windows_of(items, "garbage") and not windows_of(items, "never")
    assert [r["rule"] for r in snapshot["never"]["settings"]["rules"]] == ["stalled", "failed"]  # the rules in effect
    # The good sources kept their pace throughout: a window every hop, none late by more than a hop;
    # the one whose picture size and clock change every 2 s too, live from start to end.
    assert states_of(items, "good3") == ["live"]
    assert sum(any(w["code"] == "clock_jump" for w in x.get("warnings") or []) for x in windows_of(items, "good3")) >= 3
    for k in range(4):
        times = [w["time"] for w in windows_of(items, f"good{k}")]
        assert len(times) >= 14, times
        assert max(np.diff(times)) < settings.hop_s + 0.5, np.diff(times)
        assert all(w["timing_ms"]["latency"] < 1000 for w in windows_of(items, f"good{k}"))


def frozen_black_clip(path):
    """6 s at 25 fps: moving, frozen on frame 40 from 1.6 s to 3.6 s, moving, black from 4.4 s to the end."""
    frames = moving_frames(6 * FPS, h=64, w=64, seed=3)
    frames[40:90] = frames[40]
    frames[110:] = 0
    return encode(path, frames, fps=FPS, options={"crf": "18"})


def test_frozen_and_black_spans_are_found_and_alert_once(engine, tmp_path):
    clip = frozen_black_clip(tmp_path / "fb.mp4")
    settings = MonitorSettings(window_s=1.0, hop_s=0.5, freeze_s=1.0, black_s=1.0)
    monitor = Monitor(engine, settings, [AlertRule("frozen"), AlertRule("black")])
    monitor.add({"name": "fb", "url": str(clip), "realtime": False})
    try:
        items = collect(monitor, lambda items: "stopped" in states_of(items, "fb"), timeout_s=30)
    finally:
        monitor.stop()
    spans = [i for i in items if i["type"] == "health"]
    ends = {s["kind"]: s for s in spans if s["status"] == "end"}
    assert ends["frozen"]["start_s"] == pytest.approx(40 / FPS, abs=1 / FPS)
    assert ends["frozen"]["end_s"] == pytest.approx(90 / FPS, abs=1 / FPS)
    assert ends["black"]["start_s"] == pytest.approx(110 / FPS, abs=1 / FPS)
    assert ends["black"]["end_s"] == pytest.approx(150 / FPS, abs=1 / FPS)
    alerts = [(i["rule"], i["status"]) for i in items if i["type"] == "alert"]
    assert sorted(alerts) == [("black", "cleared"), ("black", "raised"), ("frozen", "cleared"), ("frozen", "raised")]
    frozen_windows = [w["index"] for w in windows_of(items, "fb") if w["health"]["frozen"]]
    assert frozen_windows and all(2 <= k <= 7 for k in frozen_windows), frozen_windows
    assert all(w["health"]["black"] for w in windows_of(items, "fb") if w["start_s"] >= 4.5)


def test_sources_are_added_and_removed_at_run_time_with_clear_errors(engine, tmp_path):
    clip = encode(tmp_path / "c.mp4", moving_frames(3 * FPS, h=48, w=64), fps=FPS)
    monitor = Monitor(engine, MonitorSettings(window_s=1.0, hop_s=0.5, max_sources=2))
    with monitor:
        monitor.add({"name": "a", "url": str(clip), "on_end": "reconnect"})
        with pytest.raises(MonitorError) as dup:
            monitor.add({"name": "a", "url": str(clip)})
        assert (dup.value.code, dup.value.status) == ("duplicate_name", 409)
        for bad in ({"name": "b", "url": "ht!tp://x"}, {"name": "b", "url": "gopher://host/x"}, {"name": "b b", "url": "x"},
                    {"name": "b"}, {"name": "b", "url": "udp://"}, {"name": "b", "url": "x", "color": 1}, "a string",
                    {"name": "b", "url": "udp://h:1", "alerts": [{"rule": "frozen"}, {"rule": "frozen"}]},
                    {"name": "b", "url": "udp://h:1", "alerts": [{"rule": "score_below"}]}):
            with pytest.raises(MonitorError) as err:
                monitor.add(bad)
            assert (err.value.code, err.value.status) == ("invalid_source", 422), bad
        with pytest.raises(MonitorError) as outside:
            monitor.add({"name": "b", "url": str(clip)}, from_api=True)  # no allowed folder
        assert (outside.value.code, outside.value.status) == ("file_not_allowed", 403)
        assert str(tmp_path) not in outside.value.message
        with pytest.raises(MonitorError) as option:  # a client may not say which protocols FFmpeg may use
            monitor.add({"name": "b", "url": "http://h/x.m3u8", "options": {"protocol_whitelist": "file,http"}},
                        from_api=True)
        assert option.value.code == "invalid_source" and "protocol_whitelist" in option.value.message
        monitor.add({"name": "b", "url": str(clip)})
        with pytest.raises(MonitorError) as full:
            monitor.add({"name": "c", "url": str(clip)})
        assert full.value.code == "too_many_sources"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (monitor.snapshot_one("a")["windows"] >= 2):
            time.sleep(0.1)
        assert monitor.snapshot_one("a")["history"]
        monitor.remove("a")
        assert monitor.source_names() == ["b"]
        # A Python source of frames (timed tuples), e.g. a pipeline's own decoder: windowed the same way.
        frames = moving_frames(2 * FPS, h=48, w=64, seed=5)
        monitor.settings = dataclasses.replace(monitor.settings, max_sources=3)
        monitor.add(SourceSpec(name="gen", url="frames:", frames=lambda: ((i / FPS, f) for i, f in enumerate(frames)),
                               on_end="stop"))
        while time.monotonic() < deadline + 10 and monitor.snapshot_one("gen")["state"] != "stopped":
            time.sleep(0.1)
        assert monitor.snapshot_one("gen")["windows"] == len(list(stream_windows(engine, iter(frames), window_s=1.0,
                                                                                 hop_s=0.5, fps=FPS)))
        with pytest.raises(MonitorError) as unknown:
            monitor.remove("a")
        assert (unknown.value.code, unknown.value.status) == ("unknown_source", 404)


def test_a_client_may_add_only_single_file_formats_and_never_sees_a_password(engine, tmp_path):
    clip = encode(tmp_path / "c.mp4", moving_frames(2 * FPS, h=48, w=64), fps=FPS)
    playlist = hls_playlist(tmp_path / "list.m3u8", clip)  # a playlist inside the allowed folder
    monitor = Monitor(engine, MonitorSettings(window_s=1.0, hop_s=0.5, backoff_s=0.2, fail_after=1,
                                              allow_dirs=(str(tmp_path),)))
    with monitor:
        monitor.add({"name": "list", "url": str(playlist)}, from_api=True)
        monitor.add({"name": "cam", "url": "rtsp://viewer:s3cret@127.0.0.1:1/live"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and monitor.snapshot_one("list")["state"] != "failed":
            time.sleep(0.1)
        listed = {s["name"]: s for s in monitor.snapshot()}
    assert listed["list"]["state"] == "failed" and listed["list"]["error"]["code"] == "format_not_allowed"
    assert listed["list"]["windows"] == 0
    assert listed["cam"]["url"] == "rtsp://viewer:***@127.0.0.1:1/live" and "s3cret" not in json.dumps(listed)


def test_config_files_and_the_cli(model, tmp_path, capsys):
    clip = encode(tmp_path / "c.mp4", moving_frames(3 * FPS, h=48, w=64), fps=FPS)
    artifact = save_artifact(model, tmp_path / "artifact")
    config = tmp_path / "monitor.yaml"
    config.write_text(f"settings: {{window_s: 1.0, hop_s: 0.5}}\nalerts:\n  - {{rule: score_below, threshold: 2.0}}\n"
                      f"sources:\n  - {{name: cam, url: '{clip}', realtime: false}}\n")
    settings, rules, sources = load_config(config)
    assert (settings.window_s, rules[0].threshold, sources[0].name) == (1.0, 2.0, "cam")
    out = tmp_path / "records.jsonl"
    done = subprocess.run([sys.executable, "-m", "qclip_engine.cli.monitor", str(config), "--artifact", str(artifact),
                           "--engine", "torch", "--precision", "fp32", "--device", "cpu", "--duration-s", "5",
                           "--port", "0", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = defaultdict(int)
    for line in lines:
        kinds[line["type"]] += 1
    assert kinds["window"] >= 4 and kinds["source_added"] == 1
    assert [line["state"] for line in lines if line["type"] == "state"] == ["live", "stopped"]
    # raised once (not once per window), cleared once when the file ended and its source stopped
    assert [(a["rule"], a["status"]) for a in lines if a["type"] == "alert"] == [("score_below", "raised"),
                                                                                  ("score_below", "cleared")]
    for bad, message in (("sources: [{name: x}]", "invalid_source"), ("alerts: [{rule: nope}]", "invalid_config"),
                         ("alerts: [{rule: black}, {rule: black}]", "invalid_config"),
                         ("settings: {hop_s: -1}", "invalid_settings"), ("settings: {black_luma: '0.1'}", "invalid_settings"),
                         ("settings: {threshold: high}", "invalid_settings"), ("settings: {allow_dirs: 5}", "invalid_settings"),
                         ("{unclosed", "invalid_config")):
        config.write_text(bad)
        assert monitor_main([str(config)]) == 2  # one line, before any model is loaded
        said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("qclip-monitor:")]
        assert len(said) == 1 and message in said[0], said


def test_the_service_and_the_monitor_share_one_model_and_batcher(model, tmp_path):
    from fastapi.testclient import TestClient

    from qclip_engine.monitor.shared import attach_monitor
    from qclip_engine.serve.app import SCORE_PATH, create_app
    from qclip_engine.serve.settings import ServeSettings

    clip = encode(tmp_path / "c.mp4", moving_frames(3 * FPS, h=48, w=64), fps=FPS)
    artifact = save_artifact(model, tmp_path / "artifact")
    app = create_app(ServeSettings(artifact, engine="torch", device="cpu", precision="fp32", batch=4,
                                   allow_dirs=(tmp_path,)))
    monitor = attach_monitor(app, MonitorSettings(window_s=1.0, hop_s=0.5, allow_dirs=(str(tmp_path),)), [], [], batch=4)
    with TestClient(app) as client, monitor.subscribe() as sub:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        added = client.post("/v1/sources", json={"name": "cam", "url": str(clip), "on_end": "reconnect"})
        assert added.status_code == 201, added.text
        assert client.post("/v1/sources", json={"name": "cam", "url": str(clip)}).json()["error"]["code"] == "duplicate_name"
        windows = []
        while len(windows) < 3 and time.monotonic() < deadline:
            item = sub.get(0.2)
            if item is not None and item["type"] == "window":
                windows.append(item)
        upload = client.post(SCORE_PATH, json={"path": str(clip)})
        metrics = client.get("/metrics").text
    assert upload.status_code == 200 and len(windows) == 3 and all("score" in w for w in windows)
    assert monitor.engine is app.state.service.engine  # one model
    # One model thread: the service's counts the windows with the upload, its /metrics carries the monitor's series.
    scored = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("qclip_videos_scored_total"))
    assert scored >= monitor.batcher.windows + 1 >= 4
    assert 'qclip_monitor_windows_scored_total{source="cam"}' in metrics
