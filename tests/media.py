"""Small test videos made on the spot with PyAV (nothing is committed)."""

from __future__ import annotations

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
