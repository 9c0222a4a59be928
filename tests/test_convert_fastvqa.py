"""``qclip-convert fastvqa``: a checkpoint in the released FAST-VQA layout, written here through an
independent inverse of the map (released names, its position-index buffers, its numpy validation
results), converts into an artifact holding every tensor, scoring as the model it came from; a
checkpoint that does not fit is one ``checkpoint_invalid`` error listing every misfit."""

import json

import numpy as np
import pytest
import torch

from qclip_engine import QualityEngine, load_artifact
from qclip_engine.cli.convert import main as convert_main
from qclip_engine.convert.fastvqa import load_fastvqa
from qclip_engine.errors import ConversionError
from qclip_engine.model.fastvqa import FASTVQA, VARIANTS, FASTVQAConfig
from qclip_engine.samples import sample_clips

# Tiny backbones with the released windows: what the converter reads off the shapes.
TINY = {"embed_dim": 8, "depths": (2, 1, 1, 2), "num_heads": (1, 2, 2, 4), "head_hidden": 8}


def _released_index(window):
    """The released relative position index of a window, computed here from its definition."""
    wd, wh, ww = window
    coords = np.stack(np.meshgrid(np.arange(wd), np.arange(wh), np.arange(ww), indexing="ij")).reshape(3, -1)
    rel = coords[:, :, None] - coords[:, None, :]
    return torch.from_numpy((rel[0] + wd - 1) * (2 * wh - 1) * (2 * ww - 1) + (rel[1] + wh - 1) * (2 * ww - 1)
                            + rel[2] + ww - 1)


def released_checkpoint(model: FASTVQA) -> dict:
    """``model`` saved as the released training saves its DiViDeAddEvaluator."""
    state = {}
    for name, tensor in model.state_dict().items():
        part, rest = name.split(".", 1)
        state[{"backbone": "fragments_backbone", "head": "vqa_head"}[part] + "." + rest] = tensor.clone()
    for stage, depth in enumerate(model.config.depths):
        for block in range(depth):
            state[f"fragments_backbone.layers.{stage}.blocks.{block}.attn.relative_position_index"] = (
                _released_index(model.config.window_size))
    return {"state_dict": state, "validation_results": (np.float64(0.8), np.float64(0.81), np.float64(0.6), 9.5)}


def _model(variant, **settings):
    preset = VARIANTS[variant]
    config = {k: preset[k] for k in ("window_size", "frag_biases", "image_size", "num_frames", "views", "sampler",
                                     "aligned")}
    torch.manual_seed(1)
    model = FASTVQA(FASTVQAConfig(**config | TINY | settings)).eval()
    with torch.no_grad():  # the tables start at zero: give them values a swap would show
        for name, p in model.named_parameters():
            if "bias_table" in name:
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize(("variant", "file_name"), [("fast-vqa-m", "FAST_VQA_M_1_4.pth"),
                                                    ("fastervqa", "FAST_VQA_3D_1_1.pth")])
def test_a_released_checkpoint_round_trips_every_tensor_and_the_score(variant, file_name, tmp_path, capsys):
    model = _model(variant)
    path = tmp_path / file_name
    torch.save(released_checkpoint(model), path)
    assert convert_main(["fastvqa", str(path), "--out", str(tmp_path / "artifact")]) == 0
    printed = capsys.readouterr().out
    assert f"variant {variant} (from the file name)" in printed and "relative_position_index" in printed
    loaded = load_artifact(tmp_path / "artifact")
    assert type(loaded) is FASTVQA and loaded.config == model.config
    ours, theirs = loaded.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    config = json.loads((tmp_path / "artifact" / "config.json").read_text())
    assert config["family"] == "fastvqa" and config["model"]["views"] == VARIANTS[variant]["views"]
    clip = sample_clips()[0]
    scored = next(iter(QualityEngine(tmp_path / "artifact", engine="torch", device="cpu").score([clip])))
    direct = next(iter(QualityEngine(model=model, engine="torch", device="cpu").score([clip])))
    assert scored.error is None and scored.score == pytest.approx(direct.score, abs=1e-6)


def test_a_variant_the_weights_cannot_tell_must_be_named(tmp_path, capsys):
    from qclip_engine.convert.fastvqa import choose_variant

    same_tensors = released_checkpoint(_model("fastervqa"))["state_dict"]  # FAST-VQA-B's shapes too
    with pytest.raises(ConversionError, match=r"fit the variants \['fast-vqa-b', 'fastervqa'\] alike.*--variant"):
        load_fastvqa(same_tensors)
    assert choose_variant(released_checkpoint(_model("fast-vqa-m"))["state_dict"]) == (
        "fast-vqa-m", "the only one the weights fit")
    assert choose_variant(same_tensors, "FAST_VQA_B_1_4.pth") == ("fast-vqa-b", "from the file name")
    path = tmp_path / "my_finetune.pth"
    torch.save({"state_dict": same_tensors}, path)
    assert convert_main(["fastvqa", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "--variant" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert convert_main(["fastvqa", str(path), "--out", str(tmp_path / "out"), "--variant", "fastervqa"]) == 0
    assert load_artifact(tmp_path / "out").config.sampler == "temporal_fragments:8"


def test_views_and_the_variant_can_be_chosen(tmp_path):
    model = _model("fastervqa")
    converted = load_fastvqa(released_checkpoint(model), "fast-vqa-b", views=1)  # same shapes as FasterVQA
    assert (converted.config.num_frames, converted.config.views, converted.config.sampler) == (32, 1, "temporal_fragments:1")
    assert load_fastvqa(released_checkpoint(model), "fast-vqa-b").config.num_frames == 128


def test_misfits_are_one_checkpoint_invalid_error_listing_each(tmp_path, capsys):
    checkpoint = released_checkpoint(_model("fast-vqa-m"))
    state = checkpoint["state_dict"]
    del state["vqa_head.fc_last.bias"]
    state["fragments_backbone.norm.weight"] = torch.zeros(7)
    state["fragments_backbone.extra.weight"] = torch.zeros(1)
    state["fragments_backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(64, 64, dtype=torch.long)
    with pytest.raises(ConversionError) as info:
        load_fastvqa(checkpoint, "fast-vqa-m")
    message = str(info.value)
    assert info.value.code == "checkpoint_invalid" and "4 problems" in message
    for part in ("vqa_head.fc_last.bias (→ head.fc_last.bias): not in the checkpoint",
                 "fragments_backbone.norm.weight (7,)", "fragments_backbone.extra.weight",
                 "layers.0.blocks.0.attn.relative_position_index: not the relative position index"):
        assert part in message
    with pytest.raises(ConversionError, match="variant 'fastervqa' has"):  # the shapes say FAST-VQA-M
        load_fastvqa(released_checkpoint(_model("fast-vqa-m")), "fastervqa")
    path = tmp_path / "FAST_VQA_M_1_4.pth"
    torch.save(checkpoint, path)
    assert convert_main(["fastvqa", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qclip-convert: [checkpoint_invalid]") and not (tmp_path / "out").exists()
    (tmp_path / "code.pth").write_bytes(b"not a checkpoint")
    assert convert_main(["fastvqa", str(tmp_path / "code.pth"), "--out", str(tmp_path / "out2")]) == 2
    assert "[checkpoint_invalid]" in capsys.readouterr().err


def test_the_cli_names_the_variants_the_model_knows():
    from qclip_engine.cli.convert import FASTVQA_VARIANTS  # named there so that --help needs no torch

    assert FASTVQA_VARIANTS == tuple(VARIANTS)
