"""Data-parallel training through torchrun (gloo on the CPU): the same steps as one process,
rank 0 alone writing, ``--resume``, and DDP leaving the frozen backbone alone.

A one-process and a data-parallel run agree up to float32 rounding, which this tiny
random-init problem amplifies: its predictions barely differ between videos, so the
batch-standardised PLCC loss and Adam's per-element normalisation magnify the last bits of
any change in the order of float operations. Measured on this problem, one process against
ITSELF with OMP_NUM_THREADS=1 instead of 2 (torchrun's workers run with 1): per-step loss and
gradient norm within 1e-5 relative, each trainable tensor's update within 2e-3 of the
update's norm (single elements up to 6e-4 apart after two AdamW steps at lr 1e-3). Three
processes with a two-video last step (``test_a_process_without_a_video_in_a_step…``) amplify
more: on an AVX2-only AMD EPYC (no AVX-512) the per-step losses agree within 2e-5 but 67 of
the 65,536 elements of ``escma.text_layers.0.up.weight`` take an opposite Adam step (a
gradient element that cancels to about zero flips sign with the summation order), which puts
the worst tensors 1.0–1.2e-2 of their update apart — the same at the commit before FAST-VQA
(d6dadf9), so not a change of the training code; one process against itself there: 6e-4.
Dropping the all-gather (a loss per process) moves the loss by 50 %, the gradient norm
1000-fold and the trainable tensors by more than their whole update; a gradient off by the
world size doubles the norm. The tolerances sit between the two: ``RTOL`` for losses and
gradient norms, ``UPDATE_RTOL`` for each trainable tensor against its update (5e-2: four times
the worst rounding measured, twenty times under the smallest bug above).
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import tiny_train_config
from media import noisy_labelled_clips

from qclip_engine import load_artifact
from qclip_engine.train import distributed, run
from qclip_engine.train.datasets import build_datasets
from qclip_engine.train.device import resolve_device
from qclip_engine.train.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
RTOL = 1e-4
UPDATE_RTOL = 5e-2


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """12 clips of 6 frames; the label is how much noise was added (a learnable signal)."""
    return noisy_labelled_clips(tmp_path_factory.mktemp("tiny_ddp"))


def _config(path: Path, data: Path, ratio: float = 0.75, model: dict | None = None, **train) -> Path:
    """A tiny random-init model on the CPU; ``ratio`` 0.75 keeps 9 of the 12 clips for training."""
    base = {"epochs": 2, "warmup_epochs": 0, "batch_size": 4, "val_batch_size": 2, "lr": 1e-3, "device": "cpu"}
    return tiny_train_config(path, data, base | train, ratio=ratio, model=model)


def _torchrun(nproc: int, config: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N -m train.run`` as users start it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "qclip_engine.train.run", "--config", str(config), "--output-dir", str(out), *args]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _trainable(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["trainable"]


def _initial(config: Path) -> dict[str, torch.Tensor]:
    """The trainable tensors a run starts from (train_once seeds torch before building)."""
    cfg = run.load_config(config)
    torch.manual_seed(int(cfg["seed"]))
    return {k: v.clone() for k, v in run.build_model(cfg).trainable_state_dict().items()}


def _listing(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*"))


def assert_same_steps(single: list[dict], parallel: list[dict]) -> None:
    """Every epoch's per-step losses and gradient norms (after DDP's averaging) equal."""
    assert [line["epoch"] for line in parallel] == [line["epoch"] for line in single]
    for a, b in zip(single, parallel):
        assert len(a["steps"]["loss"]) == len(b["steps"]["loss"]) > 0
        np.testing.assert_allclose(b["steps"]["loss"], a["steps"]["loss"], rtol=RTOL)
        np.testing.assert_allclose(b["steps"]["grad_norm"], a["steps"]["grad_norm"], rtol=RTOL)


def assert_same_weights(start: dict, single: dict, parallel: dict) -> None:
    """Each trainable tensor of both runs made the same update, within UPDATE_RTOL of its norm."""
    assert single.keys() == parallel.keys() == start.keys()
    for name in single:
        update = torch.linalg.vector_norm(single[name] - start[name])
        assert update > 0, name
        gap = torch.linalg.vector_norm(parallel[name] - single[name])
        assert gap <= UPDATE_RTOL * update, f"{name}: runs {gap:.3g} apart, update {update:.3g}"


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """One configuration (9 training videos, global batch 4: two steps an epoch, the one-video
    remainder skipped, two epochs) run by one process, by two, and by two stopped after the
    first epoch and resumed."""
    tmp = tmp_path_factory.mktemp("runs")
    config = _config(tmp / "config.yaml", tiny_dataset)
    out = {name: tmp / name for name in ("single", "ddp", "interrupted")}
    assert run.main(["--config", str(config), "--output-dir", str(out["single"])]) == 0
    ddp = _ok(_torchrun(2, config, out["ddp"]))
    _ok(_torchrun(2, config, out["interrupted"], "train.stop_after=1"))
    first_half = _lines(out["interrupted"])
    resumed = _ok(_torchrun(2, config, out["interrupted"], "--resume"))
    return {"config": config, "out": out, "ddp_stdout": ddp.stdout, "first_half": first_half,
            "resumed_stdout": resumed.stdout}


def test_two_processes_make_the_one_process_steps(runs):
    out = runs["out"]
    single, ddp = _lines(out["single"]), _lines(out["ddp"])
    assert [len(line["steps"]["loss"]) for line in single] == [2, 2]
    assert_same_steps(single, ddp)
    assert_same_weights(_initial(runs["config"]), _trainable(out["single"]), _trainable(out["ddp"]))


def test_the_sharded_evaluation_equals_one_process_scoring_the_whole_set(runs):
    # Two processes score 2 and 1 of the 3 held-out videos; gathered, the metrics are those of one
    # process evaluating the saved best/ model on the whole set.
    out = runs["out"]["ddp"]
    best_epoch = json.loads((out / "report.json").read_text())["best_epoch"]
    logged = _lines(out)[best_epoch - 1]["val"]["heldout"]
    assert logged["videos"] == 3 and logged["failed_videos"] == 0
    config = run.load_config(runs["config"])
    model = load_artifact(out / "best")
    metrics, _ = evaluate(model, build_datasets(config, model).val, 2, resolve_device("cpu"), "fp32")
    for key in ("srocc", "plcc", "krocc"):  # as tests/test_train.py checks best/ (RMSE's fit magnifies rounding)
        assert metrics["heldout"][key] == pytest.approx(logged[key], abs=1e-6), key


def test_rank_zero_alone_writes_and_prints(runs):
    out = runs["out"]
    assert _listing(out["ddp"]) == _listing(out["single"])  # no second copy, no rank-suffixed file
    assert [line["epoch"] for line in _lines(out["ddp"])] == [1, 2]
    assert (out["ddp"] / "best" / "adapters.safetensors").is_file()
    stdout = runs["ddp_stdout"].splitlines()
    assert sum(line.startswith("report: ") for line in stdout) == 1
    assert sum(line.startswith("epoch 1/2: loss") for line in stdout) == 1
    assert sum(line.startswith("epoch 2/2: loss") for line in stdout) == 1


def test_resume_under_two_processes_reproduces_the_uninterrupted_run(runs):
    out = runs["out"]
    assert len(runs["first_half"]) == 1
    assert sum(line.startswith("resumed from") for line in runs["resumed_stdout"].splitlines()) == 1
    straight, resumed = _lines(out["ddp"]), _lines(out["interrupted"])
    assert len(resumed) == 2
    for a, b in zip(straight, resumed):  # same processes, same order of operations
        np.testing.assert_allclose(b["steps"]["loss"], a["steps"]["loss"], atol=1e-6)
        np.testing.assert_allclose(b["steps"]["grad_norm"], a["steps"]["grad_norm"], atol=1e-6)
        for key in ("srocc", "plcc", "krocc", "rmse"):
            assert b["val"]["heldout"][key] == pytest.approx(a["val"]["heldout"][key], abs=1e-6)
    a, b = _trainable(out["ddp"]), _trainable(out["interrupted"])
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)


def test_a_process_without_a_video_in_a_step_takes_part_with_nothing(tiny_dataset, tmp_path):
    # 8 training videos, global batch 3 over 3 processes: the last step holds 2 videos, so
    # process 2 has none there and must still join the gather and DDP's backward.
    config = _config(tmp_path / "config.yaml", tiny_dataset, ratio=0.7, epochs=1, batch_size=3)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert run.main(["--config", str(config), "--output-dir", str(single)]) == 0
    _ok(_torchrun(3, config, ddp))
    assert [len(line["steps"]["loss"]) for line in _lines(single)] == [3]
    assert_same_steps(_lines(single), _lines(ddp))
    assert_same_weights(_initial(config), _trainable(single), _trainable(ddp))
    assert _lines(ddp)[0]["val"]["heldout"]["videos"] == 4


def test_two_processes_train_from_one_trunk_cache(tiny_dataset, tmp_path):
    # Each process builds the entries of the videos it trains on (epoch 1) and reads them back
    # (epoch 2), and the steps are those of the same two processes without the cache (float32
    # entries: the same numbers; the one-process comparison is the tests above). Of the 9
    # training videos each epoch uses 8 (two steps of 4; the one-video remainder is skipped),
    # plus the 3 held out.
    config = _config(tmp_path / "config.yaml", tiny_dataset, model={"sampler": "uniform"}, cache_trunk_dtype="float32")
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    _ok(_torchrun(2, config, plain))
    _ok(_torchrun(2, config, cached, f"train.cache_trunk={tmp_path / 'trunk'}"))
    first, second = (line["trunk_cache"] for line in _lines(cached))
    assert first == {"hit": 0, "built": 11, "rebuilt": 0}
    assert second["hit"] + second["built"] == 11 and second["built"] <= 1 and second["rebuilt"] == 0
    for a, b in zip(_lines(plain), _lines(cached)):
        np.testing.assert_allclose(b["steps"]["loss"], a["steps"]["loss"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(b["steps"]["grad_norm"], a["steps"]["grad_norm"], rtol=1e-6)
    a, b = _trainable(plain), _trainable(cached)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)


def test_a_batch_size_the_processes_cannot_share_is_a_config_error(tiny_dataset, tmp_path):
    config = _config(tmp_path / "config.yaml", tiny_dataset, batch_size=3)
    proc = _torchrun(2, config, tmp_path / "run")
    assert proc.returncode != 0
    assert "train.batch_size (3) is the global batch and must be divisible by the number of processes (2)" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_ddp_covers_the_trainable_tensors_only(tmp_path, monkeypatch):
    # DDP broadcasts at construction what it syncs and all-reduces what its reducer holds: both
    # must be the trainable tensors alone, and a training step must broadcast nothing more.
    store = tempfile.NamedTemporaryFile(dir=tmp_path, delete=False).name
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        config = run.load_config(_config(tmp_path / "config.yaml", tmp_path))
        model = run.build_model(config)
        broadcast = []
        real = dist._broadcast_coalesced
        monkeypatch.setattr(dist, "_broadcast_coalesced",
                            lambda group, tensors, *args: (broadcast.extend(tensors), real(group, tensors, *args))[1])
        net = distributed.wrap(model, torch.device("cpu"))
        assert net is not model and distributed.unwrap(net) is model
        trainable = model.trainable_parameters()
        frozen = [p for p in model.parameters() if not p.requires_grad]
        assert frozen and sum(p.numel() for p in frozen) > sum(p.numel() for p in trainable)
        assert sorted(t.data_ptr() for t in broadcast) == sorted(p.data_ptr() for p in trainable)
        logged = net._get_ddp_logging_data()
        assert logged["num_parameter_tensors"] == len(trainable)
        assert logged["total_parameter_size_bytes"] == sum(p.numel() * p.element_size() for p in trainable)

        broadcast.clear()
        model.train()
        video = torch.randint(0, 256, (2, 2, 32, 32, 3), dtype=torch.uint8)
        net(model.normalize(video)).sum().backward()
        assert broadcast == []
        assert all(p.grad is not None for p in trainable) and all(p.grad is None for p in frozen)
    finally:
        dist.destroy_process_group()
