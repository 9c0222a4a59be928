"""The ffmpeg and VMAF steps of the demo dataset, one clip at a time.

Every step runs the single-threaded ffmpeg of imageio-ffmpeg (with libx264 and libvmaf),
writes to a temporary name, checks the result (size and frame count) and only then moves
it into place, so an interrupted build never leaves a half clip under its final name. A
failed step raises :class:`FFmpegFailure`, which the build collects and reports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .demo_plan import PRISTINE, VMAF_MODEL, X264_PRESET, Clip, Source
from .errors import DemoInputError


class FFmpegFailure(Exception):
    """One failed step; ``what`` names its clip, ``stderr`` is what ffmpeg said."""

    def __init__(self, what: str, cmd: list[str], stderr: str):
        super().__init__(what)
        self.what, self.cmd, self.stderr = what, cmd, stderr

    def tail(self, lines: int = 6) -> str:
        kept = [line for line in self.stderr.splitlines() if line.strip()]
        return "\n".join(kept[-lines:]) or "(no stderr)"


def as_failure(exc: Exception, what: str) -> FFmpegFailure:
    """Any exception of a step as an FFmpegFailure naming ``what``."""
    return exc if isinstance(exc, FFmpegFailure) else FFmpegFailure(what, [], f"{type(exc).__name__}: {exc}")


def ffmpeg_exe() -> str:
    """The ffmpeg of imageio-ffmpeg; :class:`DemoInputError` (with the fix) when not installed."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise DemoInputError(
            "the demo dataset needs the ffmpeg of imageio-ffmpeg (with libx264 and libvmaf): "
            "pip install -e '.[dev]'  (or pip install imageio-ffmpeg)"
        ) from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_version(ffmpeg: str) -> str:
    out = subprocess.run([ffmpeg, "-hide_banner", "-version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].strip()


def _run(cmd: list[str], what: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, stdin=subprocess.DEVNULL)
    except OSError as exc:
        raise FFmpegFailure(what, cmd, f"{type(exc).__name__}: {exc}") from None
    if proc.returncode != 0:
        raise FFmpegFailure(what, cmd, proc.stderr.strip() + f"\n(exit status {proc.returncode})")
    return proc


def _base(ffmpeg: str) -> list[str]:
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]


def _x264(crf: int | None) -> list[str]:
    quality = ["-qp", "0"] if crf is None else ["-crf", str(crf)]
    return ["-c:v", "libx264", *quality, "-preset", X264_PRESET, "-pix_fmt", "yuv420p", "-threads", "1",
            "-map_metadata", "-1", "-movflags", "+faststart"]


def check_video(path: Path, size: int, frames: int, what: str) -> None:
    """The written clip must be size×size with exactly ``frames`` frames."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            got = sum(1 for packet in container.demux(stream) if packet.size)
            dims = (stream.codec_context.width, stream.codec_context.height)
    except Exception as exc:  # noqa: BLE001 (any reading failure is reported, with its clip)
        raise FFmpegFailure(what, [], f"cannot read the written clip {path.name}: {exc}") from None
    if got != frames or dims != (size, size):
        raise FFmpegFailure(what, [], f"{path.name}: {dims[0]}x{dims[1]}, {got} frames; expected {size}x{size}, {frames}")


def temporary(path: Path) -> Path:
    """Where a clip is written before it is checked (hidden, removed by the next build)."""
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def cut_source(ffmpeg: str, clip: Clip, source: Source, ref: Path, size: int) -> None:
    """Crop, trim and scale one source out of its clip; x264 lossless (the VMAF reference)."""
    end = source.start_frame + source.frames
    vf = (
        f"trim=start_frame={source.start_frame}:end_frame={end},setpts=PTS-STARTPTS,"
        f"crop={source.side}:{source.side}:{source.x}:{source.y},"
        f"scale={size}:{size}:flags=bicubic,setsar=1,format=yuv420p"
    )
    tmp = temporary(ref)
    cmd = [*_base(ffmpeg), "-threads", "1", "-i", clip.path, "-map", "0:v:0", "-an", "-sn", "-dn",
           "-vf", vf, "-frames:v", str(source.frames), "-r", source.fps, *_x264(None), str(tmp)]
    _run(cmd, f"cut {source.name}")
    check_video(tmp, size, source.frames, f"cut {source.name}")
    os.replace(tmp, ref)


def render(ffmpeg: str, ref: Path, video: Path, vf: str | None, crf: int, size: int, frames: int, what: str) -> None:
    """One distortion of ``ref``: its filter (if any), then x264 at ``crf``."""
    tmp = temporary(video)
    filters = ["-vf", vf.format(w=size, h=size)] if vf else []
    cmd = [*_base(ffmpeg), "-threads", "1", "-i", str(ref), "-map", "0:v:0", *filters,
           "-fps_mode", "passthrough", *_x264(crf), str(tmp)]
    _run(cmd, what)
    check_video(tmp, size, frames, what)
    os.replace(tmp, video)


def vmaf(ffmpeg: str, distorted: Path, reference: Path, what: str) -> float:
    """Mean VMAF of ``distorted`` (first input) against ``reference`` (second)."""
    with tempfile.TemporaryDirectory(prefix="vmaf-") as tmp:
        graph = f"[0:v][1:v]libvmaf=model={VMAF_MODEL}:log_fmt=json:log_path=vmaf.json:n_threads=1"
        cmd = [*_base(ffmpeg), "-threads", "1", "-i", str(Path(distorted).resolve()),
               "-threads", "1", "-i", str(Path(reference).resolve()),
               "-lavfi", graph, "-filter_threads", "1", "-f", "null", "-"]
        _run(cmd, what, cwd=tmp)
        try:
            log = json.loads((Path(tmp) / "vmaf.json").read_text())
            return float(log["pooled_metrics"]["vmaf"]["mean"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FFmpegFailure(what, cmd, f"unreadable libvmaf log: {exc}") from None


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def make_version(ffmpeg: str, source: Source, version: tuple[str, str | None, int | None],
                 refs: Path, videos: Path, size: int) -> float:
    """One version of a source (the pristine one is its reference itself) and its VMAF."""
    name, vf, crf = version
    ref = refs / f"{source.name}.mp4"
    video = videos / f"{source.name}__{name}.mp4"
    if name == PRISTINE:
        _link_or_copy(ref, video)
    else:
        render(ffmpeg, ref, video, vf, crf, size, source.frames, video.name)
    return vmaf(ffmpeg, video, ref, video.name)
