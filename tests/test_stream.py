"""Streaming windows: they cover the media; file, frames and URL give the same scores; nothing is
lost on the way to the backend; alerts; bad media come back as records."""

import functools
import http.server
import subprocess
import threading
from fractions import Fraction

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from media import encode, moving_frames
from conftest import tiny_model

from qclip_engine.engine import QualityEngine, VideoResult
from qclip_engine.cli.timeline import plot_timeline
from qclip_engine.stream import WindowResult, stream_windows
from qclip_engine.video.resize import resize_rgb
from qclip_engine.video import decode

FPS = 25
SECONDS = 6
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(scope="module")
def model():
    return tiny_model(sampler="mixed", num_frames=2)  # QCLIPConfig's own sampler


@pytest.fixture(scope="module")
def engine(model):
    return QualityEngine(model=model, engine="torch", device="cpu", batch=4)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """6 s at 25 fps, GOP 12 with B-frames; the second half is a different (noisier) scene."""
    frames = moving_frames(SECONDS * FPS, h=72, w=96)
    rng = np.random.default_rng(1)
    half = len(frames) // 2
    frames[half:] = np.clip(frames[half:].astype(int) + rng.integers(-90, 90, frames[half:].shape), 0, 255)
    return encode(tmp_path_factory.mktemp("stream") / "clip.mp4", frames, fps=FPS, options={"bf": "2", "g": "12"})


@pytest.fixture(scope="module")
def file_windows(engine, clip):
    return list(stream_windows(engine, clip, window_s=2.0, hop_s=1.0))


def model_score(model, frames):
    with torch.no_grad():
        return model(model.normalize(torch.from_numpy(np.ascontiguousarray(frames))[None])).item()


def test_windows_cover_the_file(file_windows, clip):
    info = decode.probe(clip)
    assert all(w.ok for w in file_windows)
    assert {w.to_record()["backend"] for w in file_windows} == {"torch-fp32"}  # what scored each window
    starts = [w.start_s for w in file_windows]
    assert starts[0] == 0.0
    np.testing.assert_allclose(np.diff(starts), 1.0)
    assert all(w.end_s - w.start_s == pytest.approx(2.0) for w in file_windows)
    assert file_windows[-1].end_s >= info.duration - 1 / FPS
    assert [w.index for w in file_windows] == list(range(len(file_windows)))
    # 6 s, 2 s windows every 1 s: [0,2) … [4,6); the last ends exactly at the end (not partial).
    assert len(file_windows) == 5 and not any(w.partial for w in file_windows)
    assert all(w.frames_in_window == 2 * FPS for w in file_windows)
    for w in file_windows:  # the frames the model saw lie inside their window
        assert all(w.start_s <= t < w.end_s for t in w.frame_times)
        assert len(w.frames) == 2


def test_a_tail_shorter_than_a_window_is_emitted_partial(engine, tmp_path):
    path = encode(tmp_path / "tail.mp4", moving_frames(int(6.5 * FPS), h=64, w=64), fps=FPS)
    windows = list(stream_windows(engine, path, window_s=2.0, hop_s=1.0))
    assert [(w.start_s, w.end_s) for w in windows][-2:] == [(4.0, 6.0), (5.0, 7.0)]
    assert windows[-1].partial and not any(w.partial for w in windows[:-1])
    assert windows[-1].frames_in_window == int(1.5 * FPS)
    # hop > window: windows with gaps between them, the last one still closes the media.
    sparse = list(stream_windows(engine, path, window_s=0.5, hop_s=2.0))
    assert [w.start_s for w in sparse] == [0.0, 2.0, 4.0, 6.0]
    assert sparse[-1].partial and sparse[-1].frames_in_window == int(0.5 * FPS)


def test_frame_iterator_gives_the_file_scores(engine, clip, file_windows):
    _, table = decode.scan(clip)
    frames = decode.decode_frames(clip, engine.image_size)
    timed = ((float(t), f) for t, f in zip(table.times(), frames))  # a generator: a "live" source
    from_frames = list(stream_windows(engine, timed, window_s=2.0, hop_s=1.0))
    assert [(w.index, w.start_s, w.end_s, w.frames) for w in from_frames] == [
        (w.index, w.start_s, w.end_s, w.frames) for w in file_windows
    ]
    np.testing.assert_allclose([w.score for w in from_frames], [w.score for w in file_windows], atol=1e-5)
    # Plain arrays are timed index / fps: the same, for a constant-rate file.
    plain = list(stream_windows(engine, list(frames), window_s=2.0, hop_s=1.0, fps=FPS))
    np.testing.assert_allclose([w.score for w in plain], [w.score for w in file_windows], atol=1e-5)


def test_window_scores_equal_the_model_on_the_sampled_frames(model, engine, clip, file_windows):
    frames = decode.decode_frames(clip, engine.image_size)
    _, table = decode.scan(clip)
    scores = []
    for w in file_windows:
        np.testing.assert_allclose(w.frame_times, table.times(w.frames), atol=1e-6)
        scores.append(model_score(model, frames[w.frames]))
    np.testing.assert_allclose([w.score for w in file_windows], scores, atol=1e-5)
    # and the sampler chose them as it would from the window's frames alone
    for w in file_windows:
        inside = np.flatnonzero((table.times() >= w.start_s) & (table.times() < w.end_s))
        assert w.frames == inside[engine.sample_frames(frames[inside]).indices].tolist()


def test_threshold_flags_exactly_the_windows_below_it(engine, clip, file_windows):
    scores = np.array([w.score for w in file_windows])
    assert np.ptp(scores) > 0
    threshold = float(np.median(scores))
    flagged = list(stream_windows(engine, clip, window_s=2.0, hop_s=1.0, threshold=threshold))
    assert [w.alert for w in flagged] == [bool(s < threshold) for s in scores]
    assert not any(w.alert for w in file_windows)  # no threshold, no alert
    record = flagged[0].to_record()
    assert {"index", "start_s", "end_s", "score", "levels", "frames_in_window", "partial", "alert"} <= set(record)


def test_resized_frames_and_vfr_timing(engine, tmp_path):
    # Frames larger than the model size are resized by swscale (the decoder's interpolation).
    big = moving_frames(10, h=120, w=160)
    windows = list(stream_windows(engine, list(big), window_s=0.2, hop_s=0.2, fps=25))
    resized = np.stack([resize_rgb(f, engine.image_size) for f in big])
    assert resized.shape == (10, 64, 64, 3)
    scored = [model_score(engine.model, resized[w.frames]) for w in windows]
    np.testing.assert_allclose([w.score for w in windows], scored, atol=1e-5)
    # VFR: 10 fps for 2 s, then 50 fps for 2 s — windows follow timestamps, not frame counts.
    tb = Fraction(1, 1000)
    pts = [i * 100 for i in range(20)] + [2000 + i * 20 for i in range(100)]
    path = encode(tmp_path / "vfr.mkv", moving_frames(len(pts), h=64, w=64), pts=pts, time_base=tb)
    vfr = list(stream_windows(engine, path, window_s=1.0, hop_s=1.0))
    assert [w.frames_in_window for w in vfr] == [10, 10, 50, 50]


def test_window_memory_is_capped(engine):
    frames = moving_frames(200, h=64, w=64)  # 200 fps for 1 s
    windows = list(stream_windows(engine, list(frames), window_s=0.5, hop_s=0.5, fps=200, max_window_frames=20))
    assert [w.frames_in_window for w in windows] == [20, 20]
    assert all(np.all(np.diff(w.frame_times) > 0.02) for w in windows)  # spread over time


def test_corrupt_and_truncated_files_give_records_not_exceptions(engine, clip, tmp_path):
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"  # moov at the end: the index is gone
    cut.write_bytes(data[: len(data) // 2])
    records = list(stream_windows(engine, cut))
    assert len(records) == 1 and records[0].error["code"] == "truncated"
    # (Index first, cut in the middle: test_a_stream_cut_short_warns_on_its_last_window_or_fails_under_strict.)
    rng = np.random.default_rng(0)
    for j in range(3):  # flipped bytes: whatever happens, records come back and nothing raises
        buf = bytearray(clip.read_bytes())
        for pos in rng.integers(64, len(buf), size=40):
            buf[pos] ^= 0xFF
        (tmp_path / f"flip{j}.mp4").write_bytes(bytes(buf))
        records = list(stream_windows(engine, tmp_path / f"flip{j}.mp4"))
        assert records and all(isinstance(r, WindowResult) for r in records)
        assert all(r.error is None for r in records[:-1])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    assert [r.error["code"] for r in stream_windows(engine, junk)] == ["not_a_video"]


@pytest.fixture(scope="module")
def strict_engine(model):
    return QualityEngine(model=model, engine="torch", device="cpu", batch=4, strict=True)


def _cut(clip, path, keep: float, *args: str):
    """``clip`` remuxed to ``path`` (``args``: muxer options), then cut to ``keep`` of its bytes."""
    subprocess.run([FFMPEG, "-v", "error", "-i", str(clip), "-c", "copy", *args, str(path)], check=True)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_a_stream_cut_short_warns_on_its_last_window_or_fails_under_strict(engine, strict_engine, clip, file_windows,
                                                                           tmp_path, container):
    # MP4 with its index first (it declares 150 frames), Matroska (it declares 6 s): both cut in the middle.
    args = ("-movflags", "+faststart") if container == "mp4" else ()
    cut = _cut(clip, tmp_path / f"cut.{container}", 0.6, *args)
    declared = "declared frames" if container == "mp4" else "of a declared 6.000 s"
    windows = list(stream_windows(engine, cut, window_s=2.0, hop_s=1.0))
    assert all(w.ok for w in windows) and [w.index for w in windows] == list(range(len(windows)))
    assert 2 <= len(windows) < len(file_windows)
    # The windows up to the cut are scored as the whole file's; the last one says the source was cut.
    np.testing.assert_allclose([w.score for w in windows[:-1]], [w.score for w in file_windows[:len(windows) - 1]],
                               atol=1e-5)
    assert [w.warnings for w in windows[:-1]] == [None] * (len(windows) - 1)
    [warning] = windows[-1].to_record()["warnings"]
    assert warning["code"] == "truncated" and declared in warning["message"], warning
    # Strict: the windows closed before the end are scored, the open ones give way to the error.
    strict = list(stream_windows(strict_engine, cut, window_s=2.0, hop_s=1.0))
    assert all(w.ok for w in strict[:-1]) and [w.index for w in strict] == list(range(len(strict)))
    np.testing.assert_allclose([w.score for w in strict[:-1]], [w.score for w in windows[:len(strict) - 1]], atol=1e-5)
    assert strict[-1].error["code"] == "truncated" and declared in strict[-1].error["message"]
    assert strict[-1].index <= windows[-1].index


def test_a_looping_mpegts_keeps_windowing_and_warns_of_its_clock(engine, tmp_path):
    # An MPEG-TS of 1 s concatenated three times: its timestamps run 1.48 … 2.44 s three times over.
    one = encode(tmp_path / "one.mp4", moving_frames(FPS, h=64, w=64), fps=FPS)
    ts = tmp_path / "one.ts"
    subprocess.run([FFMPEG, "-v", "error", "-i", str(one), "-c", "copy", "-f", "mpegts", str(ts)], check=True)
    looped = tmp_path / "loop.ts"
    looped.write_bytes(ts.read_bytes() * 3)
    windows = list(stream_windows(engine, looped, window_s=1.0, hop_s=1.0))
    assert [(w.start_s, w.frames_in_window) for w in windows] == [(0.0, FPS), (1.0, FPS), (2.0, FPS)]
    assert [w.frames for w in windows] == [[n + k * FPS for n in windows[0].frames] for k in range(3)]
    np.testing.assert_allclose([w.score for w in windows], windows[0].score, atol=1e-5)  # the same second, thrice
    assert windows[0].warnings is None
    assert [[x["code"] for x in w.to_record()["warnings"]] for w in windows[1:]] == [["clock_jump"], ["clock_jump"]]
    # A live iterator looping a 2 s clip (6 times) under 2 s windows: every window comes (one did, before).
    frame = moving_frames(1, h=64, w=64)[0]
    live = list(stream_windows(engine, ((1.4 + (i % 50) / FPS, frame) for i in range(6 * 50)), window_s=2.0, hop_s=1.0))
    assert [(w.start_s, w.frames_in_window) for w in live] == [(float(k), 2 * FPS) for k in range(11)]
    assert sum(bool(w.warnings) for w in live) == 5  # one jump a loop


def test_a_non_finite_window_is_its_own_error_record(engine, clip, file_windows):
    # The engine answers a window whose model output is not finite with an error result
    # (VideoResult.error, score None): that window is an error record, the others go on.
    class NonFiniteSecondWindow:
        def __init__(self, engine):
            self.engine = engine

        def __getattr__(self, name):
            return getattr(self.engine, name)

        def run_batch(self, videos):
            results = self.engine.run_batch(videos)
            return [VideoResult(input=r.input, error={"code": "non_finite_output", "message": "score is nan"},
                                timing_ms=r.timing_ms) if r.input.endswith("#1") else r for r in results]

    threshold = max(w.score for w in file_windows) + 1  # every scored window alerts
    windows = list(stream_windows(NonFiniteSecondWindow(engine), clip, window_s=2.0, hop_s=1.0, threshold=threshold))
    assert [w.index for w in windows] == [w.index for w in file_windows]
    assert [w.ok for w in windows] == [w.index != 1 for w in windows]
    record = windows[1].to_record()
    assert record["error"]["code"] == "non_finite_output" and "score" not in record and not record["alert"]
    assert all(w.alert for w in windows if w.ok)
    np.testing.assert_allclose([w.score for w in windows if w.ok], [w.score for w in file_windows if w.index != 1],
                               atol=1e-5)


def test_missing_file_and_bad_sources(engine, tmp_path):
    records = list(stream_windows(engine, tmp_path / "missing.mp4"))
    assert len(records) == 1 and records[0].error["code"] == "not_found" and records[0].index == 0
    assert list(stream_windows(engine, tmp_path / "missing.mp4"))[0].to_record()["error"]["code"] == "not_found"
    refused = list(stream_windows(engine, "rtsp://127.0.0.1:9/none", timeout_s=2.0))
    assert [r.error["code"] for r in refused] == ["unreachable"]
    bad = list(stream_windows(engine, [np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64), np.float32)]))
    assert [r.error["code"] for r in bad] == ["invalid_frame"]
    assert list(stream_windows(engine, []))[0].error["code"] == "decode_failed"
    with pytest.raises(ValueError):
        stream_windows(engine, tmp_path / "x.mp4", window_s=0)


def test_http_url_source_equals_the_file(engine, clip, file_windows, tmp_path):
    # Index first, as web video is served: this little server ignores Range requests.
    web = tmp_path / "web.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-i", str(clip), "-c", "copy", "-movflags", "+faststart", str(web)], check=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{web.name}"
        windows = list(stream_windows(engine, url, window_s=2.0, hop_s=1.0, timeout_s=5.0))
        missing = list(stream_windows(engine, url + ".nope", timeout_s=5.0))
    finally:
        server.shutdown()
    np.testing.assert_allclose([w.score for w in windows], [w.score for w in file_windows], atol=1e-5)
    assert [r.error["code"] for r in missing] == ["not_found"]


def test_stopping_early_releases_the_decoder(engine):
    def endless():
        i = 0
        while True:
            yield moving_frames(1, h=64, w=64, seed=i)[0]
            i += 1

    windows = stream_windows(engine, endless(), window_s=0.4, hop_s=0.4, fps=25)
    first = [next(windows) for _ in range(3)]
    windows.close()
    assert [w.index for w in first] == [0, 1, 2]
    assert not [t for t in threading.enumerate() if t.name == "qclip-stream-decode"]


def test_gaps_are_skipped_and_a_restarted_clock_keeps_moving_forward(engine):
    frame = moving_frames(1, h=64, w=64)[0]
    times = [i / 10 for i in range(20)] + [100 + i / 10 for i in range(20)]  # a 98 s outage
    windows = list(stream_windows(engine, ((t, frame) for t in times), window_s=1.0, hop_s=1.0))
    assert [w.start_s for w in windows] == [0.0, 1.0, 100.0, 101.0]
    assert [w.index for w in windows] == [0, 1, 100, 101]
    times = [i / 10 for i in range(30)] + [i / 10 for i in range(20)]  # the clock restarts at 0
    windows = list(stream_windows(engine, ((t, frame) for t in times), window_s=1.0, hop_s=1.0))
    assert [w.start_s for w in windows] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [w.frames_in_window for w in windows] == [10, 10, 10, 10, 10]


def test_plot_timeline_writes_a_png(engine, clip, file_windows, tmp_path):
    threshold = float(np.median([w.score for w in file_windows]))
    records = [w.to_record() for w in stream_windows(engine, clip, threshold=threshold)]
    records.append({"index": 9, "start_s": 9.0, "end_s": 11.0, "error": {"code": "truncated", "message": "cut"}})
    out = plot_timeline(records, tmp_path / "timeline.png", threshold=threshold, title="clip")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_timeline(file_windows, tmp_path / "plain.png")  # WindowResults, no threshold
    assert (tmp_path / "plain.png").stat().st_size > 1000


def _loopback_server(respond):
    """A TCP server on 127.0.0.1 that calls ``respond(conn)`` for each connection it accepts and keeps
    the connection open (the caller closes ``held`` and the listener)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            respond(conn)

    threading.Thread(target=serve, daemon=True).start()
    return listener, held


def _hanging_http_server(payload: bytes, send: int):
    """An HTTP server that sends the headers (the full length declared) and ``send`` bytes of
    ``payload``, then goes silent while keeping the connection open."""

    def respond(conn):
        conn.recv(65536)
        if send >= 0:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\n"
                         + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload[:send])

    return _loopback_server(respond)


@pytest.mark.parametrize("send", [-1, 2], ids=["silent_at_open", "silent_mid_stream"])
def test_a_hung_http_stream_says_it_timed_out(engine, clip, tmp_path, send):
    web = tmp_path / "web.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-i", str(clip), "-c", "copy", "-movflags", "+faststart", str(web)], check=True)
    data = web.read_bytes()
    listener, held = _hanging_http_server(data, send if send < 0 else len(data) * send // 3)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/web.mp4"
        records = list(stream_windows(engine, url, window_s=2.0, hop_s=1.0, timeout_s=1.0))
    finally:
        listener.close()
        for conn in held:
            conn.close()
    last = records[-1]
    assert last.error is not None and last.error["code"] == "unreachable", last
    assert "timed out" in last.error["message"] and "Immediate exit" not in last.error["message"]
    if send > 0:
        assert len(records) >= 2 and all(r.ok for r in records[:-1])  # windows before the stall are kept


@pytest.mark.parametrize("answer, code, timeout_s", [(None, "unreachable", 0.5),
                                                     (b"SSH-2.0-OpenSSH_9.6\r\n", "not_a_video", 5.0)],
                         ids=["silent", "garbage"])
def test_an_rtsp_server_that_never_answers_is_unreachable(engine, answer, code, timeout_s):
    # A TCP port that accepts and then says nothing (or something that is not RTSP, and hangs up:
    # answered at once, so well within its time).
    def respond(conn):
        if answer is not None:
            conn.recv(65536)
            conn.sendall(answer)
            conn.close()

    listener, held = _loopback_server(respond)
    try:
        url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/x"
        records = list(stream_windows(engine, url, timeout_s=timeout_s))
    finally:
        listener.close()
        for conn in held:
            conn.close()
    assert [r.error["code"] for r in records] == [code], records
    assert ("timed out" in records[0].error["message"]) == (code == "unreachable")
