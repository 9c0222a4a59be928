"""FAST-VQA through the same commands as Q-CLIP: a random-init tiny FAST-VQA trains one epoch on the
demo data through ``train.run`` (``model.family: fastvqa``: fragments, its loss and optimiser
groups), ``qclip-export`` writes its graph, and ``QualityEngine`` (torch and ONNX Runtime),
``qclip-score``, the service and the streams score the held-out clips, the exported graph within
1e-4 of the torch model."""

import csv
import io
import json
import time

import numpy as np
import pytest
import torch
from conftest import export_and_score, served_answer, train_on_demo

from qclip_engine import QualityEngine, load_artifact
from qclip_engine.cli.score import main as score_main
from qclip_engine.model.families import create_model, deployable
from qclip_engine.model.fastvqa import FASTVQA
from qclip_engine.stream import stream_windows
from qclip_engine.train.data import read_labels
from qclip_engine.video.fragments import fragment_clip

VIEWS, PER_VIEW = 2, 4
TINY = {"family": "fastvqa", "embed_dim": 8, "depths": [2, 2, 2, 2], "num_heads": [1, 1, 2, 2], "head_hidden": 8,
        "image_size": 64, "num_frames": VIEWS * PER_VIEW, "views": VIEWS, "aligned": 2,
        "sampler": f"temporal_fragments:{VIEWS}"}


@pytest.fixture(scope="module")
def trained(quick_demo_data, tmp_path_factory):
    """The run directory and the model it started from (same config, untrained)."""
    train = {"epochs": 1, "warmup_epochs": 0, "batch_size": 4, "val_batch_size": 8, "lr": 1e-3, "weight_decay": 0.05,
             "device": "cpu"}
    out = train_on_demo(tmp_path_factory.mktemp("fastvqa_run"), "fastvqa", quick_demo_data, TINY, train)
    return out, create_model(**TINY)


def test_train_run_trains_the_fastvqa_family_by_its_recipe(trained):
    out, untrained = trained
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and np.isfinite(record["loss"]) and record["loss"] >= 0
    assert record["val"]["heldout"]["videos"] > 0 and record["failed_videos"] == 0
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["family"] == "fastvqa" and config["model"]["preprocessing"] == "fragments"
    model = load_artifact(out / "best")
    assert type(model) is FASTVQA and model.levels == () and model.calibration is not None
    trained_state, init_state = model.state_dict(), untrained.state_dict()
    moved = {n for n in init_state if not torch.equal(trained_state[n], init_state[n])}
    # every part trains: the backbone (its fragment tables too) and the head
    assert {"backbone.patch_embed.proj.weight", "head.fc_hid.weight", "head.fc_last.bias",
            "backbone.layers.0.blocks.0.attn.fragment_position_bias_table"} <= moved


def test_the_released_optimiser_groups_and_loss():
    model = create_model(**TINY)
    groups = {g["name"]: g for g in model.param_groups(1e-3, 0.05)}
    assert groups["backbone"]["lr"] == pytest.approx(1e-4) and groups["head"]["lr"] == 1e-3
    assert {g["weight_decay"] for g in groups.values()} == {0.05}  # every tensor decays, biases too
    ids = {id(p) for g in groups.values() for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()} and sum(len(g["params"]) for g in groups.values()) == len(ids)
    score = torch.tensor([0.1, 0.4, 0.2, 0.9])
    loss, out = model.training_loss(score, 10 * score + 3)  # a positive affine map of the targets: no loss
    assert out is score and loss.item() == pytest.approx(0.0, abs=1e-6)
    assert model.training_loss(score, -score)[0].item() > 0.1


def test_views_are_scored_alone_and_averaged():
    model = create_model(**TINY).eval()
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, VIEWS * PER_VIEW, 64, 64, 3), generator=g, dtype=torch.uint8)
    video = model.normalize(frames)
    with torch.no_grad():
        whole = model(video)
        one_by_one = torch.stack([model(video[:, v * PER_VIEW:(v + 1) * PER_VIEW]) for v in range(VIEWS)], 1)
        sims, graph_score = deployable(model)(frames)
    torch.testing.assert_close(whole, one_by_one.mean(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(graph_score, whole, rtol=0, atol=1e-5)
    assert sims.shape == (3, 0)
    assert not torch.allclose(one_by_one[:, 0], one_by_one[:, 1])  # the views differ, so averaging them matters


def test_training_draws_fragment_layouts_and_evaluation_takes_the_centred_one(trained, quick_demo_data):
    from qclip_engine.train.data import VideoClips
    from qclip_engine.video import decode

    records = read_labels(quick_demo_data / "labels_train.txt", str(quick_demo_data / "videos"))[:1]
    common = dict(image_size=(64, 64), num_frames=4, sampler="temporal_fragments:1", preprocessing="fragments",
                  fragment_aligned=2, progress=False)
    train = VideoClips(records, training=True, seed=3, **common)
    evaluation = VideoClips(records, training=False, **common)
    picked = train.picked_indices(0)
    rng = np.random.default_rng((3, 0, 0, 1))  # seeded per (seed, epoch, item): a run and its resumed twin agree
    expected = np.concatenate([  # one layout drawn per run of `aligned` frames, in order
        fragment_clip(decode.decode_frames(records[0].path, None, indices=picked[i:i + 2], preprocessing="fragments"),
                      (64, 64), rng=rng, aligned=2) for i in (0, 2)])
    assert np.array_equal(train[0]["video"].numpy(), expected)
    train.set_epoch(1)
    assert not np.array_equal(train[0]["video"].numpy(), expected)  # a new layout (and frames) each epoch
    centred = decode.decode_frames(records[0].path, (64, 64), indices=evaluation.picked_indices(0),
                                   preprocessing="fragments")
    assert np.array_equal(evaluation[0]["video"].numpy(), centred)


def test_the_export_and_every_front_door_score_it_within_1e4_of_torch(trained, demo_heldout, tmp_path, capsys):
    out, _ = trained
    best = out / "best"
    videos = demo_heldout[:6]
    report, records = export_and_score(best, videos, "--fp16", "--int8")
    assert report["model.onnx"]["score"]["max_abs_diff"] <= 1e-4
    assert report["model.fp16.onnx"]["score"]["max_abs_diff"] < 1e-2
    drift = json.loads((best / "precision.json").read_text())["precisions"]  # the INT8 graph ran and was measured
    assert set(drift) == {"bf16", "int8"} and all(np.isfinite(d["max_abs_score_diff"]) for d in drift.values())
    capsys.readouterr()
    for t, o in zip(records["torch"], records["onnxruntime"]):
        assert "error" not in t and t["levels"] == {} and len(t["frames"]) == VIEWS * PER_VIEW
        assert abs(t["score"] - o["score"]) <= 1e-4 and abs(t["mos"] - o["mos"]) <= 1e-3

    # qclip-score: no level columns
    csv_path = tmp_path / "scores.csv"
    assert score_main([*map(str, videos), "--artifact", str(best), "--engine", "onnxruntime", "--precision", "fp32",
                       "--device", "cpu", "--format", "csv", "--out", str(csv_path), "--quiet"]) == 0
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert list(rows[0])[:4] == ["input", "score", "mos", "frames"]
    assert [abs(float(row["score"]) - t["score"]) <= 1e-4 for row, t in zip(rows, records["torch"])] == [True] * len(videos)

    # the service
    answer = served_answer(best, videos[0])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["levels"] == {} and abs(body["score"] - records["torch"][0]["score"]) <= 1e-4

    # streams: windows of the same file, made of fragments as the file path makes them
    engine = QualityEngine(best, engine="onnxruntime", precision="fp32", device="cpu", batch=2)
    windows = list(stream_windows(engine, str(videos[0]), window_s=1.0, hop_s=1.0))
    assert windows and all(w.error is None and np.isfinite(w.score) and w.levels == {} for w in windows)


def test_the_monitor_scores_fastvqa_sources_as_streams_do(trained, demo_heldout):
    from qclip_engine.monitor import Monitor, MonitorSettings, SourceSpec

    out, _ = trained
    engine = QualityEngine(out / "best", engine="onnxruntime", precision="fp32", device="cpu", batch=4)
    monitor = Monitor(engine, MonitorSettings(window_s=1.0, hop_s=1.0))
    clips = [str(p) for p in demo_heldout[:2]]
    for k, clip in enumerate(clips):
        monitor.add(SourceSpec(name=f"cam{k}", url=clip))
    items, deadline = [], time.monotonic() + 60
    try:
        with monitor.subscribe() as sub:
            monitor.start()
            while time.monotonic() < deadline and sum(i["type"] == "state" and i["state"] == "stopped" for i in items) < 2:
                if (item := sub.get(0.2)) is not None:
                    items.append(item)
    finally:
        monitor.stop()
    for k, clip in enumerate(clips):
        got = [i for i in items if i["type"] == "window" and i["source"] == f"cam{k}"]
        alone = list(stream_windows(engine, clip, window_s=1.0, hop_s=1.0))
        assert got and [w["index"] for w in got] == [w.index for w in alone]
        for record, expected in zip(got, alone):
            assert record["frames"] == expected.frames and record["levels"] == {}
            assert record["score"] == pytest.approx(expected.score, abs=1e-5)


@pytest.mark.parametrize(("settings", "message"), [
    ({"image_size": 256}, r"windows \(8, 8, 8\), outside 1 … \(8, 7, 7\).*4–35 frames and 32–255"),
    ({"num_frames": 64}, r"one view of 64 frames"),
    ({"num_frames": 2, "aligned": 2}, r"windows \(0, 7, 7\)"),
    ({"image_size": 100}, r"multiple of the 32-pixel fragment"),
    ({"sampler": "mixed"}, r"reads no motion"),
    ({"sampler": "temporal_fragments:3"}, r"multiple of 3"),
    ({"views": 3}, r"multiple of views"),
    ({"aligned": 5}, r"aligned \(5\) must divide"),
    ({"embed_dim": 0}, r"embed_dim, depths and num_heads must be ≥ 1"),
    ({"preprocessing": "fast"}, r"take fragments"),
])
def test_settings_the_backbone_cannot_run_are_refused_when_the_model_is_built(settings, message):
    from qclip_engine.model.fastvqa import FASTVQAConfig

    with pytest.raises(ValueError, match=message):
        FASTVQAConfig(**settings)


def test_an_artifact_asking_for_a_huge_backbone_is_artifact_invalid_before_anything_is_built(trained, tmp_path):
    import shutil

    from qclip_engine.errors import ArtifactError

    out, _ = trained
    copy = tmp_path / "artifact"
    shutil.copytree(out / "best", copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["embed_dim"] = 100000
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match=r"model.embed_dim must be an integer in 1..256") as info:
        load_artifact(copy)
    assert info.value.code == "artifact_invalid"


@pytest.mark.parametrize(("side", "fits"), [(64, True), (48, False)])
def test_fragments_need_a_model_size_of_whole_cells(side, fits, quick_demo_data):
    from qclip_engine import QCLIP, QCLIPConfig
    from qclip_engine.train.data import VideoClips
    from qclip_engine.train.errors import DatasetError

    model = QCLIP(QCLIPConfig(backbone="PE-Core-T-16-384", pretrained=None, image_size=side, num_frames=2))
    records = read_labels(quick_demo_data / "labels_train.txt", str(quick_demo_data / "videos"))[:1]
    build = [lambda: QualityEngine(model=model, engine="torch", device="cpu", preprocessing="fragments"),
             lambda: VideoClips(records, image_size=(side, side), num_frames=2, sampler="uniform", training=True,
                                preprocessing="fragments", progress=False)]
    for make in build:
        if fits:  # a Q-CLIP model of whole 32-pixel cells may be scored or trained on fragments
            make()
        else:
            with pytest.raises((ValueError, DatasetError), match="multiples of 32"):
                make()
