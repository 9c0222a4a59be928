"""Decoding: probe facts, sparse = full, rotation, VFR, bounded memory, typed errors on bad files."""

import json
import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from media import audio_only, broken_corpus, encode, lossless, moving_frames

from qclip_engine.errors import (
    AudioOnlyError,
    EmptyFileError,
    NotAVideoError,
    PermissionDeniedError,
    TruncatedVideoError,
    UnsupportedCodecError,
    VideoError,
    VideoNotFoundError,
)
from qclip_engine.video import decode

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
X264_BFRAMES = {"bf": "3", "g": "12", "preset": "veryfast"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """The same 40 moving frames in h264 (B-frames, GOP 12), HEVC and VP9."""
    root = tmp_path_factory.mktemp("clips")
    frames = moving_frames(40)
    return {
        "h264": encode(root / "h264.mp4", frames, options=X264_BFRAMES),
        "hevc": encode(root / "hevc.mp4", frames, codec="libx265", options={"x265-params": "log-level=error:bframes=3:keyint=12"}),
        "vp9": encode(root / "vp9.webm", frames, codec="libvpx-vp9", options={"g": "12"}),
    }


def test_probe_reports_codec_size_rate_count_duration(clips):
    info = decode.probe(clips["h264"])
    assert (info.codec, info.width, info.height, info.frame_count) == ("h264", 96, 64, 40)
    assert info.fps == pytest.approx(25.0) and info.duration == pytest.approx(1.6)
    assert not info.vfr and info.rotation == 0 and info.has_b_frames
    assert decode.probe(clips["vp9"]).codec == "vp9" and decode.probe(clips["hevc"]).codec == "hevc"


@pytest.mark.parametrize("codec", ["h264", "hevc", "vp9"])
def test_sparse_decoding_equals_full_decoding(clips, codec):
    full = decode.decode_frames(clips[codec], size=(48, 80))
    assert full.shape == (40, 48, 80, 3) and full.dtype == np.uint8
    # Out of order, repeated, across GOPs, first and last, neighbours of keyframes.
    indices = [39, 0, 13, 11, 12, 12, 25, 1, 38, 24, 36]
    sparse = decode.decode_frames(clips[codec], size=(48, 80), indices=indices)
    np.testing.assert_array_equal(sparse, full[indices])
    streamed = decode.decode_frames(clips[codec], size=(48, 80), indices=indices, seek=False)
    np.testing.assert_array_equal(streamed, full[indices])


def test_native_size_decoding_is_lossless_for_a_lossless_file(tmp_path):
    frames = moving_frames(6, h=32, w=48)
    np.testing.assert_array_equal(decode.decode_frames(lossless(tmp_path / "l.mkv", frames)), frames)


def test_candidates_take_a_uniform_stride_and_match_full_decoding(clips):
    full = decode.decode_frames(clips["h264"], size=(32, 32))
    cands = decode.decode_candidates(clips["h264"], (32, 32), max_frames=9)
    np.testing.assert_array_equal(cands.indices, np.linspace(0, 39, 9).round().astype(int))
    np.testing.assert_array_equal(cands.frames, full[cands.indices])
    np.testing.assert_allclose(cands.times, cands.indices / 25.0)
    assert decode.decode_candidates(clips["h264"], (32, 32)).frames.shape[0] == 40  # short: every frame


def _ffmpeg_rgb(path: Path, w: int, h: int) -> np.ndarray:
    """ffmpeg's own decode (it applies the display rotation by default)."""
    raw = subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(h, w, 3)


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_metadata_is_applied_as_ffmpeg_does(tmp_path, degrees):
    frames = np.zeros((3, 32, 64, 3), np.uint8)
    frames[:, :16, :16] = 255  # a white block in the top-left corner of the coded picture
    frames[:, 20:, 40:, 0] = 255  # and a red one bottom right
    path = encode(tmp_path / f"r{degrees}.mp4", frames, pix_fmt="yuv444p", options={"qp": "0"}, rotation=degrees)
    info = decode.probe(path)
    assert info.rotation in (90, 180, 270)
    expected_shape = (64, 32) if degrees in (90, 270) else (32, 64)
    assert (info.height, info.width) == expected_shape
    ours = decode.decode_frames(path, indices=[0])[0]
    theirs = _ffmpeg_rgb(path, info.width, info.height)
    assert ours.shape == theirs.shape
    assert np.abs(ours.astype(int) - theirs).max() <= 2  # the same orientation (and pixels)
    resized = decode.decode_frames(path, size=(20, 30), indices=[0])[0]
    assert resized.shape == (20, 30, 3)


def test_vfr_is_flagged_and_timed_by_timestamps(tmp_path):
    pts = [0, 40, 80, 100, 120, 200, 260, 300, 310, 320]  # ms
    path = encode(tmp_path / "vfr.mkv", moving_frames(10), pts=pts, time_base=Fraction(1, 1000))
    info = decode.probe(path)
    assert info.vfr and info.frame_count == 10
    cands = decode.decode_candidates(path, (32, 32))
    np.testing.assert_allclose(cands.times, np.array(pts) / 1000)
    full = decode.decode_frames(path, size=(32, 32))
    np.testing.assert_array_equal(decode.decode_frames(path, size=(32, 32), indices=[9, 3, 4]), full[[9, 3, 4]])


def test_cfr_is_not_flagged_vfr(clips):
    assert not decode.probe(clips["vp9"]).vfr


def test_one_frame_gray_and_odd_sized_videos_decode(tmp_path):
    one = encode(tmp_path / "one.mp4", moving_frames(1))
    assert decode.probe(one).frame_count == 1
    assert decode.decode_candidates(one, (16, 16)).frames.shape == (1, 16, 16, 3)
    gray = encode(tmp_path / "gray.mkv", moving_frames(4), codec="ffv1", pix_fmt="gray")
    g = decode.decode_frames(gray, size=(16, 16))
    assert g.shape == (4, 16, 16, 3) and np.array_equal(g[..., 0], g[..., 1])
    odd = encode(tmp_path / "odd.mkv", moving_frames(3, h=9, w=17), codec="ffv1", pix_fmt="yuv444p")
    info = decode.probe(odd)
    assert (info.width, info.height) == (17, 9)
    assert decode.decode_frames(odd, size=(8, 8)).shape == (3, 8, 8, 3)


# -- bad inputs ------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(VideoNotFoundError) as info:
        decode.probe(tmp_path / "nope.mp4")
    assert info.value.code == "not_found" and info.value.path.endswith("nope.mp4")


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(EmptyFileError) as info:
        decode.decode_candidates(tmp_path / "empty.mp4", (16, 16))
    assert info.value.code == "empty_file"


def test_not_a_video(tmp_path):
    (tmp_path / "notes.mp4").write_text("these are not the frames you are looking for\n" * 50)
    with pytest.raises(NotAVideoError) as info:
        decode.probe(tmp_path / "notes.mp4")
    assert info.value.code == "not_a_video"
    with pytest.raises(NotAVideoError):
        decode.probe(tmp_path)  # a directory


def test_audio_only(tmp_path):
    with pytest.raises(AudioOnlyError) as info:
        decode.decode_frames(audio_only(tmp_path / "tone.m4a"))
    assert info.value.code == "audio_only"


def test_undecodable_codec(tmp_path):
    path = encode(tmp_path / "x.mkv", moving_frames(5))
    data = path.read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    path.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_QCLIP/NO/SUCH"))  # a CodecID no FFmpeg knows
    with pytest.raises(UnsupportedCodecError) as info:
        decode.probe(path)
    assert info.value.code == "unsupported_codec"


def test_a_cut_mp4_without_its_index_is_truncated(tmp_path):
    path = encode(tmp_path / "full.mp4", moving_frames(60, h=96, w=128), options=dict(X264_BFRAMES))
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: nothing to go by
    with pytest.raises(TruncatedVideoError) as info:
        decode.decode_candidates(cut, (16, 16))
    assert info.value.code == "truncated"


@pytest.fixture(scope="module")
def streamable(tmp_path_factory):
    """The same 50 frames (2 s at 25 fps) in each container that can be cut and still be read."""
    root = tmp_path_factory.mktemp("streamable")
    source = encode(root / "source.mkv", moving_frames(50, h=48, w=64), options=dict(X264_BFRAMES))
    made = {"mkv": source, "webm": encode(root / "vp9.webm", moving_frames(50, h=48, w=64), codec="libvpx-vp9",
                                          options={"deadline": "realtime", "cpu-used": "8"})}
    for kind, suffix, args in [("ts", ".ts", ["-c", "copy"]),
                               ("faststart_mp4", ".mp4", ["-c", "copy", "-movflags", "+faststart"]),
                               ("fragmented_mp4", ".mp4", ["-c", "copy", "-movflags", "frag_keyframe+empty_moov"]),
                               ("y4m", ".y4m", ["-c:v", "rawvideo", "-pix_fmt", "yuv420p"])]:
        made[kind] = root / f"{kind}{suffix}"
        subprocess.run([FFMPEG, "-v", "error", "-i", str(source), *args, str(made[kind])], check=True)
    return made


@pytest.mark.parametrize("kind", ["mkv", "webm", "ts", "faststart_mp4", "fragmented_mp4", "y4m"])
def test_cut_streamable_files_are_decoded_and_flagged_truncated(streamable, kind, tmp_path):
    whole = decode.probe(streamable[kind])
    assert whole.truncation is None and whole.frame_count == 50, whole
    whole.require_complete()  # no error for a whole file
    data = streamable[kind].read_bytes()
    for fraction in (0.3, 0.75, 0.95):
        cut = tmp_path / f"cut{fraction}{streamable[kind].suffix}"
        size = int(len(data) * fraction)
        # A cut on a packet or fragment boundary is undetectable (the README says so): step off it.
        if (kind == "ts" and size % 188 == 0) or data[size + 4 : size + 8] in (b"moof", b"mfra"):
            size -= 7
        # FFmpeg refuses to open an MP4 cut inside a fragment header (~100 bytes of each ~2 KB
        # fragment): that is the truncated error, never a silent score; step back out of it.
        for attempt in range(3):
            cut.write_bytes(data[: size - 300 * attempt])
            try:
                info = decode.probe(cut)
                break
            except TruncatedVideoError:
                assert kind == "fragmented_mp4", kind
        else:
            pytest.fail(f"{kind}: no cut near {fraction:.0%} could be opened")
        assert info.truncation, (kind, fraction, info)  # says what was decoded against what was declared
        assert str(info.frame_count) in info.truncation or f"{info.duration:.3f}" in info.truncation or "cut" in info.truncation
        if info.declared_frames:
            assert str(info.declared_frames) in info.truncation
        elif info.declared_duration:
            assert f"{info.declared_duration:.3f}" in info.truncation
        cands = decode.decode_candidates(cut, (16, 16))  # what is there is still decoded
        assert 0 < len(cands.frames) <= info.frame_count <= 50
        with pytest.raises(TruncatedVideoError) as strict:
            info.require_complete()
        assert strict.value.code == "truncated" and info.truncation in strict.value.message


def test_mkv_cut_to_3_of_50_frames_states_decoded_against_declared(streamable, tmp_path):
    data = streamable["mkv"].read_bytes()
    for size in range(len(data) // 20, len(data)):  # the shortest cut with 3 frames in it
        (tmp_path / "cut.mkv").write_bytes(data[:size])
        try:
            info = decode.probe(tmp_path / "cut.mkv")
        except TruncatedVideoError:
            continue
        if info.frame_count >= 3:
            break
    assert info.declared_duration == pytest.approx(2.0) and info.truncation
    assert f"of a declared {info.declared_duration:.3f} s" in info.truncation


def test_a_fragmented_mp4_cut_inside_a_fragment_header_is_truncated(streamable, tmp_path):
    data = streamable["fragmented_mp4"].read_bytes()
    header = data.rindex(b"moof") - 4  # the last fragment's header box starts 4 bytes before its type
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: header + 12])  # every earlier fragment is whole: only the box sizes tell
    info = decode.probe(cut)
    assert info.frame_count < 50 and "'moof'" in info.truncation and "past the end of the file" in info.truncation
    cut.write_bytes(data[: header + 5])  # inside the box's own 8-byte header
    assert "bytes into a box header" in decode.probe(cut).truncation


def test_a_faststart_mp4_without_its_media_data_is_truncated(streamable, tmp_path):
    data = streamable["faststart_mp4"].read_bytes()
    cut = tmp_path / "index_only.mp4"
    cut.write_bytes(data[: data.index(b"mdat") + 4])  # the index is whole; the frames are gone
    with pytest.raises(TruncatedVideoError) as info:
        decode.probe(cut)
    assert "50 declared frames" in info.value.message


def test_dropped_frames_are_counted_apart_from_variable_frame_rate(tmp_path):
    kept = [i for i in range(30) if i not in (10, 11)]  # 29.97 fps, two frames missing
    exact = encode(tmp_path / "ntsc.mp4", moving_frames(28), fps=30, pts=[i * 1001 for i in kept],
                   time_base=Fraction(1, 30000))
    rounded = encode(tmp_path / "ntsc.mkv", moving_frames(28), fps=30, pts=[round(i * 1000 / 29.97) for i in kept],
                     time_base=Fraction(1, 1000))  # Matroska's millisecond timestamps: steps of 33 and 34
    for path in (exact, rounded):
        info = decode.probe(path)
        assert not info.vfr and info.dropped_frames == 2 and info.frame_count == 28, info
    steady = decode.probe(encode(tmp_path / "steady.mkv", moving_frames(30), pts=[round(i * 1000 / 29.97) for i in range(30)],
                                 time_base=Fraction(1, 1000)))
    assert not steady.vfr and steady.dropped_frames == 0
    vfr = decode.probe(encode(tmp_path / "vfr.mkv", moving_frames(10), pts=[0, 40, 80, 100, 120, 200, 260, 300, 310, 320],
                              time_base=Fraction(1, 1000)))
    assert vfr.vfr and vfr.dropped_frames == 0


def test_a_y4m_header_with_a_huge_picture_says_so(tmp_path):
    path = tmp_path / "huge.y4m"
    path.write_bytes(b"YUV4MPEG2 W65535 H65535 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(5000))
    with pytest.raises(VideoError) as info:
        decode.probe(path)
    assert "65535×65535" in info.value.message and "busy" not in info.value.message


def test_unreachable_paths_say_why(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(VideoNotFoundError) as loop:
        decode.probe(tmp_path / "a")
    assert "symlink loop" in loop.value.message
    with pytest.raises(VideoNotFoundError) as long:  # ENAMETOOLONG: an error record, not an OSError
        decode.probe(tmp_path / ("x" * 300 + ".mp4"))
    assert "too long" in long.value.message


def test_broken_corpus_never_crashes_and_every_failure_is_typed(tmp_path, clips):
    corpus = broken_corpus(tmp_path, [clips["h264"], clips["vp9"], clips["hevc"]])
    assert len(corpus) >= 30
    listing = tmp_path / "corpus.json"
    listing.write_text(json.dumps([str(p) for p in corpus]))
    # A separate process: a crash inside FFmpeg would kill it, not pass unnoticed.
    script = textwrap.dedent(
        f"""
        import json
        from qclip_engine.errors import VideoError
        from qclip_engine.video import decode
        from qclip_engine.video.frame_mse import frame_mse
        records = []
        for path in json.load(open({str(listing)!r})):
            try:
                c = decode.decode_candidates(path, (24, 24), max_frames=16)
                frame_mse(c.frames)
                records.append({{"path": path, "frames": int(len(c.frames))}})
            except VideoError as exc:
                records.append({{"path": path, **exc.to_record()}})
        print(json.dumps(records))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(records) == len(corpus)
    codes = {r["error"]["code"] for r in records if "error" in r}
    assert codes <= {"not_found", "empty_file", "not_a_video", "audio_only", "unsupported_codec", "truncated", "decode_failed"}
    assert {"not_found", "empty_file", "truncated"} <= codes
    # The wrongly named but intact files still decode: the extension is not trusted.
    assert all(r.get("frames") == 16 for r in records if Path(r["path"]).name.startswith("ext"))


def test_video_errors_make_records():
    exc = TruncatedVideoError("cut", path="/x.mp4")
    assert exc.to_record() == {"error": {"code": "truncated", "message": "cut"}, "path": "/x.mp4"}
    assert isinstance(exc, VideoError)


# -- bounded memory ------------------------------------------------------------------------
def _peak_rss_growth_mib_for_candidates(path: Path) -> float:
    """Peak RSS of decoding + MSE above the RSS after imports (Linux: VmHWM reset via clear_refs)."""
    script = textwrap.dedent(
        f"""
        import re
        from qclip_engine.video import decode
        from qclip_engine.video.frame_mse import frame_mse

        def status_kib(field):
            return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))

        open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
        before = status_kib("VmRSS")
        c = decode.decode_candidates({str(path)!r}, (128, 128), max_frames=256)
        m = frame_mse(c.frames)
        assert len(m) == 256
        print((status_kib("VmHWM") - before) / 1024)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


def test_candidate_decoding_memory_does_not_grow_with_length(tmp_path):
    # 128×128 frames are 48 KiB: keeping all 3,000 would cost ~140 MiB more than keeping 1,000.
    short = encode(tmp_path / "short.mp4", moving_frames(1000, h=128, w=128), options={"preset": "ultrafast"})
    long = encode(tmp_path / "long.mp4", moving_frames(3000, h=128, w=128), options={"preset": "ultrafast"})
    growth_short = _peak_rss_growth_mib_for_candidates(short)
    growth_long = _peak_rss_growth_mib_for_candidates(long)
    message = f"peak RSS growth {growth_short:.1f} MiB at 1,000 frames, {growth_long:.1f} MiB at 3,000"
    # 256 candidates at 128×128 are 12 MiB; the bound leaves room for FFmpeg's buffers only.
    assert growth_long < 64, message
    assert growth_long - growth_short < 16, message


# -- raw elementary streams (no seeking, maybe no timestamps) --------------------------------
def _ffmpeg(*args) -> None:
    subprocess.run([FFMPEG, "-v", "error", "-y", *map(str, args)], check=True)


def _has_encoder(name: str) -> bool:
    listing = subprocess.run([FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True).stdout
    return any(line.split()[1:2] == [name] for line in listing.splitlines() if line.strip())


@pytest.mark.parametrize("kind", ["h264", "hevc", "ivf-vp9"])
def test_raw_elementary_streams_decode_sequentially_like_their_mp4(tmp_path, kind):
    codec, muxer, suffix = {
        "h264": ("libx264", "h264", ".h264"),
        "hevc": ("libx265", "hevc", ".hevc"),
        "ivf-vp9": ("libvpx-vp9", "ivf", ".ivf"),
    }[kind]
    if not _has_encoder(codec):
        pytest.skip(f"this ffmpeg has no {codec} encoder")
    src = lossless(tmp_path / "src.mkv", moving_frames(30))
    options = ["-g", "8", "-bf", "2"] if codec == "libx264" else ["-g", "8"]
    if codec == "libx265":
        options = ["-x265-params", "log-level=error:bframes=2:keyint=8"]
    muxed = tmp_path / ("muxed.webm" if muxer == "ivf" else "muxed.mp4")
    _ffmpeg("-i", src, "-c:v", codec, *options, "-pix_fmt", "yuv420p", muxed)
    raw = tmp_path / f"raw{suffix}"
    _ffmpeg("-i", muxed, "-c", "copy", "-f", muxer, raw)  # the same bitstream, without the container

    info = decode.probe(raw)
    assert (info.codec, info.width, info.height, info.frame_count) == (decode.probe(muxed).codec, 96, 64, 30)
    indices = [29, 0, 9, 8, 17, 17, 3]
    reference = decode.decode_frames(muxed, size=(48, 80), indices=indices)
    np.testing.assert_array_equal(decode.decode_frames(raw, size=(48, 80), indices=indices), reference)
    np.testing.assert_array_equal(decode.decode_frames(raw, size=(48, 80), indices=indices, seek=False), reference)
    cands = decode.decode_candidates(raw, (32, 32), max_frames=7)
    np.testing.assert_array_equal(cands.indices, decode.decode_candidates(muxed, (32, 32), max_frames=7).indices)
    np.testing.assert_array_equal(cands.frames, decode.decode_frames(muxed, size=(32, 32), indices=cands.indices))
    np.testing.assert_allclose(cands.times, cands.indices / 25.0)


# -- display matrix: flips as well as rotations -----------------------------------------------
def _ffmpeg_all_rgb(path: Path, w: int, h: int) -> np.ndarray:
    raw = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


@pytest.mark.parametrize("flags,rotation", [
    (["-display_hflip"], 0), (["-display_vflip"], 0), (["-display_hflip", "-display_vflip"], 0),
    (["-display_hflip"], 90), (["-display_hflip"], 180), (["-display_hflip"], 270), (["-display_vflip"], 90),
])
def test_flipped_display_matrix_is_applied_as_ffmpeg_does(tmp_path, flags, rotation):
    frames = moving_frames(4, h=32, w=64)
    frames[:, :12, :12] = 255  # an asymmetric mark: the top-left corner of the coded picture
    plain = encode(tmp_path / "plain.mp4", frames, pix_fmt="yuv444p", options={"qp": "0"})
    flipped = tmp_path / "flipped.mp4"
    _ffmpeg(*flags, *(["-display_rotation", rotation] if rotation else []), "-i", plain, "-c", "copy", flipped)
    info = decode.probe(flipped)
    hflip = flags.count("-display_hflip") + flags.count("-display_vflip") == 1  # an odd number of mirrors
    assert info.hflip is hflip and info.to_dict()["hflip"] is hflip
    assert (info.height, info.width) == ((64, 32) if rotation in (90, 270) else (32, 64))
    ours = decode.decode_frames(flipped)
    np.testing.assert_array_equal(ours, _ffmpeg_all_rgb(flipped, info.width, info.height))  # autorotate
    upright = decode.decode_frames(plain)
    if flags == ["-display_hflip"] and not rotation:
        np.testing.assert_array_equal(ours, upright[:, :, ::-1])  # np.fliplr of each frame
    cands = decode.decode_candidates(flipped, (16, 24))
    np.testing.assert_array_equal(cands.frames, decode.decode_frames(flipped, size=(16, 24)))
    assert not decode.probe(plain).hflip


# -- unreadable files ---------------------------------------------------------------------------
def test_unreadable_file_is_permission_denied(tmp_path, clips):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root reading the file "
                    "(test_permission_errors_map_to_permission_denied covers the mapping)")
    locked = tmp_path / "locked.mp4"
    locked.write_bytes(Path(clips["h264"]).read_bytes())
    locked.chmod(0)
    try:
        with pytest.raises(PermissionDeniedError) as info:
            decode.probe(locked)
        assert info.value.code == "permission_denied" and info.value.path == str(locked)
    finally:
        locked.chmod(0o644)


def test_permission_errors_map_to_permission_denied(tmp_path, clips, monkeypatch):
    import av
    from qclip_engine.video import container as video_container

    # What a non-root reader meets on a chmod 000 file: FFmpeg's open fails with EACCES,
    # and so does any read of the header.
    def denied(*args, **kwargs):
        raise av.error.PermissionError(13, "Permission denied")

    def no_read(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(video_container.av, "open", denied)
    monkeypatch.setattr(Path, "open", no_read)
    with pytest.raises(PermissionDeniedError) as info:
        decode.probe(clips["h264"])
    assert info.value.code == "permission_denied"
    assert info.value.to_record()["error"]["code"] == "permission_denied"
    monkeypatch.setattr(video_container.os, "access", lambda *a, **k: False)
    with pytest.raises(PermissionDeniedError):
        decode.probe(clips["h264"])


# -- which video stream ---------------------------------------------------------------------
@pytest.mark.parametrize("suffix,codec", [(".m4a", "aac"), (".mp3", "libmp3lame")])
def test_audio_with_cover_art_is_audio_only(tmp_path, suffix, codec):
    if not _has_encoder(codec):
        pytest.skip(f"this ffmpeg has no {codec} encoder")
    tone = audio_only(tmp_path / "tone.m4a")
    cover = tmp_path / "cover.png"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64", "-frames:v", "1", cover)
    song = tmp_path / f"song{suffix}"
    _ffmpeg("-i", tone, "-i", cover, "-map", "0", "-map", "1", "-c:a", codec, "-c:v", "mjpeg",
            "-disposition:v", "attached_pic", song)
    with pytest.raises(AudioOnlyError) as info:
        decode.probe(song)
    assert info.value.code == "audio_only"


def test_the_default_of_two_video_streams_is_decoded(tmp_path):
    small = encode(tmp_path / "small.mkv", moving_frames(5, h=32, w=48, seed=1))
    big = lossless(tmp_path / "big.mkv", moving_frames(8))
    both = tmp_path / "both.mkv"
    _ffmpeg("-i", small, "-i", big, "-map", "0:v", "-map", "1:v", "-c", "copy",
            "-disposition:v:0", "0", "-disposition:v:1", "default", both)
    info = decode.probe(both)
    assert (info.width, info.height, info.frame_count, info.codec) == (96, 64, 8, "ffv1")
    np.testing.assert_array_equal(decode.decode_frames(both, indices=[7, 2]), moving_frames(8)[[7, 2]])
    np.testing.assert_array_equal(decode.decode_candidates(both, (64, 96)).frames, moving_frames(8))
