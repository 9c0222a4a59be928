"""CPU frames/s of the eager Q-CLIP model (random-init backbone), at batch 1 and 8 videos.

    python -m benchmarks.model_forward [--backbone PE-Core-T-16-384] [--frames 8] [--repeats 3]

A recorded figure, not a target: it is the eager, unfolded torch model that later
export and runtime work is measured against. Each forward includes the five-prompt
text pass (the unfolded model runs its text tower every call); the visual tower alone
is timed too, so the text share is visible.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from benchmarks.common import timed, write_result
from qclip_engine import QCLIP, QCLIPConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="PE-Core-T-16-384")
    parser.add_argument("--frames", type=int, default=8, help="frames per video")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="videos per forward")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="model_forward", help="results file name")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = QCLIP(QCLIPConfig(backbone=args.backbone, pretrained=None, num_frames=args.frames)).eval()
    h, w = model.image_size
    runs = []
    with torch.inference_mode():
        text_times = timed(model.forward_text, args.repeats)
        for batch in args.batches:
            pixels = torch.randint(0, 256, (batch, args.frames, h, w, 3), dtype=torch.uint8)
            video = model.normalize(pixels)
            full = timed(lambda: model(video), args.repeats)
            visual = timed(lambda: model.encode_frames(video.flatten(0, 1)), args.repeats)
            frames = batch * args.frames
            run = {
                "batch_videos": batch,
                "frames_per_video": args.frames,
                "forward_s_median": statistics.median(full),
                "forward_s_all": full,
                "frames_per_s": frames / statistics.median(full),
                "videos_per_s": batch / statistics.median(full),
                "visual_only_frames_per_s": frames / statistics.median(visual),
            }
            runs.append(run)
            print(
                f"batch {batch:>2} × {args.frames} frames: {run['frames_per_s']:.2f} frames/s "
                f"({run['videos_per_s']:.3f} videos/s; visual tower alone {run['visual_only_frames_per_s']:.2f} frames/s)"
            )
    path = write_result(
        args.name,
        {
            "what": "eager QCLIP forward (visual tower + adapters + 5-prompt text pass), fp32, CPU, torch.inference_mode",
            "backbone": args.backbone,
            "pretrained": None,
            "image_size": list(model.image_size),
            "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
            "text_pass_s_median": statistics.median(text_times),
            "runs": runs,
            "command": " ".join(["python -m benchmarks.model_forward", *(sys.argv[1:] if argv is None else argv)]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
