"""``qclip-export ARTIFACT --engine onnx|trt [--fp16] [--int8] [--batch N] [--out DIR]``.

Turns the artifact's model (of any family) into its deployable module (Q-CLIP: folded), exports
it, and checks the export — run by the runtime's own backends — against the torch FP32 model
itself (Q-CLIP: unfolded) on a fixed batch of real frames. Files go beside the artifact (or to
``--out``): ``model.onnx`` (and ``model.fp16.onnx`` with ``--fp16``); for ``--engine trt``
also ``model.plan`` + ``model.plan.json`` and ``timing.cache``; and the parity report
``parity_onnx.json`` / ``parity_trt.json``. With ``--int8`` (ONNX only): ``model.int8.onnx``
(``qclip_engine/runtime/quantize.py``) and ``precision.json``, the score drift of CPU BF16 (torch)
and INT8 (ONNX Runtime) against FP32 on ``DRIFT_VIDEOS`` windows of the parity clips — what
``--precision auto`` on the CPU requires before it uses either.

Exit codes: 0 done; 1 the FP32 export is outside the parity tolerance; 2 the requested
engine cannot be built here (no TensorRT) or the artifact cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


FP32_TOLERANCE = 1e-4  # the FP32 graph's max |Δscore| against the torch module (docs/architecture.md)


def _step(message: str) -> float:
    print(message, flush=True)
    return time.perf_counter()


def _done(started: float) -> None:
    print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qclip-export", description="Export a trained artifact (Q-CLIP folded, or another family) and check it.")
    parser.add_argument("artifact", type=Path, help="artifact directory (config.json and its tensors file)")
    parser.add_argument("--engine", choices=("onnx", "trt"), required=True)
    parser.add_argument("--fp16", action="store_true", help="also an FP16 graph (FP32 LayerNorms and head); the TensorRT engine is built from it")
    parser.add_argument("--int8", action="store_true",
                        help="also the INT8 graph for CPUs (model.int8.onnx) and the measured score drift of CPU BF16 "
                             "and INT8 against FP32 (precision.json, which --precision auto reads); --engine onnx only")
    parser.add_argument("--batch", type=int, default=8, help="TensorRT: optimal batch of videos (profile 1 … 2·batch)")
    parser.add_argument("--out", type=Path, help="output directory (default: the artifact directory)")
    parser.add_argument("--weights", help="local backbone weights, when the artifact's source is not reachable")
    parser.add_argument("--parity-videos", nargs="+", help="videos for the parity check (default: the sample clips)")
    args = parser.parse_args(argv)
    if args.int8 and args.engine != "onnx":
        parser.error("--int8 is for the CPU graph: use it with --engine onnx")

    if args.engine == "trt":
        from qclip_engine.runtime.tensorrt_backend import TensorRTUnavailable, import_tensorrt

        try:
            import_tensorrt()
        except TensorRTUnavailable as exc:
            print(f"qclip-export: {exc}", file=sys.stderr)
            return 2

    import torch

    from qclip_engine.artifact import load_artifact
    from qclip_engine.errors import QCLIPError
    from qclip_engine.model.families import deployable
    from qclip_engine.runtime.onnx_graph import export_onnx

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
    t = _step(f"exporting {out / 'model.onnx'} (FP32)")
    graphs = {"model.onnx": export_onnx(deployable(model), out / "model.onnx")}
    _done(t)
    if args.fp16:
        t = _step(f"exporting {out / 'model.fp16.onnx'} (FP16, FP32 LayerNorms and head)")
        graphs["model.fp16.onnx"] = export_onnx(deployable(model, torch.float16), out / "model.fp16.onnx")
        _done(t)
    if not args.int8:
        _remove_stale_int8(out)
    if args.int8:
        from qclip_engine.runtime.quantize import quantize_int8

        t = _step(f"quantizing {out / 'model.int8.onnx'} (INT8 matrix products; FP32 LayerNorms, softmax and head)")
        graphs["model.int8.onnx"] = quantize_int8(graphs["model.onnx"], out / "model.int8.onnx")
        _done(t)

    t = _step("parity: decoding the fixed batch and running the torch FP32 reference")
    frames, source = parity_frames(model.image_size, model.config.num_frames, args.parity_videos,
                                   preprocessing=model.config.preprocessing)
    reference = reference_outputs(model, frames)
    _done(t)

    if args.engine == "onnx":
        from qclip_engine.runtime.onnxruntime_backend import GRAPH_FILES, OnnxRuntimeBackend

        precisions = {file: precision for precision, file in GRAPH_FILES.items()}
        runs = {name: OnnxRuntimeBackend(None, "cpu", graph=path, precision=precisions[name]).run
                for name, path in graphs.items()}
        report_path = out / "parity_onnx.json"
        runtime = "qclip_engine.runtime onnxruntime backend, CPUExecutionProvider"
    else:
        from qclip_engine.runtime.tensorrt_backend import TensorRTBackend

        from .tensorrt import Profile, build_engine

        onnx_path = graphs["model.fp16.onnx" if args.fp16 else "model.onnx"]
        precision = "fp16 (fp32 layernorms and head)" if args.fp16 else "fp32"
        t = _step(f"building {out / 'model.plan'} from {onnx_path.name} ({precision}, batch {args.batch})")
        profile = Profile(args.batch, model.config.num_frames, tuple(model.image_size))
        build_engine(onnx_path, out / "model.plan", profile, precision=precision)
        _done(t)
        runs = {"model.plan": TensorRTBackend(out / "model.plan", "cuda").run}
        report_path = out / "parity_trt.json"
        runtime = "qclip_engine.runtime tensorrt backend"

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
    if args.int8:
        _measure_drift(model, args, graphs["model.int8.onnx"], out)
    return status


def _remove_stale_int8(out: Path) -> None:
    """A new FP32 graph makes an earlier INT8 graph and its drift record another model's: remove them."""
    from qclip_engine.runtime.cpu_choice import DRIFT_FILE

    for name in ("model.int8.onnx", DRIFT_FILE):
        if (out / name).is_file():
            (out / name).unlink()
            print(f"removed {out / name} (from an earlier export; --int8 writes it again)", flush=True)


def _measure_drift(model, args, int8_graph: Path, out: Path) -> None:
    """Write ``precision.json``: BF16 (torch) and INT8 (ONNX Runtime) scores against FP32."""
    from qclip_engine import defaults
    from qclip_engine.runtime.cpu_choice import DRIFT_FILE, model_fingerprint
    from qclip_engine.runtime.cpu_features import cpu_identity
    from qclip_engine.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from qclip_engine.runtime.torch_backend import TorchBackend

    from .parity import DRIFT_VIDEOS, parity_frames, precision_drift, reference_outputs

    t = _step(f"score drift of BF16 and INT8 against FP32 on {DRIFT_VIDEOS} clip windows")
    frames, source = parity_frames(model.image_size, model.config.num_frames, args.parity_videos, count=DRIFT_VIDEOS,
                                   preprocessing=model.config.preprocessing)
    reference = reference_outputs(model, frames)
    runs = {"bf16": ("torch", TorchBackend(model, "cpu", precision="bf16").run),
            "int8": ("onnxruntime", OnnxRuntimeBackend(None, "cpu", graph=int8_graph).run)}
    drift = precision_drift(reference, runs, frames, source, defaults.PRECISION_MIN_SROCC)
    drift["cpu"] = cpu_identity().to_dict()
    drift["model_fingerprint"] = model_fingerprint(model)  # auto ignores a record of another model
    (out / DRIFT_FILE).write_text(json.dumps(drift, indent=2) + "\n")
    _done(t)
    for precision, d in drift["precisions"].items():
        verdict = "used by --precision auto" if d["within_limit"] else "NOT used by --precision auto"
        print(f"{precision}: SROCC vs FP32 {d['srocc']:.4f} (limit {d['min_srocc']}), max |Δscore| "
              f"{d['max_abs_score_diff']:.2e}: {verdict}")
    print(f"drift report: {out / DRIFT_FILE}")


if __name__ == "__main__":
    sys.exit(main())
