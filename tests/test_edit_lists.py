"""MP4s cut by stream copy: the edit list hides the GOP's pre-roll frames, and every decode path
shows exactly the frames FFmpeg presents.

``ffmpeg -ss T -i in.mp4 -c copy`` keeps the packets from the keyframe before ``T`` and writes an
edit list starting at ``T``: the file holds more samples than ffmpeg shows. The reference is
FFmpeg itself (``-f framemd5 -pix_fmt rgb24``: one line per presented frame, its pts and the MD5
of its RGB pixels), not our scan.
"""

import hashlib
import subprocess
from fractions import Fraction

import imageio_ffmpeg
import numpy as np
import pytest
from media import encode, moving_frames

from qclip_engine.stream.sources import END_OF_MEDIA, open_source
from qclip_engine.video import decode
from qclip_engine.video.frames import HostSource
from qclip_engine.video.sampling import SAMPLERS, check_sampler

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
H, W, FPS = 48, 64, 25
# (source, cut point in seconds): B-frames with one GOP (the cut hides every frame before it);
# open GOPs of 12 frames, cut inside the first GOP and on the keyframe of the second (frame 12,
# whose leading B-frames reference the GOP before it and are hidden too).
SOURCES = {
    "bframes": {},
    "open_gop": {"x264-params": "open-gop=1:keyint=12:min-keyint=12:scenecut=0"},
}
CUTS = [("bframes", "0.5"), ("open_gop", "0.3"), ("open_gop", "0.48")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit_lists")
    return {name: encode(root / f"{name}.mp4", moving_frames(50, H, W), fps=FPS, options=options)
            for name, options in SOURCES.items()}


@pytest.fixture(scope="module", params=CUTS, ids=[f"{name}-ss{at}" for name, at in CUTS])
def cut(request, sources):
    """``(path, ffmpeg's presented frames: times in seconds, RGB MD5s)``."""
    name, at = request.param
    path = sources[name].with_name(f"{name}_ss{at}.mp4")
    subprocess.run([FFMPEG, "-v", "error", "-y", "-ss", at, "-i", str(sources[name]), "-c", "copy", str(path)],
                   check=True)
    return path, *_presented(path)


def _presented(path) -> tuple[np.ndarray, list[str]]:
    """The frames ffmpeg presents: their times (seconds, from the first) and the MD5 of their RGB24 pixels."""
    out = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-map", "0:v:0", "-pix_fmt", "rgb24",
                          "-f", "framemd5", "-"], capture_output=True, text=True, check=True).stdout
    time_base = next(Fraction(line.split(":")[1].strip()) for line in out.splitlines() if line.startswith("#tb 0"))
    rows = [[field.strip() for field in line.split(",")] for line in out.splitlines() if line and line[0] != "#"]
    pts = np.array([int(row[2]) for row in rows])
    return (pts - pts[0]) * float(time_base), [row[5] for row in rows]


def _md5s(frames: np.ndarray) -> list[str]:
    return [hashlib.md5(np.ascontiguousarray(f).tobytes()).hexdigest() for f in frames]


def test_the_cut_hides_frames(cut):
    # The premise: the file holds more samples than ffmpeg presents (else nothing here is tested).
    path, times, _ = cut
    info, table = decode.scan(path)
    assert info.declared_frames > len(times) and table.hidden == info.declared_frames - len(times)


def test_frame_table_is_the_presented_frames(cut):
    path, times, _ = cut
    info, table = decode.scan(path)
    assert info.frame_count == len(times)
    np.testing.assert_allclose(table.times(), times, atol=1e-9)
    assert info.duration == pytest.approx(len(times) / FPS)
    assert info.fps == pytest.approx(FPS)
    assert not info.vfr and info.dropped_frames == 0
    # Declared samples include the hidden ones: a clean cut is not a truncated file.
    assert info.truncation is None


def test_every_decode_path_gives_the_presented_pixels(cut):
    path, times, md5s = cut
    n = len(times)
    assert _md5s(decode.decode_frames(path, None, indices=range(n), seek=False)) == md5s
    order = np.random.default_rng(0).permutation(n)
    seeking = decode.decode_frames(path, None, indices=order, seek=True)
    assert _md5s(seeking) == [md5s[i] for i in order]
    assert [(i, m) for i, m in ((i, _md5s(rgb[None])[0]) for i, rgb in decode.iter_frames(path))] \
        == list(enumerate(md5s))
    cands = decode.decode_candidates(path, (H, W), max_frames=16)
    assert _md5s(cands.frames) == [md5s[i] for i in cands.indices]
    np.testing.assert_allclose(cands.times, times[cands.indices], atol=1e-9)
    # A stream of the file (stream/sources.py) shows the same frames, and no cut.
    opener, _, _ = open_source(str(path), (H, W), FPS, 10.0, None)
    *streamed, (end, media_end) = opener()
    assert end is END_OF_MEDIA and media_end.truncation is None
    np.testing.assert_allclose([t for t, _ in streamed], times, atol=1e-9)
    assert _md5s(np.stack([convert() for _, convert in streamed])) == md5s


def test_the_device_path_leaves_hidden_frames_to_pyav(cut):
    # DALI numbers frames as it outputs them, and nothing here checks that it skips hidden ones:
    # such files decode with PyAV.
    decode_dali = pytest.importorskip("qclip_engine.video.decode_dali")
    path, _, _ = cut
    assert "edit list hides" in decode_dali._hidden_frames_reason(decode.scan(path)[1])


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_picks_presented_frames(cut, name):
    path, times, md5s = cut
    got = HostSource((H, W), 8, max_analysis_frames=16).sample(path, check_sampler(name))
    assert got.indices.min() >= 0 and got.indices.max() < len(times)
    assert _md5s(got.frames) == [md5s[i] for i in got.indices]
    np.testing.assert_allclose(got.times, times[got.indices], atol=1e-9)

