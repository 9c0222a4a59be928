"""What a file may make the decoder do: only single-file formats, bounded frames, pictures and seconds,
and a decode that stops when asked (qclip_engine/video/limits.py, video/container.py, video/iso_bmff.py)."""

import shutil
import subprocess
import threading

import av
import numpy as np
import pytest

from media import concat_list, crafted_sample_table, encode, hls_playlist, moving_frames, y4m_header
from qclip_engine import defaults
from qclip_engine.errors import VideoError
from qclip_engine.stream.sources import END_OF_MEDIA, open_source
from qclip_engine.video import decode
from qclip_engine.video.frames import HostSource
from qclip_engine.video.iso_bmff import declared_video_samples
from qclip_engine.video.limits import DecodeLimits, PixelBudget, Work
from qclip_engine.video.sampling import check_sampler


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A plain H.264 MP4, 96×64, 30 frames."""
    return encode(tmp_path_factory.mktemp("limits") / "clip.mp4", moving_frames(30, h=64, w=96))


@pytest.fixture(scope="module")
def ts_clip(tmp_path_factory, clip):
    out = tmp_path_factory.mktemp("limits_ts") / "clip.ts"
    with av.open(str(clip)) as src, av.open(str(out), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return out


def code_of(call) -> str:
    with pytest.raises(VideoError) as info:
        call()
    return info.value.code


def count_ffmpeg_opens(monkeypatch) -> list:
    opened = []
    real = av.open

    def counting(*args, **kwargs):
        opened.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(av, "open", counting)
    return opened


# -- formats: a file is one file ------------------------------------------------------------------
def test_a_playlist_is_refused_before_it_opens_its_segment_whether_or_not_the_segment_exists(tmp_path, ts_clip):
    present = hls_playlist(tmp_path / "present.m3u8", ts_clip)
    absent = hls_playlist(tmp_path / "absent.m3u8", tmp_path / "no_such_segment.ts")
    # FFmpeg alone reads the named file, and fails when it is not there: an oracle on the server's files.
    assert av.open(str(present)).format.name == "hls"
    with pytest.raises(av.error.FFmpegError):
        av.open(str(absent))
    answers = []
    for playlist in (present, absent):
        with pytest.raises(VideoError) as info:
            decode.probe(playlist)
        answers.append((info.value.code, info.value.message.replace(playlist.name, "NAME")))
    assert answers[0] == answers[1] and answers[0][0] == "format_not_allowed"
    assert str(ts_clip) not in answers[0][1]


def test_the_format_is_what_ffmpeg_probes_not_the_name(tmp_path, clip):
    listed = concat_list(tmp_path / "list.mp4", clip)  # an ffconcat list named like a video
    assert code_of(lambda: decode.probe(listed)) == "format_not_allowed"
    shutil.copy(clip, tmp_path / "video.m3u8")  # a video named like a playlist is a video
    assert decode.probe(tmp_path / "video.m3u8").frame_count == 30


def test_an_image_sequence_pattern_is_refused(tmp_path, clip):
    frames = moving_frames(2)
    for i in (1, 2):
        av.VideoFrame.from_ndarray(frames[i - 1], format="rgb24").to_image().save(tmp_path / f"img{i:03d}.png")
    pattern = tmp_path / "img%03d.png"
    shutil.copy(tmp_path / "img001.png", pattern)
    assert code_of(lambda: decode.probe(pattern)) == "format_not_allowed"
    assert decode.probe(tmp_path / "img001.png").frame_count == 1  # one picture is one file: read as before


def test_a_stream_still_opens_a_playlist(tmp_path, ts_clip):
    """--stream sources are the operator's: a local playlist plays."""
    opener, _, _ = open_source(str(hls_playlist(tmp_path / "live.m3u8", ts_clip)), (32, 32), 25.0, 5.0, None)
    frames = [convert() for t, convert in opener() if t is not END_OF_MEDIA]
    assert len(frames) == 30 and frames[0].shape == (32, 32, 3)


# -- frames: declared and read --------------------------------------------------------------------
def test_a_sample_table_declaring_millions_is_refused_before_ffmpeg_indexes_it(tmp_path, clip, monkeypatch):
    """The issue's file at full size (7 M one-byte samples, 7 MB): the default limit refuses it from its
    boxes, without FFmpeg opening it (FFmpeg would index every sample first: ~250 MB, seconds)."""
    crafted = crafted_sample_table(tmp_path / "crafted.mp4", 7_000_000, clip)
    assert declared_video_samples(crafted) == 7_000_000
    opened = count_ffmpeg_opens(monkeypatch)
    with pytest.raises(VideoError) as info:
        decode.probe(crafted)
    assert info.value.code == "too_many_frames" and "7000000" in info.value.message
    assert opened == []
    assert 7_000_000 > defaults.MAX_VIDEO_FRAMES


def test_the_frame_limit_counts_declared_and_read_frames(tmp_path, clip, ts_clip):
    limit = DecodeLimits(max_frames=20)
    assert code_of(lambda: decode.probe(clip, Work(limit))) == "too_many_frames"  # declared: the MP4 says 30
    assert code_of(lambda: decode.probe(ts_clip, Work(limit))) == "too_many_frames"  # MPEG-TS declares none: counted
    assert decode.probe(ts_clip, Work(DecodeLimits(max_frames=30))).frame_count == 30
    small = crafted_sample_table(tmp_path / "small.mp4", 25, clip)
    assert code_of(lambda: decode.probe(small, Work(limit))) == "too_many_frames"


def test_fragmented_mp4_fragments_count_towards_the_declared_frames(tmp_path, clip):
    frag = tmp_path / "frag.mp4"
    with av.open(str(clip)) as src, av.open(str(frag), "w", options={"movflags": "frag_keyframe+empty_moov"}) as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    assert declared_video_samples(frag) == 30
    assert code_of(lambda: decode.probe(frag, Work(DecodeLimits(max_frames=29)))) == "too_many_frames"


# -- pictures -------------------------------------------------------------------------------------
def test_a_huge_picture_is_refused_before_decoding_at_the_default_limit(tmp_path):
    """The documented default at full size: a 16000×16000 picture (2.6 GB a decode in H.264)."""
    huge = y4m_header(tmp_path / "huge.y4m", 16000, 16000)
    with pytest.raises(VideoError) as info:
        decode.probe(huge)
    assert info.value.code == "picture_too_large" and "16000×16000" in info.value.message
    assert 16000 * 16000 > defaults.MAX_PICTURE_PIXELS >= 7680 * 4320  # 8K is admitted


def test_the_picture_limit_is_the_coded_size(clip):
    assert code_of(lambda: decode.decode_frames(clip, (32, 32), [0], work=Work(DecodeLimits(max_pixels=96 * 64 - 1)))) \
        == "picture_too_large"
    frames = decode.decode_frames(clip, (32, 32), [0, 29], work=Work(DecodeLimits(max_pixels=96 * 64)))
    assert frames.shape == (2, 32, 32, 3)


def test_the_decoder_refuses_a_picture_that_grows_mid_stream(tmp_path):
    """A raw H.264 stream whose second half switches to a picture 16 times larger: FFmpeg's max_pixels,
    set on the decoder (twice the limit: container.decoder_max_pixels), refuses those frames (they are
    never decoded at that size)."""
    small, large = tmp_path / "small.h264", tmp_path / "large.h264"
    encode(tmp_path / "s.mp4", moving_frames(5, h=32, w=32))
    encode(tmp_path / "l.mp4", moving_frames(5, h=128, w=128))
    for mp4, raw in ((tmp_path / "s.mp4", small), (tmp_path / "l.mp4", large)):
        with av.open(str(mp4)) as src, av.open(str(raw), "w", format="h264") as dst:
            stream = dst.add_stream_from_template(src.streams.video[0])
            for packet in src.demux(src.streams.video[0]):
                if packet.dts is not None:
                    packet.stream = stream
                    dst.mux(packet)
    grown = tmp_path / "grown.h264"
    grown.write_bytes(small.read_bytes() + large.read_bytes())
    sizes = [rgb.shape for _, rgb in decode.iter_frames(grown, None, work=Work(DecodeLimits(max_pixels=32 * 32)))]
    assert sizes and set(sizes) == {(32, 32, 3)}  # the small part (the switch may cost its last frames in flight)
    everything = [rgb.shape for _, rgb in decode.iter_frames(grown, None)]  # the default limit takes both
    assert everything.count((128, 128, 3)) == 5


# -- seconds, cancellation and the budget --------------------------------------------------------
class StopAfter(Work):
    """A meter whose cancel event is set by its 200th packet, as the service sets it when a request ends."""

    def packet(self) -> None:
        super().packet()
        if self.packets == 200:
            self.cancel.set()


def test_a_cancelled_decode_stops_between_packets(tmp_path, clip):
    crafted = crafted_sample_table(tmp_path / "long.mp4", 50_000, clip)  # within the limits: 50 000 packets to read
    work = StopAfter(DecodeLimits(), cancel=threading.Event())
    with pytest.raises(VideoError) as info:
        decode.probe(crafted, work)
    assert info.value.code == "cancelled"
    assert 200 <= work.packets <= 232  # checked every 32 packets


def test_cancel_reaches_the_frame_source(clip):
    event = threading.Event()
    event.set()
    source = HostSource((32, 32), 4)
    assert code_of(lambda: source.sample(clip, check_sampler("uniform"), cancel=event)) == "cancelled"
    assert source.sample(clip, check_sampler("uniform")).frames.shape == (4, 32, 32, 3)


def test_the_time_limit_ends_a_decode(tmp_path, clip):
    crafted = crafted_sample_table(tmp_path / "long.mp4", 50_000, clip)
    work = Work(DecodeLimits(max_seconds=1e-6))
    assert code_of(lambda: decode.probe(crafted, work)) == "decode_timeout"
    assert work.packets < 100


def test_the_pixel_budget_lets_large_decodes_wait_their_turn():
    budget = PixelBudget(100)
    first = Work(DecodeLimits(max_pixels=100, budget_pixels=100), budget=budget)
    first.picture(10, 6)  # 60 of 100
    second_done = threading.Event()

    def second():
        with Work(DecodeLimits(max_pixels=100, budget_pixels=100), budget=budget) as work:
            work.picture(10, 6)  # waits: 60 + 60 > 100
            second_done.set()

    thread = threading.Thread(target=second)
    thread.start()
    assert not second_done.wait(0.3)
    small = Work(DecodeLimits(max_pixels=100, budget_pixels=100), budget=budget)
    small.picture(5, 2)  # 10 more fit beside the first
    small.release()
    first.release()
    assert second_done.wait(5)
    thread.join(5)
    assert budget.in_use == 0


def test_a_decode_waiting_for_the_budget_gives_up_when_cancelled():
    budget = PixelBudget(100)
    holder = Work(DecodeLimits(max_pixels=100, budget_pixels=100), budget=budget)
    holder.picture(10, 10)
    waiting = Work(DecodeLimits(max_pixels=100, budget_pixels=100), cancel=threading.Event(), budget=budget)
    threading.Timer(0.2, waiting.cancel.set).start()
    assert code_of(lambda: waiting.picture(10, 10)) == "cancelled"
    holder.release()
    assert budget.in_use == 0


def test_limits_refuse_nonsense():
    for bad in ({"max_pixels": 0}, {"max_frames": -1}, {"max_seconds": float("nan")}, {"max_seconds": 0},
                {"max_pixels": 100, "budget_pixels": 99}, {"max_frames": 1.5}):
        with pytest.raises(ValueError):
            DecodeLimits(**bad)


# -- an MP4 cut inside its index ------------------------------------------------------------------
def test_an_mp4_cut_inside_its_moov_is_truncated(tmp_path, clip):
    fast = tmp_path / "fast.mp4"
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-i", clip, "-c", "copy", "-movflags", "+faststart", fast], check=True)
    data = fast.read_bytes()
    moov = data.index(b"moov") - 4
    for cut in (moov + 40, moov + 200):
        (tmp_path / "cut.mp4").write_bytes(data[:cut])
        assert code_of(lambda: decode.probe(tmp_path / "cut.mp4")) == "truncated"
    frag = tmp_path / "frag.mp4"
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-i", clip, "-c", "copy", "-movflags", "frag_keyframe+empty_moov",
                    frag], check=True)
    data = frag.read_bytes()
    (tmp_path / "frag_cut.mp4").write_bytes(data[:max(1, len(data) // 1000) + 100])
    assert code_of(lambda: decode.probe(tmp_path / "frag_cut.mp4")) == "truncated"


def _ffmpeg() -> str:
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    return imageio_ffmpeg.get_ffmpeg_exe()


def test_declared_samples_of_files_that_are_not_mp4(tmp_path, ts_clip):
    assert declared_video_samples(ts_clip) == 0
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 100, dtype=np.uint8).tobytes())
    assert declared_video_samples(tmp_path / "junk.mp4") == 0
