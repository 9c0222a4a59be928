"""DVLTA-VQA through the same commands as every family: a random-init tiny DVLTA (its ventral FAST-VQA
read from a ``qclip-convert fastvqa``-style artifact) trains one epoch on the demo data through
``train.run`` (frozen towers stay as loaded), ``qclip-export`` writes its graph (one input: the
fragments and the crop side by side), and ``QualityEngine`` (torch and ONNX Runtime), the service,
the streams and the monitor score the held-out clips, the exported graph within 1e-4 of the torch
model. The family's own rules: the fusion weights are the cosines they are defined as, and each
ablation switch changes only what it names."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import export_and_score, served_answer, train_on_demo

from qclip_engine import QualityEngine, load_artifact
from qclip_engine.artifact import save_artifact
from qclip_engine.errors import BackboneError, WeightsUnavailableError
from qclip_engine.model.dvlta import DVLTA, DVLTAConfig
from qclip_engine.model.dvlta.fusion import cosine
from qclip_engine.model.families import create_model, deployable
from qclip_engine.stream import stream_windows
from qclip_engine.train.data import read_labels
from qclip_engine.video.resize import fragments_and_crop, mmcv_short_side_crop
from qclip_engine.video.fragments import fragment_clip, fragment_frame

SIDE, FRAMES = 64, 4
VENTRAL = {"embed_dim": 8, "depths": [1, 1], "num_heads": [1, 1], "frag_biases": [True, False], "head_hidden": 8,
           "image_size": SIDE, "num_frames": FRAMES, "views": 1, "aligned": 2, "sampler": "temporal_fragments:2"}
FROZEN_PREFIXES = ("ventral.", "visual.", "text.")
BRANCH_MODULE = {"bvfe": "ventral", "vbtc": "vbtc", "tcm": "tcm"}  # the modules that compute each branch


def tiny(backbone: str, **settings) -> dict:
    return {"family": "dvlta", "ventral": VENTRAL, "backbone": backbone, "pretrained": None, "ventral_hidden": 8,
            "tcm_width": 16, "dorsal_stride": 1} | settings


@pytest.fixture(scope="module")
def fastvqa_weights(tmp_path_factory) -> Path:
    """A FAST-VQA artifact of the ventral settings whose tensors differ from a fresh init's (a stand-in
    for a converted released checkpoint)."""
    model = create_model("fastvqa", **VENTRAL)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    return save_artifact(model, tmp_path_factory.mktemp("fastvqa") / "converted")


@pytest.fixture(scope="module")
def trained(quick_demo_data, clipvqa_backbone, fastvqa_weights, tmp_path_factory):
    """The run directory and the model it started from (same config, untrained)."""
    settings = tiny(clipvqa_backbone, ventral_pretrained=str(fastvqa_weights))
    train = {"epochs": 1, "warmup_epochs": 0, "batch_size": 4, "val_batch_size": 8, "lr": 1e-3, "weight_decay": 0.0,
             "device": "cpu"}
    out = train_on_demo(tmp_path_factory.mktemp("dvlta_run"), "dvlta", quick_demo_data, settings, train)
    return out, create_model(**settings)


def test_the_ventral_stream_is_the_converted_fastvqa_backbone(trained, fastvqa_weights):
    _, untrained = trained
    source = load_artifact(fastvqa_weights).backbone.state_dict()
    assert source.keys() == untrained.ventral.state_dict().keys()
    assert all(torch.equal(untrained.ventral.state_dict()[k], t) for k, t in source.items())
    assert not any(p.requires_grad for p in untrained.ventral.parameters())


def test_train_run_trains_only_the_new_parts(trained):
    out, untrained = trained
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and np.isfinite(record["loss"]) and record["failed_videos"] == 0
    assert record["val"]["heldout"]["videos"] > 0
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["family"] == "dvlta" and config["model"]["preprocessing"] == "fragments_and_crop"
    assert config["preprocess"]["image_size"] == [SIDE, 2 * SIDE] and config["prompts"]["levels"] == ["negative", "positive"]
    model = load_artifact(out / "best")
    assert type(model) is DVLTA and model.calibration is not None
    after, before = model.state_dict(), untrained.state_dict()
    moved = {n for n in before if not torch.equal(after[n], before[n])}
    frozen = {n for n in before if n.startswith(FROZEN_PREFIXES)}
    assert frozen and not moved & frozen  # the pretrained towers are exactly as loaded (BN-free, eval mode)
    for part in ("ventral_head.conv1.weight", "vbtc.adapter.conv2.0.weight", "tcm.stem.0.0.weight",
                 "tcm.layers.0.op.conv.weight", "fusion.text_adapter.up.weight"):
        assert part in moved, part
    # the prompt embeddings are the frozen text tower's, unchanged by training
    assert torch.equal(after["quality.positive"], before["quality.positive"])


def test_the_loss_is_one_minus_plcc_and_the_optimiser_takes_only_trainable_tensors(clipvqa_backbone):
    model = create_model(**tiny(clipvqa_backbone))
    groups = model.param_groups(1e-3, 0.0)
    ids = {id(p) for g in groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}
    assert not ids & {id(p) for part in (model.ventral, model.visual, model.text) for p in part.parameters()}
    score = torch.tensor([0.1, 0.4, 0.2, 0.9])
    assert model.training_loss(score, 3 * score + 1)[0].item() == pytest.approx(0.0, abs=1e-6)
    assert model.training_loss(score, -score)[0].item() == pytest.approx(2.0, abs=1e-6)


def test_training_mode_leaves_the_frozen_towers_in_eval_mode(clipvqa_backbone):
    model = create_model(**tiny(clipvqa_backbone)).train()
    assert model.tcm.training and model.vbtc.training
    assert not model.ventral.training and not model.visual.training and not model.text.training


def test_the_fusion_weights_are_the_cosines_with_the_adapted_text(clipvqa_backbone):
    model = create_model(**tiny(clipvqa_backbone)).eval()
    frames = torch.randint(0, 256, (2, FRAMES, SIDE, 2 * SIDE, 3), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    with torch.no_grad():
        model.fusion.text_adapter.up.weight.normal_()  # an adapter that has learned something
        video = model.normalize(frames)
        features = model.branch_features(video)  # [B, 3, D]
        text = model.fusion.text + model.fusion.text_adapter.up(torch.relu(model.fusion.text_adapter.down(model.fusion.text)))
        by_hand = torch.stack([torch.stack([f @ text / (f.norm() * text.norm()) for f in video_features])
                               for video_features in features])
        torch.testing.assert_close(model.fusion_weights(video), by_hand, rtol=1e-5, atol=1e-6)
        fused = (by_hand.unsqueeze(-1) * features).sum(1)  # eq. 11: no softmax
        torch.testing.assert_close(model.fused(video), fused, rtol=1e-5, atol=1e-6)
        sims = torch.stack([cosine(fused, model.quality.negative), cosine(fused, model.quality.positive)], -1)
        torch.testing.assert_close(model(video, output="sims"), sims, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(video), torch.softmax(sims, -1)[:, 1], rtol=1e-5, atol=1e-6)
    # the guiding text and the prompts are the frozen text tower's embeddings of the configured texts
    tokens = model.tokenizer(["the quality of this video", "high quality", "low quality"])
    with torch.no_grad():
        guide, positive, negative = model.text.encode_text(tokens)
    assert torch.equal(model.fusion.text, guide) and torch.equal(model.quality.positive, positive)
    assert torch.equal(model.quality.negative, negative)


def _parts(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t for name, t in model.state_dict().items()}


@pytest.mark.parametrize(("switch", "named"), [
    ({"fusion": "add"}, ("fusion.",)),
    ({"fusion": "concat"}, ("fusion.",)),
    ({"temporal_op": "c3d"}, ("tcm.layers.0.op.", "tcm.layers.1.op.")),  # eq. 6's aggregation stays
    ({"temporal_op": "r2plus1d"}, ("tcm.layers.0.op.", "tcm.layers.1.op.")),
    # text fusion's tensors do not depend on how many branches it weighs: they stay too
    ({"branches": ["vbtc", "tcm"]}, ("ventral.", "ventral_head.")),
    ({"branches": ["bvfe", "tcm"]}, ("visual.", "vbtc.")),
    ({"branches": ["bvfe", "vbtc"]}, ("tcm.",)),
])
def test_an_ablation_switch_changes_only_what_it_names(clipvqa_backbone, switch, named):
    full = create_model(**tiny(clipvqa_backbone)).eval()
    ablated = create_model(**tiny(clipvqa_backbone, **switch)).eval()
    a, b = _parts(full), _parts(ablated)
    for name in a.keys() | b.keys():
        if name.startswith(named):
            continue
        assert name in a and name in b and torch.equal(a[name], b[name]), name  # same tensors, same values
    assert any(n.startswith(named) and (n not in a or n not in b or not torch.equal(a[n], b[n]))
               for n in a.keys() | b.keys())  # and what it names did change
    frames = torch.randint(0, 256, (2, FRAMES, SIDE, 2 * SIDE, 3), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    with torch.no_grad():
        full_features = dict(zip(full.config.branches, full.branch_features(full.normalize(frames)).unbind(1)))
        ablated_features = dict(zip(ablated.config.branches, ablated.branch_features(ablated.normalize(frames)).unbind(1)))
    untouched = [k for k in ablated_features if not any(n.startswith(BRANCH_MODULE[k]) for n in named)]
    for branch in untouched:  # a branch the switch does not name computes the same feature
        torch.testing.assert_close(ablated_features[branch], full_features[branch], rtol=0, atol=0)
    if "temporal_op" in switch:
        assert not torch.allclose(ablated_features["tcm"], full_features["tcm"])


def test_one_decoded_frame_makes_both_inputs():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)
    packed = fragments_and_crop(frame, (SIDE, 2 * SIDE))
    assert packed.shape == (SIDE, 2 * SIDE, 3)
    assert np.array_equal(packed[:, :SIDE], fragment_frame(frame, (SIDE, SIDE)))
    assert np.array_equal(packed[:, SIDE:], mmcv_short_side_crop(frame, (SIDE, SIDE)))
    with pytest.raises(ValueError, match=r"\(S, 2S\)"):
        fragments_and_crop(frame, (SIDE, SIDE))


def test_training_draws_fragment_layouts_for_the_left_half_only(quick_demo_data):
    from qclip_engine.train.data import VideoClips
    from qclip_engine.video import decode

    records = read_labels(quick_demo_data / "labels_train.txt", str(quick_demo_data / "videos"))[:1]
    common = dict(image_size=(SIDE, 2 * SIDE), num_frames=FRAMES, sampler="temporal_fragments:2",
                  preprocessing="fragments_and_crop", fragment_aligned=2, progress=False)
    train = VideoClips(records, training=True, seed=3, **common)
    picked = train.picked_indices(0)
    native = decode.decode_frames(records[0].path, None, indices=picked, preprocessing="fragments_and_crop")
    rng = np.random.default_rng((3, 0, 0, 1))
    left = np.concatenate([fragment_clip(native[i:i + 2], (SIDE, SIDE), rng=rng, aligned=2) for i in (0, 2)])
    got = train[0]["video"].numpy()
    assert np.array_equal(got[..., :SIDE, :], left)
    assert np.array_equal(got[..., SIDE:, :], np.stack([mmcv_short_side_crop(f, (SIDE, SIDE)) for f in native]))
    evaluation = VideoClips(records, training=False, **common)
    centred = decode.decode_frames(records[0].path, (SIDE, 2 * SIDE), indices=evaluation.picked_indices(0),
                                   preprocessing="fragments_and_crop")
    assert np.array_equal(evaluation[0]["video"].numpy(), centred)


def test_the_export_and_every_front_door_score_it_within_1e4_of_torch(trained, demo_heldout, tmp_path, capsys):
    out, _ = trained
    best = out / "best"
    videos = demo_heldout[:6]
    report, records = export_and_score(best, videos, "--fp16", "--int8")
    assert report["model.onnx"]["score"]["max_abs_diff"] <= 1e-4
    assert report["model.onnx"]["level_sims"]["max_abs_diff"] <= 1e-4
    assert report["model.fp16.onnx"]["score"]["max_abs_diff"] < 1e-2
    drift = json.loads((best / "precision.json").read_text())["precisions"]  # BF16 torch and the INT8 graph ran
    assert set(drift) == {"bf16", "int8"} and all(np.isfinite(d["max_abs_score_diff"]) for d in drift.values())
    capsys.readouterr()
    for t, o in zip(records["torch"], records["onnxruntime"]):
        assert "error" not in t and set(t["levels"]) == {"negative", "positive"} and len(t["frames"]) == FRAMES
        assert abs(t["score"] - o["score"]) <= 1e-4 and abs(t["mos"] - o["mos"]) <= 1e-3

    answer = served_answer(best, videos[0])
    assert answer.status_code == 200, answer.text
    assert abs(answer.json()["score"] - records["torch"][0]["score"]) <= 1e-4

    # streams and the monitor: windows of the same file, both halves made as the file path makes them
    from qclip_engine.monitor import Monitor, MonitorSettings, SourceSpec

    engine = QualityEngine(best, engine="onnxruntime", precision="fp32", device="cpu", batch=2)
    alone = list(stream_windows(engine, str(videos[0]), window_s=1.0, hop_s=1.0))
    assert alone and all(w.error is None and np.isfinite(w.score) for w in alone)
    monitor = Monitor(engine, MonitorSettings(window_s=1.0, hop_s=1.0))
    monitor.add(SourceSpec(name="cam", url=str(videos[0])))
    items, deadline = [], time.monotonic() + 60
    try:
        with monitor.subscribe() as sub:
            monitor.start()
            while time.monotonic() < deadline and not any(i["type"] == "state" and i["state"] == "stopped" for i in items):
                if (item := sub.get(0.2)) is not None:
                    items.append(item)
    finally:
        monitor.stop()
    got = [i for i in items if i["type"] == "window"]
    assert [w["index"] for w in got] == [w.index for w in alone]
    assert [w["score"] for w in got] == pytest.approx([w.score for w in alone], abs=1e-5)


def test_the_graph_is_the_model(clipvqa_backbone):
    model = create_model(**tiny(clipvqa_backbone)).eval()
    frames = torch.randint(0, 256, (3, FRAMES, SIDE, 2 * SIDE, 3), generator=torch.Generator().manual_seed(2),
                           dtype=torch.uint8)
    with torch.no_grad():
        sims, score = deployable(model)(frames)
        video = model.normalize(frames)
        torch.testing.assert_close(sims, model(video, output="sims"), rtol=0, atol=1e-6)
        torch.testing.assert_close(score, model(video), rtol=0, atol=1e-6)
    assert "text" not in dict(deployable(model).model.named_children())  # no text weight in the graph


@pytest.mark.parametrize(("settings", "message"), [
    ({"ventral": "fast-vqa-x"}, r"ventral must be a FAST-VQA variant"),
    ({"ventral": VENTRAL | {"image_size": [64, 96]}}, r"must be square"),
    ({"ventral": VENTRAL | {"num_frames": 2, "aligned": 2}}, r"ventral: .*windows"),
    ({"num_frames": 8}, r"must be the ventral stream's \(4\)"),
    ({"sampler": "mixed"}, r"reads no motion"),
    ({"dorsal_stride": 2}, r"fewer than the 3"),
    ({"dorsal_stride": 3}, r"dorsal_stride \(3\) must be ≥ 1 and divide"),
    ({"branches": []}, r"branches must be distinct names"),
    ({"branches": ["bvfe", "motion"]}, r"branches must be distinct names"),
    ({"fusion": "attention"}, r"fusion must be one of"),
    ({"temporal_op": "lstm"}, r"temporal_op must be one of"),
    ({"adapter_alpha": 1.5}, r"adapter_alpha must lie in \[0, 1\]"),
    ({"tcm_width": 8}, r"tcm_width ≥ 16"),
    ({"preprocessing": "fragments"}, r"take 'fragments_and_crop' frames"),
    ({"positive_prompt": " "}, r"positive_prompt must be a non-empty text"),
    ({"dorsal_stride": 2.0}, r"dorsal_stride must be an integer, got 2.0"),
    ({"tcm_width": True}, r"tcm_width must be an integer"),
])
def test_settings_the_model_cannot_run_are_refused_when_it_is_built(settings, message):
    base = {k: v for k, v in tiny("ViT-B-16").items() if k != "family"}
    with pytest.raises(ValueError, match=message):
        DVLTAConfig(**(base | settings))


def test_ventral_weights_that_are_not_the_named_fastvqa_are_refused(clipvqa_backbone, fastvqa_weights, tmp_path):
    other = VENTRAL | {"embed_dim": 16}
    with pytest.raises(BackboneError, match=r"not a FAST-VQA of the ventral settings.*shapes"):
        create_model(**tiny(clipvqa_backbone, ventral=other, ventral_pretrained=str(fastvqa_weights)))
    with pytest.raises(WeightsUnavailableError, match="FAST-VQA weights not found") as info:
        create_model(**tiny(clipvqa_backbone, ventral_pretrained=str(tmp_path / "missing")))
    assert info.value.code == "not_found"


def test_a_tampered_artifact_is_artifact_invalid_before_anything_is_built(trained, tmp_path):
    import shutil

    from qclip_engine.errors import ArtifactError

    out, _ = trained
    for edit, message in [
        (lambda c: c["model"]["ventral"].update(embed_dim=100000), r"model.ventral must be one of fast-vqa-b, .*, or an object whose embed_dim is an integer in 1..256"),
        (lambda c: c["model"].update(branches=["bvfe", "bvfe"]), r"model.branches must be a non-empty list"),
        (lambda c: c["preprocess"].update(image_size=[64, 64]), r"must equal the model's frame size \(\[64, 128\]\)"),
    ]:
        copy = tmp_path / "artifact"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(out / "best", copy)
        config = json.loads((copy / "config.json").read_text())
        edit(config)
        (copy / "config.json").write_text(json.dumps(config))
        with pytest.raises(ArtifactError, match=message) as info:
            load_artifact(copy)
        assert info.value.code == "artifact_invalid"


@pytest.mark.parametrize(("size", "message"), [((64, 64), r"\(S, 2S\)"), ((48, 96), "multiples of 32")])
def test_a_model_size_fragments_and_crop_cannot_make_is_refused_before_any_video(quick_demo_data, size, message):
    from qclip_engine.train.data import VideoClips
    from qclip_engine.train.errors import DatasetError
    from qclip_engine.video.resize import check_preprocessing_size

    records = read_labels(quick_demo_data / "labels_train.txt", str(quick_demo_data / "videos"))[:1]
    with pytest.raises(ValueError, match=message):
        check_preprocessing_size("fragments_and_crop", size)  # what QualityEngine checks when it is built
    with pytest.raises(DatasetError, match=message):
        VideoClips(records, image_size=size, num_frames=2, sampler="uniform", training=True,
                   preprocessing="fragments_and_crop", progress=False)
    check_preprocessing_size("fragments_and_crop", (64, 128))  # two squares of whole cells


def test_a_multi_view_ventral_stream_averages_its_views_features(clipvqa_backbone):
    views = VENTRAL | {"num_frames": 2 * FRAMES, "views": 2, "sampler": "temporal_fragments:2"}
    model = create_model(**tiny(clipvqa_backbone, ventral=views, dorsal_stride=2)).eval()
    fragments = torch.randn(2, 2 * FRAMES, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        each = [model.ventral_head(model.ventral(fragments[:, v * FRAMES:(v + 1) * FRAMES].transpose(1, 2)))
                for v in range(2)]
        torch.testing.assert_close(model.ventral_features(fragments), (each[0] + each[1]) / 2, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(each[0], each[1])


def test_each_stream_reads_its_own_half_and_the_dorsal_stream_every_stride_th_frame(clipvqa_backbone):
    model = create_model(**tiny(clipvqa_backbone, ventral=VENTRAL | {"num_frames": 2 * FRAMES},
                                dorsal_stride=2)).eval()
    frames = torch.randint(0, 256, (1, 2 * FRAMES, SIDE, 2 * SIDE, 3), generator=torch.Generator().manual_seed(4),
                           dtype=torch.uint8)

    def features(f):
        with torch.no_grad():
            return dict(zip(model.config.branches, model.branch_features(model.normalize(f)).unbind(1)))

    base = features(frames)
    changed = {}
    for what, region in {"left half": (slice(None), slice(None), slice(None), slice(0, SIDE)),
                         "right half": (slice(None), slice(None), slice(None), slice(SIDE, None)),
                         "right half of odd frames": (slice(None), slice(1, None, 2), slice(None), slice(SIDE, None))}.items():
        other = frames.clone()
        other[region] = 255 - other[region]
        got = features(other)
        changed[what] = {b for b in base if not torch.equal(got[b], base[b])}
    assert changed == {"left half": {"bvfe"}, "right half": {"vbtc", "tcm"}, "right half of odd frames": set()}


def test_the_reduced_precision_graphs_run_on_the_cpu_with_the_head_in_fp32(clipvqa_backbone):
    model = create_model(**tiny(clipvqa_backbone)).eval()
    frames = torch.randint(0, 256, (2, FRAMES, SIDE, 2 * SIDE, 3), generator=torch.Generator().manual_seed(5),
                           dtype=torch.uint8)
    with torch.no_grad():
        _, reference = deployable(model)(frames)
        for dtype in (torch.bfloat16, torch.float16):  # BF16 is the CPU's reduced precision (eq. 6's pool included)
            graph = deployable(model, dtype)
            assert {t.dtype for t in [*graph.model.fusion.state_dict().values(), *graph.model.quality.state_dict().values()]} == {torch.float32}
            assert graph.model.tcm.stem[0][0].weight.dtype == dtype
            sims, score = graph(frames)
            assert sims.dtype == score.dtype == torch.float32
            assert (score - reference).abs().max() < 2e-2


def test_no_other_family_takes_the_packed_frames():
    from qclip_engine.model.clipvqa import CLIPVQAConfig
    from qclip_engine.model.fastvqa import FASTVQAConfig
    from qclip_engine.model.qclip import QCLIPConfig

    for config in (QCLIPConfig, CLIPVQAConfig, FASTVQAConfig):
        with pytest.raises(ValueError, match="fragments_and_crop"):
            config(preprocessing="fragments_and_crop")


def test_resume_keeps_the_batch_norm_statistics_of_the_trained_parts(clipvqa_backbone, tmp_path):
    from train.checkpoint import load_checkpoint, save_checkpoint

    model = create_model(**tiny(clipvqa_backbone)).train()
    frames = torch.randint(0, 256, (2, FRAMES, SIDE, 2 * SIDE, 3), generator=torch.Generator().manual_seed(6),
                           dtype=torch.uint8)
    model(model.normalize(frames))  # a training step's forward moves the running statistics
    optimiser = torch.optim.AdamW(model.trainable_parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)
    save_checkpoint(tmp_path / "checkpoint.pt", 0, model, optimiser, scheduler, {"score": 0.0})
    fresh = create_model(**tiny(clipvqa_backbone))
    fresh_optimiser = torch.optim.AdamW(fresh.trainable_parameters())
    load_checkpoint(tmp_path / "checkpoint.pt", fresh, fresh_optimiser,
                    torch.optim.lr_scheduler.LambdaLR(fresh_optimiser, lambda step: 1.0))
    statistics = [n for n in model.state_dict() if n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert statistics and all(torch.equal(fresh.state_dict()[n], model.state_dict()[n]) for n in model.state_dict())


def test_several_cpu_processes_refuse_trained_batch_norm_and_other_families_have_none(clipvqa_backbone, monkeypatch):
    from train import distributed
    from train.errors import ConfigError

    model = create_model(**tiny(clipvqa_backbone))
    assert "vbtc.adapter.conv2.1" in distributed.trained_batch_norms(model)
    assert distributed.trained_batch_norms(create_model("fastvqa", **VENTRAL)) == []
    monkeypatch.setattr(distributed, "active", lambda: True)  # as under torchrun with gloo
    with pytest.raises(ConfigError, match="SyncBatchNorm, which needs CUDA"):
        distributed.wrap(model, torch.device("cpu"))
