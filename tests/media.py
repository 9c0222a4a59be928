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
