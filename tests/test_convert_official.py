"""qclip-convert official: checkpoints of the official Q-CLIP train.py become artifacts that score as
the model they were saved from, and export and train further like any other."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import register_open_clip_config, trained_like, uint8_frames
from media import encode, moving_frames
from official_layout import official_checkpoint

from qclip_engine import QCLIP, QCLIPConfig, load_artifact
from qclip_engine.cli.convert import main as convert_main
from qclip_engine.convert.official_qclip import convert_official, read_official
from qclip_engine.errors import ConversionError

# PE-Core-T's vision tower with a text tower of the same width and depth (192, 12 blocks), as the
# official model needs (its adapters are shared by block index); PE-Core-L-14-336 has 1024 and 24.
SHARED = "PE-Core-T-16-384-shared"
START = 9  # adapters on blocks 9, 10, 11


@pytest.fixture(scope="module")
def shared_backbone(tmp_path_factory):
    return register_open_clip_config(tmp_path_factory.mktemp("configs"), SHARED, {
        "embed_dim": 192,
        "vision_cfg": {"image_size": 384, "timm_model_name": "vit_pe_core_tiny_patch16_384",
                       "timm_model_pretrained": False, "timm_pool": "map", "timm_proj": None},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 192, "heads": 3, "layers": 12},
        "custom_text": True,
    })


@pytest.fixture(scope="module")
def source(shared_backbone):
    """The model the official code would have trained, and its train.py checkpoint."""
    torch.manual_seed(0)
    model = QCLIP(QCLIPConfig(backbone=shared_backbone, pretrained=None, adapter_layers=12 - START, num_frames=2,
                              rope="qclip_official", preprocessing="reference", sampler="uniform"))
    with torch.no_grad():
        model.backbone.visual.trunk.head.bias.zero_()  # Meta's projection has no bias
    model = trained_like(model)
    sd = official_checkpoint(model, START)
    return model, {"state_dict": {f"module.{k}": v for k, v in sd.items()},
                   "validation_results": {"srocc": 0.9, "plcc": 0.91}}


def test_every_tensor_lands_where_the_model_uses_it(source, tmp_path):
    model, checkpoint = source
    path = tmp_path / "qclip_lsvq_val-ltest_best.pth"
    torch.save(checkpoint, path)
    umask = os.umask(0o027)  # the files are the umask's, not safetensors' 0600: another user may read them
    try:
        out, ckpt = convert_official(path, tmp_path / "artifact", num_frames=2)
    finally:
        os.umask(umask)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "backbone.safetensors": 0o640, "adapters.safetensors": 0o640, "config.json": 0o640}
    assert out.stat().st_mode & 0o777 == 0o750 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert ckpt.adapter_start_layer == START and ckpt.backbone == SHARED  # both read off the checkpoint
    assert ckpt.unused == [f"encoder_adapters.{i}.*" for i in range(START)]
    assert ckpt.validation_results == {"srocc": 0.9, "plcc": 0.91}
    converted = load_artifact(out)
    assert converted.config.rope == "qclip_official" and converted.config.preprocessing == "reference"
    assert converted.config.sampler == "uniform"
    for name, tensor in model.trainable_state_dict().items():
        assert torch.equal(converted.trainable_state_dict()[name], tensor), name
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(converted.backbone.state_dict()[name], tensor), name
    pixels = uint8_frames(model, 2, 2)
    with torch.no_grad():
        assert torch.equal(converted(model.normalize(pixels)), model(model.normalize(pixels)))
    # the artifact carries its backbone by a relative name: the directory can move
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["pretrained"] == "backbone.safetensors"
    moved = out.rename(tmp_path / "moved")
    assert torch.equal(load_artifact(moved).level_weights, model.level_weights)


def test_a_backbone_weights_file_is_referred_to_when_it_holds_the_same_tensors(source, tmp_path, caplog):
    from official_layout import meta_pe_layout

    model, checkpoint = source
    meta_file = tmp_path / "PE-Core-T16-384-shared.pt"
    torch.save(meta_pe_layout(model.backbone.state_dict()), meta_file)
    out, _ = convert_official(checkpoint, tmp_path / "a", backbone_weights=str(meta_file), num_frames=2)
    load_artifact(out)
    # the backbone is matched by shapes and built from a Meta .pt: every tensor loaded, no random model
    assert "Model initialized randomly" not in caplog.text
    assert not (out / "backbone.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["model"]["pretrained"] == str(meta_file.resolve())
    other = meta_pe_layout(model.backbone.state_dict())
    other["visual.conv1.weight"] = other["visual.conv1.weight"] + 1
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ConversionError, match="other backbone weights"):
        convert_official(checkpoint, tmp_path / "b", backbone_weights=str(tmp_path / "other.pt"), num_frames=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["PE-Core-T16-384-shared.pt", "a", "other.pt"]  # no "b"


def _broken(checkpoint, change):
    sd = dict(checkpoint["state_dict"])
    change(sd)
    return {"state_dict": sd}


@pytest.mark.parametrize("change,listed", [
    (lambda sd: sd.update({"module.extra_head.weight": torch.zeros(3)}), "module.extra_head.weight|extra_head.weight"),
    (lambda sd: sd.pop("module.score_proj"), r"\n  score_proj: not in the checkpoint"),
    (lambda sd: sd.update({"module.shared_core.0.weight": torch.zeros(128, 64)}), r"shared_core\.0\.weight: \(128, 64\)"),
    (lambda sd: sd.update({"module.encoder_adapters.10.down_proj.weight": torch.zeros(7, 192)}),
     r"\n  encoder_adapters\.10\.down_proj\.weight: \(7, 192\), expected \(128, 192\)$"),
    (lambda sd: sd.pop("module.encoder_adapters.4.ln.bias"), "encoder_adapters: expected blocks"),
    (lambda sd: sd.update({"module.image_adapter_weight": torch.zeros(3)}), r"image_adapter_weight: \(3,\), expected one number"),
    (lambda sd: sd.update({"module.prompt_suffix": sd["module.prompt_suffix"] + 1}),
     r"\n  prompt_suffix: the checkpoint's prompt embeddings differ"),
    (lambda sd: sd.update({"module.vit.conv1.weight": sd["module.vit.conv1.weight"] + 1}), "vit.conv1.weight: should repeat"),
    (lambda sd: sd.update({"module.clip_model.visual.transformer.resblocks.0.ln_1.weight": torch.ones(7)}),
     "fits no open_clip PE-Core model"),
])
def test_keys_or_shapes_that_do_not_fit_are_listed_by_the_checkpoints_names_leaving_nothing(source, tmp_path,
                                                                                           change, listed):
    _, checkpoint = source
    with pytest.raises(ConversionError, match=listed) as raised:
        convert_official(_broken(checkpoint, change), tmp_path / "new" / "out", num_frames=2)
    assert not any(ours in str(raised.value) for ours in ("escma", "pscma", "level_weights", "prompts."))
    assert list(tmp_path.iterdir()) == []  # no backbone.safetensors, no folder, no parent


def test_pe_core_l_14_336_shapes_map_onto_the_models_on_the_meta_device():
    """The real size, shapes only: every official tensor of a PE-Core-L-14-336 checkpoint maps onto
    a tensor of the same shape in this engine's model, backbone recognised, blocks 0–17 left out."""
    with torch.device("meta"):
        model = QCLIP(QCLIPConfig(backbone="PE-Core-L-14-336", pretrained=None, adapter_layers=6))
    sd = official_checkpoint(model, 18)
    ckpt = read_official({"state_dict": sd}, adapter_start_layer=18)
    assert ckpt.backbone == "PE-Core-L-14-336" and ckpt.depth == 24 and ckpt.shared_dim == 128
    expected = {k: v.shape for k, v in model.trainable_state_dict().items()}
    assert {k: v.shape for k, v in ckpt.trained.items()} == expected
    assert {k: v.shape for k, v in ckpt.backbone_state.items()} == {k: v.shape for k, v in model.backbone.state_dict().items()}
    sources = {src for src, _, _ in ckpt.mapped}
    assert sources == {k for k in sd if not k.startswith(("clip_model.", "vit.", "text_encoder.", "prompt_"))
                       and not any(k.startswith(f"encoder_adapters.{i}.") for i in range(18))}


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    lines = []
    for i in range(8):
        frames = moving_frames(6, h=48, w=48, seed=i).astype(np.int16) + 6 * i
        encode(root / f"clip{i}.mp4", np.clip(frames, 0, 255).astype(np.uint8), options={"qp": "10"})
        lines.append(f"clip{i}.mp4,0.24,25,{50 + 5 * i}")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root


def test_the_cli_converts_then_the_artifact_exports_scores_and_trains_further(source, tmp_path, tiny_clips, capsys):
    import yaml

    from qclip_engine import QualityEngine
    from qclip_engine.export.cli import main as export_main
    from qclip_engine.train import run

    model, checkpoint = source
    path = tmp_path / "best.pth"
    torch.save(checkpoint, path)
    assert convert_main(["official", str(path), "--out", str(tmp_path / "artifact"), "--num-frames", "2"]) == 0
    printed = capsys.readouterr().out
    assert "proj_adapter.3.weight" in printed and "pscma.up.weight" in printed  # what it mapped, by name
    assert f"adapter_start_layer: {START}" in printed and "left out" in printed
    assert convert_main(["official", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "x")]) == 2

    clip = str(tiny_clips / "clip3.mp4")
    assert export_main([str(tmp_path / "artifact"), "--engine", "onnx", "--parity-videos", clip]) == 0
    torch_score = QualityEngine(tmp_path / "artifact", engine="torch", device="cpu").score_one(clip).score
    onnx_engine = QualityEngine(tmp_path / "artifact", engine="onnxruntime", device="cpu", precision="fp32")
    assert onnx_engine.score_one(clip).score == pytest.approx(torch_score, abs=1e-4)

    config = {
        "name": "finetune", "seed": 0, "model": {},
        "data": {"data_root": str(tiny_clips),
                 "train": {"labels": "${DATA_ROOT}/labels.txt", "prefix": "${DATA_ROOT}"},
                 "val": {"all": {"labels": "${DATA_ROOT}/labels.txt", "prefix": "${DATA_ROOT}"}}},
        "train": {"epochs": 1, "warmup_epochs": 0, "batch_size": 4, "val_batch_size": 4, "lr": 1e-3,
                  "init_from": str(tmp_path / "artifact")},
    }
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(config))
    run.main(["--config", str(tmp_path / "finetune.yaml"), "--output-dir", str(tmp_path / "run")])
    tuned = load_artifact(tmp_path / "run" / "best")
    assert tuned.config.rope == "qclip_official" and tuned.config.preprocessing == "reference"
    assert not torch.equal(tuned.level_weights, model.level_weights)  # it trained


@pytest.mark.parametrize("kind", ["official", "clipvqa"])  # main checks --out before either reads its checkpoint
@pytest.mark.parametrize("where", ["a_file", "under_a_file", "nowhere_to_create"])
def test_an_out_that_cannot_be_written_is_refused_in_one_line_before_the_conversion(tmp_path, capsys, monkeypatch,
                                                                                      kind, where):
    from qclip_engine.convert import clipvqa, official_qclip

    def converted(*args, **kwargs):
        pytest.fail("the conversion ran although --out cannot be written")

    monkeypatch.setattr(official_qclip, "convert_official", converted)
    monkeypatch.setattr(clipvqa, "read_checkpoint", converted)
    taken = tmp_path / "taken"
    taken.write_text("a file")
    out = {"a_file": taken, "under_a_file": taken / "artifact",  # /proc takes no new entry, not even root's:
           "nowhere_to_create": Path("/proc/qclip-convert-test/artifact")}[where]
    if where == "nowhere_to_create" and not os.path.isdir("/proc"):
        pytest.skip("needs Linux's /proc")
    checkpoint = tmp_path / "best.pth"
    checkpoint.write_bytes(b"")
    assert convert_main([kind, str(checkpoint), "--out", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"qclip-convert: --out {out}: "), line
    assert taken.read_text() == "a file"


def test_a_state_dict_whose_keys_are_not_strings_is_checkpoint_invalid(tmp_path, capsys):
    state = {"clip_model.visual.conv1.weight": torch.zeros(1), 7: torch.zeros(1)}
    with pytest.raises(ConversionError, match=r"not strings\): \[7\]") as raised:
        read_official({"state_dict": state})
    assert raised.value.code == "checkpoint_invalid"
    path = tmp_path / "odd.pth"
    torch.save({"state_dict": state}, path)
    assert convert_main(["official", str(path), "--out", str(tmp_path / "artifact")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("qclip-convert: [checkpoint_invalid] ") and "[7]" in line, line
