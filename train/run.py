"""Train a quality model: ``python -m train.run --config FILE [key=value …]``.

``model.family`` picks the model family (``qclip``, the default: the adapters and prompts on a
frozen backbone; ``clipvqa``: the whole CLIPVQA model); the other ``model`` keys are that
family's config (``model/families.py``). What follows is Q-CLIP's recipe; another family brings
its optimiser groups and loss (CLIPVQA: the released ones), the schedule and the rest are shared.

The official recipe: AdamW over the trainable tensors only, one linear warm-up epoch
then per-iteration cosine decay, ``plcc_loss + 0.3 · rank_loss``, 8 frames, batch 12, fp32
(``train.precision: bf16`` autocasts training and its evaluation to bfloat16). Every epoch
appends one JSON line of metrics (SROCC, PLCC linear and logistic, KROCC, RMSE on each
validation set, loss, lr, time) to
``metrics.jsonl``; the best epoch by SROCC + PLCC on the first validation set is
saved as an artifact (with its calibration) in ``best/`` with a scatter plot.
``--resume`` continues from ``checkpoint.pt``; ``--splits N`` repeats the run over N
random splits (split seeds ``seed … seed + N − 1``) and reports mean ± std.
``torchrun --nproc_per_node=N -m train.run …`` trains data-parallel (``distributed``):
``train.batch_size`` stays the global batch, rank 0 alone writes and prints.

This module keeps the configuration, the order of a run's steps and the command line;
the steps live in ``datasets``, ``epoch``, ``evaluate`` and ``checkpoint``.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from qclip_engine import load_artifact
from qclip_engine.errors import QCLIPError
from qclip_engine.model.families import DEFAULT_FAMILY, create_model, family_of, get_family

from . import distributed, trunk_cache
from .checkpoint import BEST, CHECKPOINT, load_checkpoint, no_best, save_best, save_checkpoint
from .datasets import build_datasets, write_skipped
from .device import check_precision, resolve_device
from .epoch import epoch_record, log_epoch, make_optimizer, make_scheduler, train_epoch
from .errors import ConfigError, report
from .evaluate import evaluate, selection_score

PROG = "train.run"
METRICS = "metrics.jsonl"
REPORT = "report.json"

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
        "precision": "fp32",  # fp32 (the official code's) | bf16: autocast to bfloat16 on the training device
        "stop_after": None,  # end this invocation after N epochs (time-limited jobs; --resume goes on)
        "cache_trunk": None,  # a folder: keep the frozen trunk's tokens there (trunk_cache.py; sampler uniform)
        "cache_trunk_dtype": "float16",  # float16 | float32 (bit-exact, twice the disk)
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
        raise ConfigError(f"override {override!r} is not key=value")
    key, raw = override.split("=", 1)
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(raw)


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """DEFAULTS ← the YAML file ← ``key=value`` overrides; raises :class:`ConfigError`."""
    config = _merge(DEFAULTS, yaml.safe_load(Path(path).read_text()) or {})
    for override in overrides:
        apply_override(config, override)
    model_cfg = dict(config["model"])
    try:
        family = get_family(model_cfg.pop("family", DEFAULT_FAMILY))
    except ValueError as exc:
        raise ConfigError(f"model.family: {exc}") from None
    unknown = set(model_cfg) - family.config_fields()
    if unknown:
        raise ConfigError(f"unknown model settings {sorted(unknown)}; the {family.name} family knows: "
                          f"{sorted(family.config_fields())}")
    if "train" not in config["data"] or not config["data"].get("val"):
        raise ConfigError("the config needs data.train and at least one data.val entry")
    check_precision(config["train"]["precision"])
    config["output_dir"] = config["output_dir"].replace("${name}", config["name"])
    return config


# -- one run --------------------------------------------------------------------------------
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(config: dict) -> torch.nn.Module:
    """A fresh model of ``model.family``, or an artifact to fine-tune (``train.init_from``, e.g. the
    LSVQ run, of any family)."""
    init_from = config["train"].get("init_from")
    settings = dict(config["model"])
    if init_from:
        model = load_artifact(init_from)
        if "family" in settings and family_of(model).name != settings["family"]:
            raise ConfigError(f"model.family is {settings['family']!r} but train.init_from holds a "
                              f"{family_of(model).name!r} model ({init_from})")
        return model
    try:
        return create_model(settings.pop("family", DEFAULT_FAMILY), **settings)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid model settings: {exc}") from None


def train_once(config: dict, out: Path, *, split_seed: int | None = None, resume: bool = False, strict: bool = False) -> dict:
    """One training run; returns the best epoch's record. Raises CheckpointError when
    ``resume`` finds no checkpoint, VideoError when ``strict`` meets an unusable video.

    Under torchrun (``distributed``) every process trains its share of each global batch
    through DDP and evaluates its shard of the validation sets; rank 0 alone writes files
    and prints."""
    main = distributed.is_main()
    seed, tcfg, epochs = int(config["seed"]), config["train"], int(config["train"]["epochs"])
    distributed.check_batch_size(int(tcfg["batch_size"]))
    if main:
        out.mkdir(parents=True, exist_ok=True)
    _seed_everything(seed)
    device = distributed.local_device(resolve_device(tcfg["device"]))
    model = build_model(config).to(device)
    cache = trunk_cache.open_cache(tcfg, model)
    data = build_datasets(config, model, split_seed=split_seed, strict=strict)
    if main:
        write_skipped(out, data)
    trunk_cache.attach(cache, {"train": data.train} | data.val)
    optimizer = make_optimizer(model, tcfg)
    scheduler = make_scheduler(optimizer, tcfg, len(data.train))
    if resume:
        best, start_epoch = load_checkpoint(out / CHECKPOINT, model, optimizer, scheduler)
    else:
        best, start_epoch = no_best(), 0
        if main:
            (out / METRICS).unlink(missing_ok=True)
    net = distributed.wrap(model, device)  # DDP over the trainable tensors; the model itself in one process

    for epoch in range(start_epoch, epochs):
        started = time.perf_counter()
        result = train_epoch(net, data.train, optimizer, scheduler, epoch=epoch, tcfg=tcfg, seed=seed, device=device)
        lr = scheduler.get_last_lr()[0]
        metrics, outputs = evaluate(model, data.val, int(tcfg["val_batch_size"]), device, tcfg["precision"])
        record = epoch_record(epoch, result, lr, metrics, time.perf_counter() - started, trunk_cache.epoch_counts(cache))
        if main:
            log_epoch(out / METRICS, record, data.selection, epochs)
        sel = metrics[data.selection]
        if selection_score(sel) > best["score"]:
            title = f"{config['name']} epoch {epoch + 1}: SROCC {sel['srocc']:.3f}, PLCC {sel['plcc']:.3f}"
            if main:
                save_best(out / BEST, model, result, *outputs[data.selection], title)
            best = {"score": selection_score(sel), "epoch": epoch + 1, "val": metrics}
        if main:
            save_checkpoint(out / CHECKPOINT, epoch, model, optimizer, scheduler, best)
        if tcfg.get("stop_after") and epoch + 1 >= int(tcfg["stop_after"]) and epoch + 1 < epochs:
            if main:
                print(f"stopping after epoch {epoch + 1} (train.stop_after); continue with --resume")
            break
    return best


def splits_report(runs: list[dict], selection: str) -> dict:
    """Mean ± std of the best epochs of ``--splits`` runs on the selection set."""
    summary = {"splits": len(runs), "per_split": [r["val"][selection] for r in runs]}
    for key in ("srocc", "plcc", "plcc_logistic", "krocc", "rmse"):
        values = np.array([r["val"][selection][key] for r in runs])
        summary[key] = {"mean": float(values.mean()), "std": float(values.std())}
    if distributed.is_main():
        print(f"{len(runs)} splits on {selection}: " + "  ".join(
            f"{k.upper()} {summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}" for k in ("srocc", "plcc", "krocc", "rmse")))
    return summary


# -- command line ---------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=2")
    parser.add_argument("--splits", type=int, default=1, help="repeat over N random splits, report mean ± std")
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint.pt")
    parser.add_argument("--strict", action="store_true", help="a missing or broken video is an error")
    parser.add_argument("--output-dir", help="overrides output_dir")
    return parser


def _run(args: argparse.Namespace) -> Path | None:
    """The path of ``report.json``; None in the processes other than rank 0, which write nothing."""
    config = load_config(args.config, args.overrides)
    out = Path(args.output_dir or config["output_dir"])
    started = distributed.init(str(config["train"]["device"]))  # under torchrun; nothing otherwise
    try:
        return _train(args, config, out)
    finally:
        if started:
            distributed.shutdown()


def _train(args: argparse.Namespace, config: dict, out: Path) -> Path | None:
    if args.splits == 1:
        best = train_once(config, out, resume=args.resume, strict=args.strict)
        result = {"best_epoch": best.get("epoch"), "val": best.get("val")}
    else:
        base = int(config["seed"])
        runs = [
            train_once(config, out / f"split{i}", split_seed=base + i, resume=args.resume, strict=args.strict)
            for i in range(args.splits)
        ]
        result = splits_report(runs, next(iter(config["data"]["val"])))
    if not distributed.is_main():
        return None
    (out / REPORT).write_text(json.dumps(result, indent=2) + "\n")
    return out / REPORT


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line on stderr for a bad config, a missing checkpoint or
    (with ``--strict``) an unusable video."""
    args = _parser().parse_args(argv)
    try:
        path = _run(args)
    except QCLIPError as exc:
        return report(PROG, exc)
    if path is not None:
        print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
