"""CLIPVQA through the same commands as Q-CLIP: a random-init tiny CLIPVQA trains one epoch on the
demo data through ``train.run`` (``model.family: clipvqa``), ``qclip-export`` writes its graph, and
``QualityEngine`` (torch and ONNX Runtime), ``qclip-score`` and the service score the held-out
clips with six levels, the exported graph within 1e-4 of the torch model."""

import csv
import io
import json

import numpy as np
import pytest
import torch
import yaml
from conftest import export_and_score, served_answer, train_on_demo

from qclip_engine import load_artifact
from qclip_engine.cli.score import main as score_main
from qclip_engine.model.clipvqa import CLIPVQA, LEVEL_WORDS
from qclip_engine.model.families import create_model
from qclip_engine.train import run

FRAMES = 4


@pytest.fixture(scope="module")
def trained(clipvqa_backbone, quick_demo_data, tmp_path_factory):
    """The run directory and the model it started from (same config, untrained)."""
    model = {"family": "clipvqa", "backbone": clipvqa_backbone, "pretrained": None, "num_frames": FRAMES,
             "image_size": 32, "vat_layers": 1, "mos_scale": 20}  # VMAF labels: 0–100
    train = {"epochs": 1, "warmup_epochs": 0, "batch_size": 4, "val_batch_size": 8, "lr": 1e-4,
             "weight_decay": 1e-3, "device": "cpu"}
    out = train_on_demo(tmp_path_factory.mktemp("clipvqa_run"), "clipvqa", quick_demo_data, model, train)
    return out, create_model(**model)


def test_train_run_trains_the_clipvqa_family_by_its_recipe(trained):
    out, untrained = trained
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and np.isfinite(record["loss"]) and 0 <= record["loss"] <= 2  # 1 − cos on probabilities
    assert record["val"]["heldout"]["videos"] > 0 and record["failed_videos"] == 0
    assert json.loads((out / "best" / "config.json").read_text())["family"] == "clipvqa"
    model = load_artifact(out / "best")
    assert type(model) is CLIPVQA and model.levels == LEVEL_WORDS and model.calibration is not None
    trained_state, init_state = model.state_dict(), untrained.state_dict()
    moved = {n for n in init_state if not torch.equal(trained_state[n], init_state[n])}
    # the whole visual tower and the new modules train (AdamW's released groups); the text tower,
    # logit_scale and the temporal conv stay frozen
    assert {"visual.conv1.weight", "visual.proj", "sat.frame_pos", "vat.alpha", "patch_proj"} <= moved
    assert "messages.0.fc.weight" in moved
    assert not [n for n in moved if n.startswith("text.") or n == "temporal_conv.weight"]


def test_the_export_and_every_front_door_score_it_within_1e4_of_torch(trained, demo_heldout, tmp_path, capsys):
    out, _ = trained
    best = out / "best"
    videos = demo_heldout[:6]
    report, records = export_and_score(best, videos, "--fp16")
    parity = report["model.onnx"]
    assert parity["score"]["max_abs_diff"] <= 1e-4 and parity["level_sims"]["max_abs_diff"] <= 1e-4
    # the FP16 graph (FP16 tower, FP32 head) runs in ONNX Runtime on the CPU too (its layout
    # optimisations crash on it: runtime/onnxruntime_backend.py)
    assert report["model.fp16.onnx"]["score"]["max_abs_diff"] < 1e-2
    capsys.readouterr()
    for t, o in zip(records["torch"], records["onnxruntime"]):
        assert "error" not in t and list(t["levels"]) == list(LEVEL_WORDS) and len(t["frames"]) == FRAMES
        assert abs(t["score"] - o["score"]) <= 1e-4 and abs(t["mos"] - o["mos"]) <= 1e-3
        assert max(abs(t["levels"][k] - o["levels"][k]) for k in LEVEL_WORDS) <= 1e-4
        assert 0 <= t["score"] <= 5  # the expected level on 0 … 5

    # qclip-score: one CSV column per level
    csv_path = tmp_path / "scores.csv"
    assert score_main([*map(str, videos), "--artifact", str(best), "--engine", "onnxruntime", "--precision", "fp32",
                       "--device", "cpu", "--format", "csv", "--out", str(csv_path), "--quiet"]) == 0
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert list(rows[0])[3:9] == list(LEVEL_WORDS)
    assert [abs(float(row["score"]) - t["score"]) <= 1e-4 for row, t in zip(rows, records["torch"])] == [True] * len(videos)

    # the service: a path request answered with the six levels and the same score
    answer = served_answer(best, videos[0])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert list(body["levels"]) == list(LEVEL_WORDS)
    assert abs(body["score"] - records["torch"][0]["score"]) <= 1e-4



def test_fine_tuning_from_a_clipvqa_artifact_refuses_another_model_family(trained, quick_demo_data, tmp_path, capsys):
    out, _ = trained
    config = {"model": {"family": "qclip"}, "data": {"data_root": str(quick_demo_data),
                                                   "train": {"labels": "x"}, "val": {"v": {"labels": "x"}}},
              "train": {"init_from": str(out / "best")}}
    path = tmp_path / "finetune.yaml"
    path.write_text(yaml.safe_dump(config))
    assert run.main(["--config", str(path), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "model.family is 'qclip' but train.init_from holds a 'clipvqa' model" in err and err.count("\n") == 1
