"""Small test videos made on the spot with PyAV (nothing is committed)."""

from __future__ import annotations

import os
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

GRAY = 128


def encode(
    path: str | Path,
    frames: np.ndarray,
    *,
    codec: str = "libx264",
    fps: int = 25,
    pix_fmt: str = "yuv420p",
    options: dict | None = None,
    pts: list[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int | None = None,
    audio_seconds: float = 0.0,
) -> Path:
    """Encode uint8 RGB ``[T, H, W, 3]`` frames; ``pts``/``time_base`` make a VFR file."""
    path = Path(path)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.options = dict(options or {})
        if time_base is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        audio = None
        if audio_seconds:
            audio = out.add_stream("aac", rate=16000)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
                frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if audio is not None:
            _write_tone(out, audio, audio_seconds)
    return path


def _write_tone(out, stream, seconds: float) -> None:
    rate = stream.rate
    t = np.arange(int(rate * seconds)) / rate
    samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = rate
    out.mux(stream.encode(frame))
    out.mux(stream.encode())


def audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    path = Path(path)
    with av.open(str(path), mode="w") as out:
        _write_tone(out, out.add_stream("aac", rate=16000), seconds)
    return path


def moving_frames(t: int, h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    """Textured frames that change every frame (a drifting pattern plus noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], axis=-1)
    frames = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        frames[i] = np.clip(np.roll(base, 2 * i, axis=1) + rng.integers(-20, 20, (h, w, 3)), 0, 255)
    return frames


def static_with_burst(t: int, burst: range, h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """Flat gray frames, except independent uniform noise on the frames of ``burst``."""
    rng = np.random.default_rng(seed)
    frames = np.full((t, h, w, 3), GRAY, dtype=np.uint8)
    for i in burst:
        frames[i] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return frames


def lossless(path: str | Path, frames: np.ndarray, fps: int = 25) -> Path:
    """FFV1 in Matroska, RGB planes: decoded pixels equal ``frames`` exactly."""
    return encode(path, frames, codec="ffv1", fps=fps, pix_fmt="bgr0")


def broken_corpus(root: Path, source_files: list[Path]) -> list[Path]:
    """Damaged copies of ``source_files`` (11 each: truncations, flipped bytes, wrong extensions)
    plus a zero-byte file, random bytes and a missing path."""
    root = Path(root)
    rng = np.random.default_rng(1234)
    out = []
    for n, src in enumerate(source_files):
        data = Path(src).read_bytes()
        for j in range(4):  # random truncations
            p = root / f"trunc{n}_{j}{src.suffix}"
            p.write_bytes(data[: int(rng.integers(1, len(data)))])
            out.append(p)
        for j in range(4):  # flipped bytes (beyond the first few headers too)
            buf = bytearray(data)
            for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 64))):
                buf[pos] ^= 0xFF
            p = root / f"flip{n}_{j}{src.suffix}"
            p.write_bytes(bytes(buf))
            out.append(p)
        for ext in (".avi", ".mkv", ".png"):  # wrong extensions for the same bytes
            p = root / f"ext{n}{ext}"
            p.write_bytes(data)
            out.append(p)
    (root / "zero.mp4").write_bytes(b"")
    (root / "junk.mov").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return out + [root / "zero.mp4", root / "junk.mov", root / "missing.mp4"]


def odd_but_valid(root: Path) -> list[Path]:
    """Unusual inputs that must still be scored: one frame, grayscale, 17×9, rotated, VFR."""
    root = Path(root)
    return [
        encode(root / "one_frame.mp4", moving_frames(1)),
        encode(root / "gray.mkv", moving_frames(6), codec="ffv1", pix_fmt="gray"),
        encode(root / "odd_17x9.mkv", moving_frames(5, h=9, w=17), codec="ffv1", pix_fmt="yuv444p"),
        encode(root / "rotated.mp4", moving_frames(6, h=32, w=64), rotation=90),
        encode(root / "vfr.mkv", moving_frames(10), pts=[0, 40, 80, 100, 120, 200, 260, 300, 310, 320],
               time_base=Fraction(1, 1000)),
    ]


# -- crafted files: few bytes that ask for much work or reach outside the file ----------------
_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"dinf"}


def _mp4_boxes(data: bytes):
    i = 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
        yield kind, data[i + header:i + size]
        i += size


def _mp4_box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _mp4_full_box(kind: bytes, payload: bytes) -> bytes:
    return _mp4_box(kind, b"\0\0\0\0" + payload)  # version 0, no flags


def _mp4_rebuild(data: bytes, replace: dict) -> bytes:
    """``data``'s boxes, the ones named in ``replace`` swapped (None: dropped), parents resized."""
    out = b""
    for kind, payload in _mp4_boxes(data):
        if kind in replace:
            out += replace[kind] or b""
        elif kind in _MP4_CONTAINERS:
            out += _mp4_box(kind, _mp4_rebuild(payload, replace))
        else:
            out += _mp4_box(kind, payload)
    return out


def crafted_sample_table(path: str | Path, samples: int, template: str | Path) -> Path:
    """An MP4 whose video track declares ``samples`` one-byte samples (one ``stts`` run, constant
    ``stsz`` 1, one chunk), the ``stsd`` (H.264) of ``template`` (a plain, non-fragmented MP4 with one
    video track), and ``samples`` zero bytes of media data: a few bytes of index asking FFmpeg to
    index and read millions of packets."""
    data = Path(template).read_bytes()
    top = dict(_mp4_boxes(data))
    moov = top[b"moov"]

    def mdhd(payload: bytes) -> bytes:  # the track's duration, so no edit list or header cuts it short
        fields = bytearray(payload)
        fields[16:20] = struct.pack(">I", min(samples * 512, 2**32 - 1))
        return _mp4_box(b"mdhd", bytes(fields))

    mdhd_payload = next(p for k, p in _walk_mp4(moov) if k == b"mdhd")

    def table(offset: int) -> bytes:
        return _mp4_box(b"moov", _mp4_rebuild(moov, {
            b"stts": _mp4_full_box(b"stts", struct.pack(">III", 1, samples, 512)),
            b"stsz": _mp4_full_box(b"stsz", struct.pack(">II", 1, samples)),
            b"stsc": _mp4_full_box(b"stsc", struct.pack(">IIII", 1, 1, samples, 1)),
            b"stco": _mp4_full_box(b"stco", struct.pack(">II", 1, offset)),
            b"mdhd": mdhd(mdhd_payload),
            b"co64": None, b"stss": None, b"ctts": None, b"sdtp": None, b"edts": None,
        }))

    head = _mp4_box(b"ftyp", top[b"ftyp"])
    offset = len(head) + len(table(0)) + 16  # past the 64-bit mdat header
    with open(path, "wb") as f:
        f.write(head + table(offset) + struct.pack(">I4sQ", 1, b"mdat", 16 + samples))
        f.write(bytes(samples))
    return Path(path)


def _walk_mp4(data: bytes):
    for kind, payload in _mp4_boxes(data):
        yield kind, payload
        if kind in _MP4_CONTAINERS:
            yield from _walk_mp4(payload)


def hls_playlist(path: str | Path, segment: str | Path) -> Path:
    """An HLS playlist (a text file) naming ``segment`` by its absolute path: FFmpeg's hls demuxer
    would open that file."""
    Path(path).write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{Path(segment).resolve()}\n"
                          "#EXT-X-ENDLIST\n")
    return Path(path)


def concat_list(path: str | Path, target: str | Path) -> Path:
    """An ffconcat list naming ``target``: FFmpeg's concat demuxer (probed on its first line) would open it."""
    Path(path).write_text(f"ffconcat version 1.0\nfile '{Path(target).resolve()}'\n")
    return Path(path)


def y4m_header(path: str | Path, width: int, height: int) -> Path:
    """A Y4M header declaring a ``width``×``height`` picture, one frame marker and 4 KiB of data."""
    Path(path).write_bytes(f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + bytes(4096))
    return Path(path)


def _ffmpeg(*args) -> None:
    import subprocess

    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *map(str, args)], check=True)


def hostile_corpus(root: Path, sources: list[Path]) -> list[tuple[str, set[str]]]:
    """Over 200 inputs as a hostile tester passes them to ``qclip-score``, each with the outcomes
    allowed for it: ``"score"`` (possibly with a ``truncated`` warning) or error codes.

    ``sources`` are small intact videos (the first an H.264 MP4). From them: every streamable
    container (MKV, WebM, MPEG-TS, faststart and fragmented MP4, Y4M), cut at many offsets and
    with bytes flipped; raw elementary streams; a mirrored display matrix; dropped frames; two
    video streams; cover art; a Y4M header of 65535×65535; an index without its media data;
    empty, blank and non-UTF-8 names; empty directories (one named ``x.mp4``); a FIFO; a
    symlink loop; a name too long; an unreadable file; zero bytes, junk and a missing path; an
    MP4 cut inside its index; HLS playlists naming a file that exists and one that does not, an
    ffconcat list named ``.mp4``, a sample table declaring 7 M samples and a 16000² picture.
    """
    root = Path(root)
    rng = np.random.default_rng(2026)
    h264 = sources[0]
    made = root / "made"
    made.mkdir(parents=True)
    derived = {}
    for name, args in [("ts.ts", ["-c", "copy"]), ("fast.mp4", ["-c", "copy", "-movflags", "+faststart"]),
                       ("frag.mp4", ["-c", "copy", "-movflags", "frag_keyframe+empty_moov"]),
                       ("raw.y4m", ["-c:v", "rawvideo", "-pix_fmt", "yuv420p"]), ("raw.h264", ["-c", "copy", "-f", "h264"]),
                       ("mirrored.mp4", ["-c", "copy"])]:
        flags = ["-display_hflip"] if name == "mirrored.mp4" else []
        _ffmpeg(*flags, "-i", h264, *args, made / name)
        derived[name] = made / name
    # A damaged file may also declare absurd sizes (a flipped sample count, picture size) or probe as
    # another format.
    anything = {"score", "truncated", "decode_failed", "not_a_video", "unsupported_codec", "audio_only",
                "too_many_frames", "picture_too_large", "format_not_allowed"}
    corpus: list[tuple[str, set[str]]] = []
    cuttable = [*sources, derived["ts.ts"], derived["fast.mp4"], derived["frag.mp4"], derived["raw.y4m"]]
    for n, src in enumerate(cuttable):
        data = src.read_bytes()
        offsets = sorted({int(len(data) * f) for f in (0.02, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.97, 0.995)}
                         | {int(x) for x in rng.integers(1, len(data), 8)})
        for j, cut in enumerate(offsets):
            p = root / f"cut{n}_{j}{src.suffix}"
            p.write_bytes(data[:cut])
            corpus.append((str(p), anything))
        for j in range(5):  # flipped bytes anywhere, headers included
            buf = bytearray(data)
            for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 48))):
                buf[pos] ^= 0xFF
            p = root / f"flip{n}_{j}{src.suffix}"
            p.write_bytes(bytes(buf))
            corpus.append((str(p), anything))
    for n, src in enumerate(sources):  # the same bytes under the wrong name: still scored
        p = root / f"renamed{n}.png"
        p.write_bytes(src.read_bytes())
        corpus.append((str(p), {"score"}))
    # Kinds, each once.
    corpus += [(str(derived["raw.h264"]), {"score"}), (str(derived["mirrored.mp4"]), {"score"})]
    kept = [i for i in range(30) if i not in (10, 11)]
    corpus.append((str(encode(root / "dropped.mkv", moving_frames(28), fps=30, pts=[round(i * 1000 / 29.97) for i in kept],
                              time_base=Fraction(1, 1000))), {"score"}))
    _ffmpeg("-i", sources[0], "-i", sources[-1], "-map", "0:v", "-map", "1:v", "-c", "copy", root / "two_streams.mkv")
    corpus.append((str(root / "two_streams.mkv"), {"score"}))
    tone = audio_only(root / "tone.m4a")
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64", "-frames:v", "1", root / "cover.png")
    _ffmpeg("-i", tone, "-i", root / "cover.png", "-map", "0", "-map", "1", "-c:a", "aac", "-c:v", "mjpeg",
            "-disposition:v", "attached_pic", root / "song.m4a")
    corpus += [(str(tone), {"audio_only"}), (str(root / "song.m4a"), {"audio_only"})]
    (root / "huge.y4m").write_bytes(b"YUV4MPEG2 W65535 H65535 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + bytes(4096))
    corpus.append((str(root / "huge.y4m"), {"decode_failed"}))
    fast = derived["fast.mp4"].read_bytes()
    (root / "index_only.mp4").write_bytes(fast[: fast.index(b"mdat") + 4])
    corpus.append((str(root / "index_only.mp4"), {"truncated"}))
    moov = fast.index(b"moov") - 4  # cut inside the index: no track, or only those before the cut
    for n, cut in enumerate((moov + 40, moov + 200)):
        (root / f"moov_cut{n}.mp4").write_bytes(fast[:cut])
        corpus.append((str(root / f"moov_cut{n}.mp4"), {"truncated"}))
    # Files that read other files or ask for unbounded work (video/container.py, video/limits.py).
    corpus += [(str(hls_playlist(root / "x.m3u8", derived["ts.ts"])), {"format_not_allowed"}),
               (str(hls_playlist(root / "gone.m3u8", root / "no_such_segment.ts")), {"format_not_allowed"}),
               (str(concat_list(root / "list.mp4", h264)), {"format_not_allowed"}),
               (str(crafted_sample_table(root / "7M_samples.mp4", 7_000_000, derived["fast.mp4"])), {"too_many_frames"}),
               (str(y4m_header(root / "16000x16000.y4m", 16000, 16000)), {"picture_too_large"})]
    corpus += [("", {"invalid_input"}), ("  \t", {"invalid_input"})]
    odd = os.path.join(os.fsencode(root), b"bad\xffname.mp4")
    with open(odd, "wb") as f:
        f.write(h264.read_bytes())
    corpus.append((os.fsdecode(odd), {"score"}))
    for name in ("empty_dir", "x.mp4"):
        (root / name).mkdir()
        corpus.append((str(root / name), {"no_videos"}))
    os.mkfifo(root / "fifo.mp4")
    corpus.append((str(root / "fifo.mp4"), {"not_a_video"}))
    (root / "loop_a.mp4").symlink_to(root / "loop_b.mp4")
    (root / "loop_b.mp4").symlink_to(root / "loop_a.mp4")
    corpus.append((str(root / "loop_a.mp4"), {"not_found"}))
    corpus.append((str(root / ("n" * 300 + ".mp4")), {"not_found"}))
    locked = root / "locked.mp4"
    locked.write_bytes(h264.read_bytes())
    locked.chmod(0)  # root still reads it
    corpus.append((str(locked), {"permission_denied"} if os.geteuid() else {"score"}))
    (root / "zero.mp4").write_bytes(b"")
    (root / "junk.mov").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    corpus += [(str(root / "zero.mp4"), {"empty_file"}), (str(root / "junk.mov"), {"not_a_video"}),
               (str(root / "missing.mp4"), {"not_found"})]
    corpus += [(str(src), {"score"}) for src in sources]
    return corpus


def noisy_labelled_clips(root: Path, count: int = 12) -> Path:
    """``count`` clips of 6 frames with ``labels.txt`` (official 4-column lines): the label is how much
    noise was added, a signal a model can learn. The training tests' dataset."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        noise = 8 * i
        frames = moving_frames(6, h=32, w=32, seed=i).astype(np.int16)
        frames += rng.integers(-noise, noise + 1, frames.shape)
        encode(root / f"clip{i}.mp4", np.clip(frames, 0, 255).astype(np.uint8), options={"qp": "10"})
        lines.append(f"clip{i}.mp4,0.24,25,{100 - noise}")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root
