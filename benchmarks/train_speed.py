"""Seconds per training epoch with and without the frozen-trunk cache (``train.cache_trunk``,
``train/trunk_cache.py``), same data, same machine, same run.

    python -m benchmarks.train_speed [--epochs 3] [--data demo_out/data]

The demo config (``configs/demo.yaml``: random-init PE-Core-T at 160 px, 4 frames, K = 6 of 12
blocks adapted, batch 12, CPU) with the two changes the cache needs or a large run would have:
``model.sampler=uniform`` (the official sampler; the demo's ``mixed`` draws frames every epoch and
is refused) and ``data.cache=false`` (no decoded frames kept in memory: at LSVQ's size they do
not fit). Both runs train ``--epochs`` epochs from the same seed; the cached run builds its
entries in epoch 1 and reads them from epoch 2 on.

What the cache should save, measured apart in the same run over the same videos (training and
validation sets): ``decode_s`` (the loader alone, decoding the picked frames), ``trunk_s`` (the
frozen trunk's forward over those frames) and ``cache_read_s`` (the loader alone reading every
entry back: the cache's overhead). Expected saving = (decode_s + trunk_s − cache_read_s) / the
uncached epoch; the measured saving should reach it.

FLOPs (``benchmarks/flops.py``'s convention, 2·MAC, matrix work only): one training step of a
12-video batch (forward and backward) and one evaluation forward, from frames and from trunk
tokens, for the demo model and for PE-Core-L-14-336 at 336 px with 8 frames and K = 6 (built on
``meta``); the difference is the trunk's forward, the only work the cache removes (the frozen
trunk gets no backward either way). Every backbone here is random-init: figures of speed only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from qclip_engine import QCLIP, QCLIPConfig
from qclip_engine.train import run, trunk_cache
from qclip_engine.train.datasets import build_datasets, loader
from qclip_engine.train.demo_data import build_demo_dataset

from .common import ROOT, write_result
from .flops import _Counter

CONFIG = ROOT / "configs" / "demo.yaml"
LARGE = {"backbone": "PE-Core-L-14-336", "num_frames": 8, "adapter_layers": 6}


def _step_flops(model: QCLIP, batch: int, cached: bool, train: bool) -> int:
    """FLOPs of one step on ``batch`` videos: forward (and backward when ``train``), from frames or from trunk tokens."""
    device = next(model.parameters()).device
    frames = torch.zeros((batch, model.config.num_frames, 3, *model.image_size), device=device)
    tokens = torch.zeros((batch, model.config.num_frames, *trunk_cache.trunk_shape(model)), device=device)
    with _Counter() as counter, torch.set_grad_enabled(train):
        out = model(trunk_tokens=tokens) if cached else model(frames)
        if train:
            out.sum().backward()
    return counter.total


def flops_share(config: dict, batch: int) -> dict:
    """Training-step and evaluation FLOPs from frames and from tokens, and the share skipped."""
    model = QCLIP(QCLIPConfig(**config)).train()
    out = {"model": {k: v for k, v in QCLIPConfig(**config).to_dict().items() if k in ("backbone", "image_size", "num_frames", "adapter_layers")},
           "image_size": list(model.image_size), "trunk_blocks": model.trunk_depth, "blocks": len(model.visual_tower.blocks),
           "batch": batch}
    for phase, train in (("train_step", True), ("eval_forward", False)):
        frames, tokens = _step_flops(model, batch, False, train), _step_flops(model, batch, True, train)
        out[phase] = {"gflop_from_frames": frames / 1e9, "gflop_from_tokens": tokens / 1e9,
                      "share_skipped": 1 - tokens / frames}
    return out


def _epoch_components(config: dict, cache_dir: Path) -> dict:
    """Decode, trunk and cache-read seconds over every video of the training and validation sets."""
    torch.manual_seed(int(config["seed"]))
    model = QCLIP(QCLIPConfig(**config["model"])).eval()
    data = build_datasets(config, model)
    sets = {"train": data.train} | data.val
    decode_s = trunk_s = 0.0
    for clips in sets.values():
        batches = iter(loader(clips, 12, None, 0))
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            decode_s += time.perf_counter() - started
            if batch is None:
                break
            if "video" in batch:
                started = time.perf_counter()
                with torch.no_grad():
                    model.encode_trunk(model.normalize(batch["video"]).flatten(0, 1))
                trunk_s += time.perf_counter() - started
    cache = trunk_cache.TrunkCache(cache_dir, model, str(config["train"]["cache_trunk_dtype"]))
    plan = trunk_cache.attach(cache, sets)
    started = time.perf_counter()
    for clips in sets.values():
        for _ in loader(clips, 12, None, 0):
            pass
    read_s = time.perf_counter() - started
    return {"decode_s": decode_s, "trunk_s": trunk_s, "cache_read_s": read_s, "cache_entries_present": plan["present"],
            "bytes_per_video": cache.bytes_per_video, "videos": plan["videos"]}


def _train(config: dict, out: Path) -> list[dict]:
    run.train_once(config, out)
    return [json.loads(line) for line in (out / run.METRICS).read_text().splitlines()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default: 3)")
    parser.add_argument("--data", default=str(ROOT / "demo_out" / "data"), help="the demo dataset, built there if absent (default: demo_out/data)")
    args = parser.parse_args(argv)
    build_demo_dataset(Path(args.data))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        overrides = [f"data.data_root={Path(args.data).resolve()}", "model.sampler=uniform", "data.cache=false",
                     f"train.epochs={args.epochs}", f"output_dir={tmp / 'run'}"]
        plain_cfg = run.load_config(CONFIG, overrides)
        cached_cfg = run.load_config(CONFIG, [*overrides, f"train.cache_trunk={tmp / 'trunk'}"])
        started = time.perf_counter()
        plain = _train(plain_cfg, tmp / "plain")
        cached = _train(cached_cfg, tmp / "cached")
        components = _epoch_components(cached_cfg, tmp / "trunk")
        wall = time.perf_counter() - started
    uncached_s = sum(e["time_s"] for e in plain[1:]) / len(plain[1:])
    cached_s = sum(e["time_s"] for e in cached[1:]) / len(cached[1:])
    expected = (components["decode_s"] + components["trunk_s"] - components["cache_read_s"]) / uncached_s
    demo_flops = flops_share(cached_cfg["model"], 12)
    with torch.device("meta"):
        large_flops = flops_share(LARGE | {"pretrained": None, "sampler": "uniform"}, 12)
    result = {
        "what": "seconds per training epoch on the demo config (sampler uniform, no in-memory frame cache), "
                "without and with train.cache_trunk, same run; random-init backbone: speed only",
        "command": "python -m benchmarks.train_speed" + (f" --epochs {args.epochs}" if args.epochs != 3 else ""),
        "config_overrides": overrides[1:-1],
        "epochs_s": {"uncached": [e["time_s"] for e in plain], "cached": [e["time_s"] for e in cached]},
        "cache_counts": [e["trunk_cache"] for e in cached],
        "epoch_s_from_epoch_2": {"uncached": uncached_s, "cached": cached_s},
        "speedup_from_epoch_2": uncached_s / cached_s,
        "saving_measured": 1 - cached_s / uncached_s,
        "components_s": components,
        "saving_expected": expected,
        "expected_is": "(decode_s + trunk_s - cache_read_s) / uncached epoch: the work skipped minus the cache's own reading",
        "loss_max_abs_diff_per_step": max(abs(a - b) for x, y in zip(plain, cached) for a, b in zip(x["steps"]["loss"], y["steps"]["loss"])),
        "flops_demo": demo_flops,
        "flops_pe_core_l_14_336": large_flops,
        "wall_s": wall,
    }
    path = write_result("train_speed", result)
    print(json.dumps({k: result[k] for k in ("epochs_s", "speedup_from_epoch_2", "saving_measured", "saving_expected",
                                             "components_s", "loss_max_abs_diff_per_step")}, indent=2))
    print(f"PE-Core-L-14-336 training step: {large_flops['train_step']['share_skipped']:.1%} of FLOPs skipped; "
          f"evaluation: {large_flops['eval_forward']['share_skipped']:.1%}")
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
