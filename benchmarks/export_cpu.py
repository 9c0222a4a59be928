"""ONNX Runtime (the exported, folded graph) against the unfolded eager torch model, CPU, same run.

    python -m benchmarks.export_cpu [--backbone PE-Core-T-16-384] [--batch 8] [--frames 8] [--repeats 3]

Both start from the same uint8 frames ``[B, F, H, W, 3]`` of the same random-init model
(moved off its init, so the adapters do real work):

* baseline — the eager ``QCLIP``: ``normalize`` then ``model(video)``, which runs the text
  tower every call as the unfolded model does, fp32, ``torch.inference_mode``;
* folded torch — ``FoldedQCLIP`` eager (what the folds alone buy);
* onnxruntime — ``model.onnx`` from ``export_onnx``, CPUExecutionProvider, all graph
  optimisations, as many intra-op threads as torch uses.

Goal (issue): onnxruntime ≥ 1.5× the baseline at batch 8 × 8 frames.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import timed, write_result
from qclip_engine import QCLIP, QCLIPConfig
from qclip_engine.model.folded import fold
from qclip_engine.runtime.onnx_graph import INPUT, export_onnx
from qclip_engine.runtime.onnxruntime_backend import session

GOAL = 1.5


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="PE-Core-T-16-384")
    parser.add_argument("--batch", type=int, default=8, help="videos per call")
    parser.add_argument("--frames", type=int, default=8, help="frames per video")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = QCLIP(QCLIPConfig(backbone=args.backbone, pretrained=None, num_frames=args.frames)).eval()
    with torch.no_grad():  # off the init: α and weights as after training
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folded = fold(model)
    h, w = model.image_size
    pixels = torch.randint(0, 256, (args.batch, args.frames, h, w, 3), dtype=torch.uint8)

    with tempfile.TemporaryDirectory() as tmp:
        graph = export_onnx(folded, Path(tmp) / "model.onnx")
        sess = session(graph, threads=torch.get_num_threads())
        feed = {INPUT: pixels.numpy()}
        with torch.inference_mode():
            expected = model(model.normalize(pixels)).numpy()
            onnx_score = sess.run(None, feed)[1]
            max_diff = float(np.abs(onnx_score - expected).max())
            eager = timed(lambda: model(model.normalize(pixels)), args.repeats)
            folded_t = timed(lambda: folded(pixels), args.repeats)
        ort_t = timed(lambda: sess.run(None, feed), args.repeats)

    frames = args.batch * args.frames
    results = {}
    for name, times in (("eager_unfolded_torch", eager), ("folded_torch", folded_t), ("onnxruntime", ort_t)):
        results[name] = {"s_median": statistics.median(times), "s_all": times, "frames_per_s": frames / statistics.median(times)}
        print(f"{name:<22} {results[name]['frames_per_s']:7.2f} frames/s  ({statistics.median(times):.2f} s per call)")
    ratio = results["onnxruntime"]["frames_per_s"] / results["eager_unfolded_torch"]["frames_per_s"]
    print(f"onnxruntime / eager torch: {ratio:.2f}× (goal ≥ {GOAL}×); max |Δscore| {max_diff:.1e}")

    import onnxruntime

    path = write_result(
        "export_cpu",
        {
            "what": "CPU: exported folded graph in ONNX Runtime vs the unfolded eager torch model, same frames, same run",
            "backbone": args.backbone,
            "pretrained": None,
            "image_size": [h, w],
            "batch_videos": args.batch,
            "frames_per_video": args.frames,
            "results": results,
            "ratio_onnxruntime_vs_eager": ratio,
            "ratio_folded_torch_vs_eager": results["folded_torch"]["frames_per_s"] / results["eager_unfolded_torch"]["frames_per_s"],
            "goal_ratio": GOAL,
            "max_abs_score_diff": max_diff,
            "onnxruntime": onnxruntime.__version__,
            "command": " ".join(["python -m benchmarks.export_cpu", *(sys.argv[1:] if argv is None else argv)]),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
