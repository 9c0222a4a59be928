"""Train the Q-CLIP adapters: ``python -m train.run --config FILE [key=value …]``.

The official recipe: AdamW over the trainable tensors only, one linear warm-up epoch
then per-iteration cosine decay, ``plcc_loss + 0.3 · rank_loss``, 8 frames, batch 12;
bf16 autocast on CUDA. Every epoch appends one JSON line of metrics (SROCC, PLCC
linear and logistic, KROCC, RMSE on each validation set, loss, lr, time) to
``metrics.jsonl``; the best epoch by SROCC + PLCC on the first validation set is
saved as an artifact (with its calibration) in ``best/`` with a scatter plot.
``--resume`` continues from ``checkpoint.pt``; ``--splits N`` repeats the run over N
random splits (split seeds ``seed … seed + N − 1``) and reports mean ± std.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from qclip_engine import QCLIP, QCLIPConfig, load_artifact, save_artifact
from qclip_engine.metrics import all_metrics, rescale

from .data import VideoClips, collate, read_labels, split_records
from .losses import qclip_loss

DEFAULTS: dict[str, Any] = {
    "name": "qclip",
    "seed": 42,
    "output_dir": "runs/${name}",
    "model": {},
    "data": {"data_root": None, "max_analysis_frames": 512, "cache": False},
    "train": {
        "epochs": 8,
        "warmup_epochs": 1,
        "batch_size": 12,
        "val_batch_size": 4,
        "lr": 1.0e-3,
        "weight_decay": 1.0e-4,
        "num_workers": 0,
        "init_from": None,
        "device": "auto",
        "stop_after": None,  # end this invocation after N epochs (time-limited jobs; --resume goes on)
    },
}


# -- configuration ------------------------------------------------------------------------
def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(config: dict, override: str) -> None:
    """``train.epochs=2`` → ``config["train"]["epochs"] = 2`` (the value parsed as YAML)."""
    if "=" not in override:
        raise SystemExit(f"override {override!r} is not key=value")
    key, raw = override.split("=", 1)
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(raw)


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    config = _merge(DEFAULTS, yaml.safe_load(Path(path).read_text()) or {})
    for override in overrides:
        apply_override(config, override)
    known = {f.name for f in fields(QCLIPConfig)}
    unknown = set(config["model"]) - known
    if unknown:
        raise SystemExit(f"unknown model settings {sorted(unknown)}; known: {sorted(known)}")
    if "train" not in config["data"] or not config["data"].get("val"):
        raise SystemExit("the config needs data.train and at least one data.val entry")
    config["output_dir"] = config["output_dir"].replace("${name}", config["name"])
    return config


def _records(spec: dict, data: dict, split_seed: int | None):
    records = read_labels(spec["labels"], spec.get("prefix", ""), data.get("data_root"))
    split = spec.get("split")
    if split:
        seed = split_seed if split_seed is not None else split.get("seed", 42)
        records = split_records(records, float(split.get("ratio", 0.8)), int(seed), split.get("role", "train"))
    return records


# -- the loop -------------------------------------------------------------------------------
def lr_lambda(warmup_iters: int, total_iters: int):
    """The official schedule: linear warm-up, then cosine to 0, per iteration."""

    def factor(it: int) -> float:
        if warmup_iters > 0 and it <= warmup_iters:
            return it / warmup_iters
        progress = min(max((it - warmup_iters) / max(1, total_iters - warmup_iters), 0.0), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device):
    # bf16 on GPUs; CPU stays fp32 (bf16 matmuls on CPU are slower and lossy here).
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


@torch.no_grad()
def predict(model: QCLIP, loader, device) -> tuple[np.ndarray, np.ndarray, int]:
    model.eval()
    preds, targets, failed = [], [], 0
    with _autocast(device):
        text = model.forward_text()  # constant during evaluation: once, not per batch
    for batch in loader:
        failed += len(batch["errors"])
        if "video" not in batch:
            continue
        with _autocast(device):
            score = model(model.normalize(batch["video"].to(device)), text)
        preds.append(score.float().cpu().numpy())
        targets.append(batch["mos"].numpy())
    if not preds:
        raise RuntimeError("no video of the validation set could be decoded")
    return np.concatenate(preds), np.concatenate(targets), failed


def _loader(dataset, batch_size, shuffle_seed, num_workers):
    generator = None
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None,
        generator=generator,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=False,
    )


def _scatter(path: Path, preds: np.ndarray, targets: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.scatter(targets, rescale(preds, targets), s=10, alpha=0.7)
    lo, hi = float(np.min(targets)), float(np.max(targets))
    ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--")
    ax.set_xlabel("target (MOS)")
    ax.set_ylabel("prediction (linearly rescaled)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train_once(config: dict, out: Path, *, split_seed: int | None = None, resume: bool = False, strict: bool = False) -> dict:
    """One training run; returns the best epoch's record."""
    out.mkdir(parents=True, exist_ok=True)
    seed = int(config["seed"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tcfg, dcfg = config["train"], config["data"]
    device = _device(tcfg["device"])

    init_from = tcfg.get("init_from")
    if init_from:  # fine-tune from a pretrained artifact (e.g. the LSVQ run)
        model = load_artifact(init_from)
    else:
        model = QCLIP(QCLIPConfig(**config["model"]))
    model.to(device)
    mcfg = model.config
    common = dict(
        image_size=model.image_size,
        num_frames=mcfg.num_frames,
        max_analysis_frames=dcfg["max_analysis_frames"],
        strict=strict,
        cache=bool(dcfg.get("cache")),
        seed=seed,
    )
    train_set = VideoClips(
        _records(dcfg["train"], dcfg, split_seed), sampler=mcfg.sampler, training=True, desc="train videos", **common
    )
    val_sets = {
        name: VideoClips(_records(spec, dcfg, split_seed), sampler=mcfg.sampler, training=False, desc=f"{name} videos", **common)
        for name, spec in dcfg["val"].items()
    }
    skipped = {"train": [vars(s) for s in train_set.skipped]} | {n: [vars(s) for s in v.skipped] for n, v in val_sets.items()}
    n_skipped = sum(len(v) for v in skipped.values())
    if n_skipped:
        print(f"skipped {n_skipped} unusable video(s), listed in {out / 'skipped.json'}:", file=sys.stderr)
        for entries in skipped.values():
            for s in entries[:10]:
                print(f"  {s['code']}: {s['path']}", file=sys.stderr)
    (out / "skipped.json").write_text(json.dumps(skipped, indent=2) + "\n")

    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))
    steps_per_epoch = math.ceil(len(train_set) / int(tcfg["batch_size"]))
    epochs = int(tcfg["epochs"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(int(float(tcfg["warmup_epochs"]) * steps_per_epoch), epochs * steps_per_epoch)
    )
    best = {"score": -math.inf}
    start_epoch = 0
    checkpoint_path = out / "checkpoint.pt"
    metrics_path = out / "metrics.jsonl"
    if resume:
        if not checkpoint_path.is_file():
            raise SystemExit(f"--resume: no checkpoint at {checkpoint_path}")
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in state["trainable"]:
                    p.copy_(state["trainable"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best, start_epoch = state["best"], state["epoch"] + 1
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from {checkpoint_path} after epoch {state['epoch']}")
    elif metrics_path.exists():
        metrics_path.unlink()

    selection = next(iter(val_sets))
    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        model.train()
        train_set.set_epoch(epoch)
        loader = _loader(train_set, int(tcfg["batch_size"]), seed * 1000 + epoch, int(tcfg["num_workers"]))
        losses, train_preds, train_targets, failed = [], [], [], 0
        for batch in tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False):
            failed += len(batch["errors"])
            if "video" not in batch or len(batch["mos"]) < 2:
                continue  # the PLCC loss needs two videos
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device):
                pred = model(model.normalize(batch["video"].to(device)))
            loss = qclip_loss(pred.float(), batch["mos"].to(device))
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            train_preds.append(pred.detach().float().cpu().numpy())
            train_targets.append(batch["mos"].numpy())

        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)) if losses else None,
            "lr": scheduler.get_last_lr()[0],
            "failed_videos": failed,
            "val": {},
        }
        val_preds = {}
        for name, dataset in val_sets.items():
            preds, targets, val_failed = predict(model, _loader(dataset, int(tcfg["val_batch_size"]), None, 0), device)
            record["val"][name] = all_metrics(preds, targets) | {"videos": len(preds), "failed_videos": val_failed}
            val_preds[name] = (preds, targets)
        record["time_s"] = time.perf_counter() - started
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        sel = record["val"][selection]
        print(
            f"epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f}  {selection}: SROCC {sel['srocc']:.4f} "
            f"PLCC {sel['plcc']:.4f} KROCC {sel['krocc']:.4f} RMSE {sel['rmse']:.4f}  ({record['time_s']:.0f} s)"
        )

        score = sel["srocc"] + sel["plcc"]
        if score > best["score"]:
            tp, tt = np.concatenate(train_preds), np.concatenate(train_targets)
            calibration = {
                "pred_mean": float(tp.mean()),
                "pred_std": float(tp.std()) or 1.0,
                "target_mean": float(tt.mean()),
                "target_std": float(tt.std()),
            }
            save_artifact(model, out / "best", calibration=calibration)
            preds, targets = val_preds[selection]
            _scatter(out / "best" / "scatter.png", preds, targets,
                     f"{config['name']} epoch {epoch + 1}: SROCC {sel['srocc']:.3f}, PLCC {sel['plcc']:.3f}")
            best = {"score": score, "epoch": epoch + 1, "val": record["val"]}
        torch.save(
            {
                "epoch": epoch,
                "trainable": model.trainable_state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "best": best,
                "torch_rng": torch.get_rng_state(),
            },
            checkpoint_path,
        )
        if tcfg.get("stop_after") and epoch + 1 >= int(tcfg["stop_after"]) and epoch + 1 < epochs:
            print(f"stopping after epoch {epoch + 1} (train.stop_after); continue with --resume")
            break
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2")
    parser.add_argument("--splits", type=int, default=1, help="repeat over N random splits, report mean ± std")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    parser.add_argument("--strict", action="store_true", help="a missing or broken video is an error")
    parser.add_argument("--output-dir", help="overrides output_dir")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.overrides)
    out = Path(args.output_dir or config["output_dir"])
    if args.splits == 1:
        best = train_once(config, out, resume=args.resume, strict=args.strict)
        report = {"best_epoch": best.get("epoch"), "val": best.get("val")}
    else:
        base = int(config["seed"])
        runs = [
            train_once(config, out / f"split{i}", split_seed=base + i, resume=args.resume, strict=args.strict)
            for i in range(args.splits)
        ]
        selection = next(iter(config["data"]["val"]))
        report = {"splits": args.splits, "per_split": [r["val"][selection] for r in runs]}
        for key in ("srocc", "plcc", "plcc_logistic", "krocc", "rmse"):
            values = np.array([r["val"][selection][key] for r in runs])
            report[key] = {"mean": float(values.mean()), "std": float(values.std())}
        print(f"{args.splits} splits on {selection}: " + "  ".join(
            f"{k.upper()} {report[k]['mean']:.4f} ± {report[k]['std']:.4f}" for k in ("srocc", "plcc", "krocc", "rmse")))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {out / 'report.json'}")


if __name__ == "__main__":
    main()
