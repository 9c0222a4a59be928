"""What Ray adds: the same clips scored by the local ``QualityEngine`` and by the Ray Data pipeline
(``qclip_engine/cluster/batch.py``) with 1 and 2 scoring actors, in one run on this machine.

    python -m benchmarks.ray_batch [--videos 48] [--out benchmarks/results/ray_batch.json]

The model is the demo-sized random-init PE-Core-T (160 px, 4 frames) when no ``--artifact`` is
given: the figures are throughput and overhead, never accuracy. The clips are windows of the real
sample clips, re-encoded once into a temporary directory. Ray runs a local cluster inside this
process (``ray.init``: start-up is reported apart from the scoring time). Each configuration scores
the same list once after a warm-up run of a few clips (actors load the model once per run, so the
load is part of each Ray run, as it is of a job).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import torch

from qclip_engine import QCLIP, QCLIPConfig, QualityEngine, save_artifact
from qclip_engine.samples import sample_clips

from .common import write_result


def _clips(out: Path, count: int) -> list[str]:
    """``count`` 2-second windows of the sample clips, each its own file."""
    sources = sample_clips()
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        dst = out / f"{src.stem}_{i:03d}.mp4"
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-ss", str(0.5 * (i // len(sources))),
                        "-i", str(src), "-t", "2", "-an", "-c:v", "libx264", "-preset", "veryfast", str(dst)], check=True)
        paths.append(str(dst))
    return paths


def _artifact(out: Path) -> Path:
    torch.manual_seed(0)
    model = QCLIP(QCLIPConfig(backbone="PE-Core-T-16-384", pretrained=None, image_size=160, num_frames=4,
                              sampler="segment_mse_mean"))
    return save_artifact(model, out / "artifact")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--artifact", type=Path, help="default: a random-init demo-sized model")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--logical-cpus", type=int, default=4,
                        help="CPUs Ray is told it has (2 actors + decode tasks on 2 cores need more than 2 slots)")
    args = parser.parse_args(argv)

    import ray

    from qclip_engine.cluster.batch import RayOptions, ordered_records, score_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = _clips(tmp, args.videos)
        artifact = args.artifact or _artifact(tmp)

        engine = QualityEngine(artifact, engine="torch", device="cpu", batch=args.batch)
        list(engine.score(paths[:4]))  # warm-up
        t0 = time.perf_counter()
        local = [r.to_record() for r in engine.score(paths)]
        local_s = time.perf_counter() - t0
        del engine

        t0 = time.perf_counter()
        ray.init(num_cpus=args.logical_cpus, include_dashboard=False, log_to_driver=False)
        ray_start_s = time.perf_counter() - t0
        runs = {}
        half = paths[: len(paths) // 2]
        for actors in (1, 2):
            options = RayOptions(engine="torch", device="cpu", batch=args.batch, actors=actors)
            score_dataset(paths[:4], artifact, options)  # warm-up: workers started, modules imported
            t0 = time.perf_counter()
            score_dataset(half, artifact, options)
            half_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            records = ordered_records(score_dataset(paths, artifact, options))
            seconds = time.perf_counter() - t0
            worst = max(abs(a["score"] - b["score"]) for a, b in zip(records, local) if "score" in a)
            per_video = (seconds - half_s) / (len(paths) - len(half))
            runs[f"{actors}_actor{'s' if actors > 1 else ''}"] = {
                "seconds": seconds,
                "videos_per_s": len(paths) / seconds,
                "overhead_s": seconds - local_s,
                "overhead_pct": 100 * (seconds - local_s) / local_s,
                # two job sizes in the same run: the fixed cost of a job (actor start, model load, the
                # missing-id check) apart from the cost per video, against the local engine's
                "seconds_half_job": half_s,
                "fixed_s_per_job": seconds - per_video * len(paths),
                "per_video_ms": 1e3 * per_video,
                "local_per_video_ms": 1e3 * local_s / len(paths),
                "max_abs_score_diff_vs_local": worst,
                "same_frames_as_local": all(a.get("frames") == b.get("frames") for a, b in zip(records, local)),
            }
        ray.shutdown()

    payload = {
        "command": "python -m benchmarks.ray_batch" + (f" --videos {args.videos}" if args.videos != 48 else ""),
        "what": "the same clips: local QualityEngine (decode threads + one torch CPU backend) vs the Ray Data "
                "pipeline (decode tasks + scoring actors, each actor its own model) on one machine",
        "model": str(args.artifact) if args.artifact else "random-init PE-Core-T-16-384 at 160 px, 4 frames "
                 "(throughput only, not accuracy)",
        "videos": len(paths),
        "batch": args.batch,
        "cpu_cores": os.cpu_count(),
        "ray_logical_cpus": args.logical_cpus,
        "ray_init_s": ray_start_s,
        "local": {"seconds": local_s, "videos_per_s": len(paths) / local_s},
        "ray": runs,
        "note": "on one 2-core machine Ray cannot add compute: the figures are the overhead Ray adds "
                "(scheduling, the object store between decode and scoring, per-actor model loads); across "
                "N GPU nodes the per-GPU figure multiplies (README, Scaling out)",
    }
    path = write_result("ray_batch", payload)
    print(path)
    for name, run in runs.items():
        print(f"{name}: {run['seconds']:.1f} s ({run['overhead_pct']:+.0f} % vs local {local_s:.1f} s); "
              f"{run['fixed_s_per_job']:.1f} s per job + {run['per_video_ms']:.0f} ms per video "
              f"(local {run['local_per_video_ms']:.0f} ms)")
    return path


if __name__ == "__main__":
    main()
