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
from conftest import trained_like

from qclip_engine import QCLIP, QCLIPConfig
from qclip_engine.engine import QualityEngine
from qclip_engine.cli.timeline import plot_timeline
from qclip_engine.stream import WindowResult, stream_windows
from qclip_engine.video.container import resize_rgb
from qclip_engine.video import decode

FPS = 25
SECONDS = 6
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return trained_like(QCLIP(QCLIPConfig(backbone="PE-Core-T-16-384", pretrained=None, image_size=64, num_frames=2)))


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
    # Index first (faststart), cut in the middle: windows up to the cut, then an error for the open one.
    fast = tmp_path / "fast.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-i", str(clip), "-c", "copy", "-movflags", "+faststart", str(fast)], check=True)
    data = fast.read_bytes()
    (tmp_path / "fastcut.mp4").write_bytes(data[: len(data) * 2 // 3])
    records = list(stream_windows(engine, tmp_path / "fastcut.mp4"))
    assert records[-1].error is not None and records[-1].error["code"] in {"truncated", "decode_failed"}
    assert all(r.ok for r in records[:-1]) and len(records) >= 2
    assert [r.index for r in records] == list(range(len(records)))
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


def _hanging_http_server(payload: bytes, send: int):
    """An HTTP server that sends the headers (the full length declared) and ``send`` bytes of
    ``payload``, then goes silent while keeping the connection open."""
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
            conn.recv(65536)
            if send >= 0:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\n"
                             + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload[:send])

    threading.Thread(target=serve, daemon=True).start()
    return listener, held


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
