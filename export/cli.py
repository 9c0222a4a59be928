"""``qclip-export ARTIFACT --engine onnx|trt [--fp16] [--batch N] [--out DIR]``.

Folds the artifact's model (DESIGN §6), exports it, and checks the export against the
torch FP32 model on a fixed batch of real frames. Files go beside the artifact (or to
``--out``): ``model.onnx`` (and ``model.fp16.onnx`` with ``--fp16``); for ``--engine trt``
also ``model.plan`` + ``model.plan.json`` and ``timing.cache``; and the parity report
``parity_onnx.json`` / ``parity_trt.json``.

Exit codes: 0 done; 1 the FP32 export is outside the parity tolerance; 2 the requested
engine cannot be built here (no TensorRT) or the artifact cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

FP32_TOLERANCE = 1e-4  # DESIGN §6: ONNX Runtime within 1e-4 of the torch module


def _step(message: str) -> float:
    print(message, flush=True)
    return time.perf_counter()


def _done(started: float) -> None:
    print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)


def _run_onnx(path: Path):
    from .onnx import INPUT, session

    sess = session(path)

    def run(frames: np.ndarray):
        sims, score = sess.run(None, {INPUT: frames})
        return sims, score

    return run


def _run_trt(runner, chunk: int):
    import torch

    def run(frames: np.ndarray):
        sims, scores = [], []
        for start in range(0, len(frames), chunk):
            s, sc = runner(torch.from_numpy(frames[start : start + chunk]).to(runner.device))
            sims.append(s.cpu().numpy())
            scores.append(sc.cpu().numpy())
        torch.cuda.synchronize(runner.device)
        return np.concatenate(sims), np.concatenate(scores)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qclip-export", description="Fold and export a trained Q-CLIP artifact.")
    parser.add_argument("artifact", type=Path, help="artifact directory (config.json + adapters.safetensors)")
    parser.add_argument("--engine", choices=("onnx", "trt"), required=True)
    parser.add_argument("--fp16", action="store_true", help="also an FP16 graph (FP32 LayerNorms and head); the TensorRT engine is built from it")
    parser.add_argument("--batch", type=int, default=8, help="TensorRT: optimal batch of videos (profile 1 … 2·batch)")
    parser.add_argument("--out", type=Path, help="output directory (default: the artifact directory)")
    parser.add_argument("--weights", help="local backbone weights, when the artifact's source is not reachable")
    parser.add_argument("--parity-videos", nargs="+", help="videos for the parity check (default: the sample clips)")
    args = parser.parse_args(argv)

    if args.engine == "trt":
        from .tensorrt import TensorRTUnavailable, import_tensorrt

        try:
            import_tensorrt()
        except TensorRTUnavailable as exc:
            print(f"qclip-export: {exc}", file=sys.stderr)
            return 2

    from qclip_engine import load_artifact
    from qclip_engine.errors import QCLIPError

    from .fold import fold, reduced_precision
    from .onnx import export_onnx
    from .parity import parity_frames, parity_report, reference_outputs

    out = args.out or args.artifact
    out.mkdir(parents=True, exist_ok=True)
    t = _step(f"loading {args.artifact}")
    try:
        model = load_artifact(args.artifact, pretrained=args.weights) if args.weights else load_artifact(args.artifact)
    except QCLIPError as exc:
        print(f"qclip-export: {exc}", file=sys.stderr)
        return 2
    _done(t)
    folded = fold(model)

    t = _step(f"exporting {out / 'model.onnx'} (FP32)")
    graphs = {"model.onnx": export_onnx(folded, out / "model.onnx")}
    _done(t)
    if args.fp16:
        t = _step(f"exporting {out / 'model.fp16.onnx'} (FP16, FP32 LayerNorms and head)")
        graphs["model.fp16.onnx"] = export_onnx(reduced_precision(folded), out / "model.fp16.onnx")
        _done(t)

    t = _step("parity: decoding the fixed batch and running the torch FP32 reference")
    frames, source = parity_frames(model.image_size, model.config.num_frames, args.parity_videos)
    reference = reference_outputs(model, frames)
    _done(t)

    if args.engine == "onnx":
        runs = {name: _run_onnx(path) for name, path in graphs.items()}
        report_path = out / "parity_onnx.json"
        runtime = "onnxruntime CPUExecutionProvider"
    else:
        from .tensorrt import Profile, TensorRTRunner, build_engine

        onnx_path = graphs["model.fp16.onnx" if args.fp16 else "model.onnx"]
        precision = "fp16 (fp32 layernorms and head)" if args.fp16 else "fp32"
        t = _step(f"building {out / 'model.plan'} from {onnx_path.name} ({precision}, batch {args.batch})")
        profile = Profile(args.batch, model.config.num_frames, tuple(model.image_size))
        build_engine(onnx_path, out / "model.plan", profile, precision=precision)
        _done(t)
        runs = {"model.plan": _run_trt(TensorRTRunner(out / "model.plan"), 2 * args.batch)}
        report_path = out / "parity_trt.json"
        runtime = "tensorrt"

    report = {"artifact": str(args.artifact), "engine": args.engine, "runtime": runtime, "results": {}}
    for name, run in runs.items():
        report["results"][name] = parity_report(reference, run, frames, source)
    report_path.write_text(json.dumps(report, indent=2) + "\n")

    status = 0
    for name, r in report["results"].items():
        print(
            f"{name}: max |Δscore| {r['score']['max_abs_diff']:.2e}, max |Δlevel_sims| {r['level_sims']['max_abs_diff']:.2e}, "
            f"SROCC vs torch {r['srocc_vs_torch']:.4f}"
        )
        if name == "model.onnx" and r["score"]["max_abs_diff"] > FP32_TOLERANCE:
            print(f"qclip-export: {name} differs from the torch model by more than {FP32_TOLERANCE}", file=sys.stderr)
            status = 1
    print(f"parity report: {report_path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
