"""The monitor's HTTP API over a real Monitor: a source added at run time streams its records on the
Server-Sent Events feed, a removed one is gone (from the list and the metrics), /metrics has the
per-source series and the batch histogram, and every bad request is answered with the error body
(``{"error": {"code", "message"}}``), never a 500, never a server path. And MonitorMetrics alone:
each series of a source, and all of them gone when it is removed."""

import json
import math
import time

import pytest
from fastapi.testclient import TestClient
from media import encode, moving_frames
from conftest import tiny_model

from qclip_engine.engine import QualityEngine
from qclip_engine.monitor import Monitor, MonitorSettings
from qclip_engine.monitor.http import create_monitor_app
from qclip_engine.monitor.metrics import MonitorMetrics

FPS = 25
DEADLINE_S = 20.0  # a record is due ~1 s after a source starts; this only bounds a broken run


@pytest.fixture(scope="module")
def engine():
    return QualityEngine(model=tiny_model(sampler="mixed", num_frames=2), engine="torch", device="cpu", batch=4)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The allowed folder with a 3 s clip (played in real time by the monitor), and a folder outside it."""
    root = tmp_path_factory.mktemp("monitor_http")
    allowed, elsewhere = root / "allowed", root / "elsewhere"
    allowed.mkdir()
    elsewhere.mkdir()
    clip = encode(allowed / "clip.mp4", moving_frames(3 * FPS, h=64, w=64), fps=FPS)
    outside = encode(elsewhere / "outside.mp4", moving_frames(FPS, h=64, w=64), fps=FPS)
    return {"root": root, "allowed": allowed, "clip": str(clip), "outside": str(outside)}


@pytest.fixture(scope="module")
def monitor(engine, media):
    settings = MonitorSettings(window_s=1.0, hop_s=0.5, allow_dirs=(str(media["allowed"]),))
    mon = Monitor(engine, settings).start()
    yield mon
    mon.stop()


@pytest.fixture(scope="module")
def client(monitor):
    with TestClient(create_monitor_app(monitor, keepalive_s=0.5), raise_server_exceptions=False) as c:
        yield c


def sse_events(lines, until, deadline_s=DEADLINE_S):
    """SSE events parsed from ``lines`` (``{"event", "id", "data"}``) and comments, read until
    ``until(events, comments)`` holds."""
    events, block, comments = [], {}, []
    deadline = time.monotonic() + deadline_s
    for line in lines:
        if line.startswith(":"):
            comments.append(line)
        elif line:
            field, _, value = line.partition(": ")
            block[field] = value
        elif block:
            events.append(block | {"data": json.loads(block["data"])})
            block = {}
        if until(events, comments):
            return events, comments
        assert time.monotonic() < deadline, f"the feed gave only {[e['event'] for e in events]}"
    raise AssertionError("the feed ended")


def windows_of(events, name):
    return [e for e in events if e["event"] == "window" and e["data"]["source"] == name]


@pytest.fixture(scope="module")
def live_run(client, monitor, media):
    """cam1 added through the API while a client reads the feed; the feed until cam1's 2nd window."""
    subscriptions = []
    subscribe = monitor.subscribe
    monitor.subscribe = lambda *a, **k: subscriptions.append(subscribe(*a, **k)) or subscriptions[-1]
    try:
        with client.stream("GET", "/v1/events") as feed:
            assert feed.status_code == 200
            added = client.post("/v1/sources", json={"name": "cam1", "url": media["clip"]})
            events, comments = sse_events(feed.iter_lines(), lambda ev, _: len(windows_of(ev, "cam1")) >= 2)
            headers = feed.headers
    finally:
        del monitor.subscribe
    deadline = time.monotonic() + 5
    while not subscriptions[0].closed:  # the client went: its subscription is closed
        assert time.monotonic() < deadline, "the feed's subscription outlived its client"
        time.sleep(0.05)
    return {"added": added, "events": events, "comments": comments, "headers": headers}


def test_a_source_added_at_run_time_streams_its_records(live_run, media):
    added = live_run["added"]
    assert added.status_code == 201
    source = added.json()["source"]
    assert source["name"] == "cam1" and source["url"] == media["clip"]  # the url as the client gave it
    assert source["state"] in ("connecting", "live") and "history" in source
    events = live_run["events"]
    kinds = [e["event"] for e in events if e["data"]["source"] == "cam1"]
    assert kinds[0] == "source_added" and "window" in kinds
    for e in events:  # event: <type>, id: <the feed's running id>, data: the item as JSON
        assert e["event"] == e["data"]["type"] and int(e["id"]) == e["data"]["id"]
    assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
    record = windows_of(events, "cam1")[0]["data"]
    assert isinstance(record["score"], float) and record["end_s"] - record["start_s"] == pytest.approx(1.0)
    assert {"frozen", "black", "dropped_frames"} <= set(record["health"])
    headers = live_run["headers"]
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"


def test_sources_list_and_one_source(client, live_run):
    names = [s["name"] for s in client.get("/v1/sources").json()["sources"]]
    assert "cam1" in names
    one = client.get("/v1/sources/cam1").json()
    assert one["name"] == "cam1" and one["windows"] >= 2 and one["history"]
    assert client.get("/healthz").json() == {"status": "alive"}


def test_metrics_show_the_source_and_the_batches(client, live_run):
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    scored = [line for line in text.splitlines()
              if line.startswith('qclip_monitor_windows_scored_total{source="cam1"}')]
    assert scored and float(scored[0].split()[-1]) >= 2
    assert 'qclip_monitor_last_score{source="cam1"}' in text
    assert 'qclip_monitor_source_state{source="cam1",state="live"}' in text
    assert 'qclip_monitor_batch_size_bucket{le="4.0"}' in text and "qclip_monitor_backend_calls_total" in text
    assert 'qclip_monitor_window_latency_seconds_count{source="cam1"}' in text


def test_a_removed_source_is_gone(client, media):
    assert client.post("/v1/sources", json={"name": "gone", "url": media["clip"]}).status_code == 201
    assert 'source="gone"' in client.get("/metrics").text
    answer = client.delete("/v1/sources/gone")
    assert answer.status_code == 200 and answer.json() == {"removed": "gone"}
    assert "gone" not in [s["name"] for s in client.get("/v1/sources").json()["sources"]]
    assert client.get("/v1/sources/gone").json()["error"]["code"] == "unknown_source"
    assert 'source="gone"' not in client.get("/metrics").text


def test_silence(client, media):
    assert client.post("/v1/sources", json={"name": "quiet", "url": media["clip"]}).status_code == 201
    try:
        answer = client.post("/v1/sources/quiet/silence", json={"seconds": 60})
        assert answer.status_code == 200
        assert answer.json()["silenced_until"] == pytest.approx(time.time() + 60, abs=5)
        assert client.get("/v1/sources/quiet").json()["silenced_until"] == answer.json()["silenced_until"]
    finally:
        client.delete("/v1/sources/quiet")


BAD = [
    ("GET", "/v1/sources/nope", {}, 404, "unknown_source"),
    ("DELETE", "/v1/sources/nope", {}, 404, "unknown_source"),
    ("POST", "/v1/sources/nope/silence", {"json": {"seconds": 5}}, 404, "unknown_source"),
    ("GET", "/v1/events?source=nope", {}, 404, "unknown_source"),
    ("POST", "/v1/sources", {"json": {"name": "x1", "url": "ht!tp://x"}}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"json": {"name": "x1", "url": ""}}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"json": {"name": "x1", "url": "rtsp://"}}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"json": {"name": "x1", "url": "gopher://h/x"}}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"json": {"name": "no spaces!", "url": "udp://127.0.0.1:9"}}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"json": {"name": "x1"}}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"json": {"url": "udp://127.0.0.1:9"}}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"json": {"name": 7, "url": ["udp://127.0.0.1:9"]}}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"json": {"name": "x1", "url": "udp://127.0.0.1:9", "colour": 1}}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"json": {"name": "x1", "url": "udp://127.0.0.1:9", "realtime": "yes"}}, 422,
     "invalid_source"),
    ("POST", "/v1/sources", {"json": {"name": "x1", "url": "udp://127.0.0.1:9", "options": [1]}}, 422,
     "invalid_source"),
    ("POST", "/v1/sources", {"json": {"name": "x1", "url": "udp://127.0.0.1:9", "alerts": [1, "x"]}}, 422,
     "invalid_source"),
    ("POST", "/v1/sources", {"json": {"name": "x1", "url": "udp://127.0.0.1:9", "on_end": ["stop"]}}, 422,
     "invalid_source"),
    ("POST", "/v1/sources", {"json": [{"name": "x1", "url": "udp://127.0.0.1:9"}]}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"json": "udp://127.0.0.1:9"}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"content": b"null"}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"content": b'{"name": "x1", "url": '}, 400, "invalid_json"),
    ("POST", "/v1/sources", {"content": b""}, 400, "invalid_json"),
    ("POST", "/v1/sources", {"content": b'{"name": "x1", "url": "udp://h:9", "options": {"a": NaN}}'}, 400,
     "invalid_json"),
    ("POST", "/v1/sources", {"content": b"\xff\xfe{"}, 400, "invalid_json"),
    ("POST", "/v1/sources", {"content": b"[" * 50_000}, 400, "invalid_json"),
    ("POST", "/v1/sources", {"content": b" " * 70_000}, 413, "body_too_large"),
    # A lone surrogate escape: refused, never a 500 (a path cannot hold one; an answer could not be encoded).
    ("POST", "/v1/sources", {"content": b'{"name": "x1", "url": "\\ud800.mp4"}'}, 422, "invalid_source"),
    ("POST", "/v1/sources", {"content": b'{"name": "x1", "url": "udp://h\\udc00:9"}'}, 422, "invalid_source"),
    ("POST", "/v1/sources/cam1/silence", {"json": {"seconds": 0}}, 422, "invalid_silence"),
    ("POST", "/v1/sources/cam1/silence", {"json": {"seconds": "60"}}, 422, "invalid_silence"),
    ("POST", "/v1/sources/cam1/silence", {"json": {"seconds": 1e9}}, 422, "invalid_silence"),
    ("POST", "/v1/sources/cam1/silence", {"json": [60]}, 422, "invalid_silence"),
    ("POST", "/v1/sources/cam1/silence", {"content": b"{"}, 400, "invalid_json"),
    ("PUT", "/v1/sources", {}, 405, "method_not_allowed"),
    ("GET", "/v1/nothing", {}, 404, "not_found"),
]


@pytest.mark.parametrize("method,path,kwargs,status,code", BAD, ids=[f"{b[0]} {b[1]} {b[4]}" for b in BAD])
def test_bad_requests_get_the_error_body(client, live_run, media, method, path, kwargs, status, code):
    answer = client.request(method, path, **kwargs)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and set(answer.json()["error"]) == {"code", "message"}
    assert answer.json()["error"]["code"] == code
    assert str(media["root"]) not in answer.text


def test_a_duplicate_name_and_a_file_outside_the_allowed_folders(client, live_run, media):
    answer = client.post("/v1/sources", json={"name": "cam1", "url": media["clip"]})
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "duplicate_name"
    sneaky = str(media["allowed"] / ".." / "elsewhere" / "outside.mp4")
    for url in (media["outside"], "file://" + media["outside"], sneaky):
        answer = client.post("/v1/sources", json={"name": "outside", "url": url})
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "file_not_allowed"
        assert str(media["root"]) not in answer.text  # the refusal names no server folder
    assert "outside" not in [s["name"] for s in client.get("/v1/sources").json()["sources"]]


def test_a_quiet_feed_gets_keep_alive_comments_and_ends_with_the_monitor(engine, media):
    mon = Monitor(engine, MonitorSettings(window_s=1.0, hop_s=0.5))  # not started: nothing is published
    mon.add({"name": "idle", "url": "udp://127.0.0.1:9"})
    with TestClient(create_monitor_app(mon, keepalive_s=0.2)) as c, c.stream("GET", "/v1/events?source=idle") as feed:
        lines = feed.iter_lines()
        events, comments = sse_events(lines, lambda ev, com: len(com) >= 2, deadline_s=5)
        assert events == [] and comments == [": keep-alive"] * 2
        mon.stop()  # the feed closes: the stream ends
        rest = list(lines)
    # What came after: keep-alives, and the state event of the idle source's stop.
    assert all(line.startswith((":", "event:", "id:", "data:")) or not line for line in rest)


def test_metrics_of_a_source_and_their_removal():
    metrics = MonitorMetrics(6)
    metrics.on_window("a", {"score": 0.5, "mos": 3.0, "timing_ms": {"latency": 250.0}, "health": {"dropped_frames": 2}})
    metrics.on_window("a", {"error": {"code": "decode_failed", "message": "m"}, "timing_ms": {},
                            "health": {"dropped_frames": 1}})
    metrics.on_window("b", {"score": float("nan"), "timing_ms": {"latency": float("nan")}})  # counted, not shown
    metrics.on_state("a", "stalled")
    metrics.on_alert("a", "frozen", True)
    metrics.on_alert("a", "frozen", False)
    metrics.on_alert("a", "black", True)
    metrics.on_reconnect("a")
    metrics.on_batch(3, 0.02)
    metrics.set_queue_depth_function(lambda: 1 / 0)  # a failing reader: NaN, never a failed scrape
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in metrics.registry.collect() for s in family.samples}

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("qclip_monitor_last_score", source="a") == 0.5 and value("qclip_monitor_last_mos", source="a") == 3.0
    assert value("qclip_monitor_windows_scored_total", source="a") == 1
    assert value("qclip_monitor_window_errors_total", source="a", code="decode_failed") == 1
    assert value("qclip_monitor_dropped_frames_total", source="a") == 3
    assert value("qclip_monitor_window_latency_seconds_sum", source="a") == pytest.approx(0.25)
    assert [value("qclip_monitor_source_state", source="a", state=s) for s in
            ("connecting", "live", "stalled", "reconnecting", "failed", "stopped")] == [0, 0, 1, 0, 0, 0]
    assert value("qclip_monitor_alerts_raised_total", source="a", rule="frozen") == 1
    assert value("qclip_monitor_alerts_active", source="a", rule="frozen") == 0
    assert value("qclip_monitor_alerts_active", source="a", rule="black") == 1
    assert value("qclip_monitor_reconnects_total", source="a") == 1
    assert value("qclip_monitor_windows_scored_total", source="b") == 1
    assert value("qclip_monitor_last_score", source="b") is None
    assert value("qclip_monitor_window_latency_seconds_count", source="b") is None
    edges = sorted(float(dict(labels)["le"]) for (name, labels) in samples if name == "qclip_monitor_batch_size_bucket")
    assert edges == [1, 2, 4, 6, float("inf")]  # powers of two up to the batch, and the batch
    assert value("qclip_monitor_backend_calls_total") == 1 and value("qclip_monitor_batch_size_sum") == 3
    assert math.isnan(value("qclip_monitor_windows_queued"))
    metrics.remove_source("a")
    metrics.remove_source("never-seen")
    text = metrics.exposition().decode()
    assert 'source="a"' not in text and 'source="b"' in text
