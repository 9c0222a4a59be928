"""Training end to end on a tiny generated dataset: metrics lines, artifact, resume, bad videos."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_config
from media import encode, moving_frames, noisy_labelled_clips

from qclip_engine import load_artifact
from qclip_engine.errors import VideoError
from qclip_engine.train import run
from qclip_engine.train.data import read_labels, split_records
from qclip_engine.train.datasets import build_datasets
from qclip_engine.train.device import resolve_device
from qclip_engine.train.epoch import lr_lambda
from qclip_engine.train.errors import CheckpointError, ConfigError
from qclip_engine.train.evaluate import evaluate


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """12 clips of 6 frames; the label is how much noise was added (a learnable signal)."""
    return noisy_labelled_clips(tmp_path_factory.mktemp("tiny"))


def _config(tmp_path: Path, data: Path, labels: str = "labels.txt", **train) -> Path:
    base = {"epochs": 2, "warmup_epochs": 1, "batch_size": 3, "val_batch_size": 2, "lr": 1e-3}
    return tiny_train_config(tmp_path / "config.yaml", data, base | train, labels=labels)


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_training_writes_metrics_and_a_loadable_artifact(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    run.main(["--config", str(_config(tmp_path, tiny_dataset)), "--output-dir", str(out)])
    lines = _lines(out)
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert {"loss", "lr", "time_s", "val"} <= set(line)
        assert set(line["val"]["heldout"]) >= {"srocc", "plcc", "plcc_logistic", "krocc", "rmse", "videos"}
        assert line["val"]["heldout"]["videos"] == 3
    model = load_artifact(out / "best")
    assert model.calibration is not None and model.calibration["target_std"] > 0
    assert (out / "best" / "scatter.png").stat().st_size > 1000
    report = json.loads((out / "report.json").read_text())
    assert report["best_epoch"] in (1, 2)
    # best/ is the selected epoch's model: reloaded, it reproduces that epoch's held-out metrics.
    config = run.load_config(_config(tmp_path, tiny_dataset))
    metrics, _ = evaluate(model, build_datasets(config, model).val, 2, resolve_device("cpu"), config["train"]["precision"])
    saved = lines[report["best_epoch"] - 1]["val"]["heldout"]
    for key in ("srocc", "plcc", "krocc"):
        assert metrics["heldout"][key] == pytest.approx(saved[key], abs=1e-6), key


def test_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_dataset):
    config = _config(tmp_path, tiny_dataset)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run.main(["--config", str(config), "--output-dir", str(straight)])
    run.main(["--config", str(config), "--output-dir", str(interrupted), "train.epochs=2", "train.stop_after=1"])
    assert len(_lines(interrupted)) == 1
    run.main(["--config", str(config), "--output-dir", str(interrupted), "--resume"])
    a, b = _lines(straight), _lines(interrupted)
    assert len(b) == 2
    for key in ("srocc", "plcc", "krocc", "rmse"):
        assert a[1]["val"]["heldout"][key] == pytest.approx(b[1]["val"]["heldout"][key], abs=1e-6)
    assert a[1]["loss"] == pytest.approx(b[1]["loss"], abs=1e-6)


def test_missing_and_broken_videos_are_listed_and_training_goes_on(tmp_path, tiny_dataset):
    labels = (tiny_dataset / "labels.txt").read_text().splitlines()
    (tiny_dataset / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 300)
    whole = encode(tiny_dataset / "whole.mkv", moving_frames(50)).read_bytes()
    (tiny_dataset / "cut.mkv").write_bytes(whole[: len(whole) // 2])  # decodable, but its label is for all of it
    labels += ["gone.mp4,0.24,25,50", "broken.mp4,0.24,25,40", "cut.mkv,0.3,25,50"]
    (tiny_dataset / "labels_bad.txt").write_text("\n".join(labels) + "\n")
    config = _config(tmp_path, tiny_dataset, labels="labels_bad.txt", epochs=1)
    out = tmp_path / "run"
    run.main(["--config", str(config), "--output-dir", str(out)])
    skipped = json.loads((out / "skipped.json").read_text())
    listed = {Path(s["path"]).name: s["code"] for entries in skipped.values() for s in entries}
    assert listed == {"gone.mp4": "not_found", "broken.mp4": "truncated", "cut.mkv": "truncated"}
    assert len(_lines(out)) == 1

    with pytest.raises(VideoError) as info:
        run.train_once(run.load_config(config), tmp_path / "strict", strict=True)
    assert info.value.code in ("not_found", "truncated")


def test_splits_report_mean_and_std(tmp_path, tiny_dataset):
    out = tmp_path / "splits"
    run.main(["--config", str(_config(tmp_path, tiny_dataset, epochs=1)), "--output-dir", str(out), "--splits", "2"])
    report = json.loads((out / "report.json").read_text())
    assert report["splits"] == 2 and len(report["per_split"]) == 2
    assert set(report["srocc"]) == {"mean", "std"}
    assert (out / "split0" / "best").is_dir() and (out / "split1" / "best").is_dir()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_precision_sets_the_autocast_of_training_and_evaluation(tmp_path, tiny_dataset, monkeypatch, precision):
    # Every Linear of the model reports the dtype it produced, split by phase (training pass or
    # evaluation): bf16 autocast makes them bfloat16 on the CPU too, fp32 leaves them float32.
    seen = {True: set(), False: set()}  # module.training → output dtypes
    build = run.build_model

    def observed(config):
        model = build(config)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda m, args, out: seen[m.training].add(out.dtype))
        return model

    monkeypatch.setattr(run, "build_model", observed)
    overrides = [f"train.precision={precision}"]
    config = _config(tmp_path, tiny_dataset, epochs=1)
    assert run.load_config(config)["train"]["precision"] == "fp32"  # the default: the official code's
    assert run.main(["--config", str(config), "--output-dir", str(tmp_path / "run"), *overrides]) == 0
    assert seen[True] and seen[False]  # both phases ran the model
    if precision == "bf16":
        assert torch.bfloat16 in seen[True] and torch.bfloat16 in seen[False]
    else:
        assert seen[True] == seen[False] == {torch.float32}


def test_label_formats_and_the_official_split(tmp_path):
    (tmp_path / "official.txt").write_text("a.mp4,8.0,30,3.5\n\nb.mp4,8.0,30,4.25\n")
    (tmp_path / "mos.csv").write_text("path,mos\n/abs/c.mp4,1.5\nd.mp4,2\n")
    official = read_labels(tmp_path / "official.txt", prefix="${DATA_ROOT}/vids", data_root="/data")
    assert [(r.path, r.mos) for r in official] == [("/data/vids/a.mp4", 3.5), ("/data/vids/b.mp4", 4.25)]
    csv = read_labels(tmp_path / "mos.csv", prefix="/root")
    assert [(r.path, r.mos) for r in csv] == [("/abs/c.mp4", 1.5), ("/root/d.mp4", 2.0)]
    (tmp_path / "bad.txt").write_text("a.mp4,8.0,30\n")
    with pytest.raises(ValueError, match="bad.txt:1"):
        read_labels(tmp_path / "bad.txt")
    records = read_labels(tmp_path / "official.txt") * 5
    train, val = split_records(records, 0.8, 42, "train"), split_records(records, 0.8, 42, "val")
    assert len(train) == 8 and len(val) == 2 and sorted(map(id, train + val)) == sorted(map(id, records))


def test_lr_schedule_warms_up_then_decays_to_zero():
    f = lr_lambda(warmup_iters=4, total_iters=12)
    assert [f(i) for i in (0, 2, 4)] == [0.0, 0.5, 1.0]
    assert f(8) == pytest.approx(0.5) and f(12) == pytest.approx(0.0)


def _one_error_line(capsys, prog: str) -> str:
    """The CLI's stderr must be a single ``prog: message`` line (progress bars aside)."""
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith(f"{prog}: ")]
    assert len(lines) == 1 and err.endswith(lines[0] + "\n"), err
    return lines[0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epochs"], "override 'train.epochs' is not key=value"),
        (["model.no_such_setting=1"], "unknown model settings ['no_such_setting']"),
        (["data.val={}"], "the config needs data.train and at least one data.val entry"),
        (["train.precision=fp16"], "train.precision must be one of fp32, bf16, got 'fp16'"),
        (["train.precision=BF16"], "train.precision must be one of fp32, bf16, got 'BF16'"),
    ],
)
def test_a_bad_config_is_a_config_error_and_exit_status_2(tmp_path, tiny_dataset, capsys, overrides, message):
    config = _config(tmp_path, tiny_dataset)
    with pytest.raises(ConfigError) as info:
        run.load_config(config, overrides)
    assert info.value.code == "config_invalid" and message in str(info.value)

    assert run.main(["--config", str(config), "--output-dir", str(tmp_path / "run"), *overrides]) == 2
    assert message in _one_error_line(capsys, "train.run")
    assert not (tmp_path / "run").exists()


def test_resume_without_a_checkpoint_is_a_checkpoint_error_and_exit_status_2(tmp_path, tiny_dataset, capsys):
    config = _config(tmp_path, tiny_dataset)
    out = tmp_path / "never_trained"
    with pytest.raises(CheckpointError) as info:
        run.train_once(run.load_config(config), out, resume=True)
    assert info.value.code == "checkpoint_missing" and str(out / "checkpoint.pt") in str(info.value)

    assert run.main(["--config", str(config), "--output-dir", str(out), "--resume"]) == 2
    assert f"no checkpoint at {out / 'checkpoint.pt'}" in _one_error_line(capsys, "train.run")
    assert not (out / "metrics.jsonl").exists() and not (out / "report.json").exists()


def test_strict_cli_reports_the_unusable_video_in_one_line(tmp_path, tiny_dataset, capsys):
    labels = (tiny_dataset / "labels.txt").read_text() + "gone.mp4,0.24,25,50\n"
    (tiny_dataset / "labels_gone.txt").write_text(labels)
    config = _config(tmp_path, tiny_dataset, labels="labels_gone.txt")
    assert run.main(["--config", str(config), "--output-dir", str(tmp_path / "strict"), "--strict"]) == 2
    assert "gone.mp4" in _one_error_line(capsys, "train.run")


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("configs/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", "/data")
    config = run.load_config(path)
    assert config["data"]["val"] and config["train"]["precision"] == "fp32"
