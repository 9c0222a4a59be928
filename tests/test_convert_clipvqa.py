"""qclip-convert clipvqa: checkpoints of the released CLIPVQA main.py become CLIPVQA models (and
artifacts) holding every tensor where the model uses it, scoring exactly as the model they were
saved from; checkpoints that do not fit are refused with everything that does not fit listed."""

import copy
import json

import pytest
import torch
from clipvqa_layout import released_checkpoint, released_key, save_released
from conftest import register_open_clip_config

from qclip_engine.cli.convert import SAT_ATTENTIONS as CLI_SAT_ATTENTIONS
from qclip_engine.cli.convert import _parser
from qclip_engine.cli.convert import main as convert_main
from qclip_engine.convert.clipvqa import (
    clipvqa_config,
    convert_clipvqa,
    load_clipvqa,
    map_clipvqa,
    read_checkpoint,
    read_clipvqa,
)
from qclip_engine.errors import ConversionError
from qclip_engine.model.clipvqa import CLIPVQA, SAT_ATTENTIONS, CLIPVQAConfig

# An OpenAI-layout CLIP small enough for CPU, unlike any other registered config: vision width 128
# (2 heads, as the released code gives width // 64), 2 blocks, 8-px patches on 32 px; embed 64;
# text width 64 (1 head), 2 blocks, context 16. Three frames, two SAT blocks, one VAT layer.
TINY = "CLIPVQA-T-convert"
FRAMES, SAT_LAYERS, VAT_LAYERS = 3, 2, 1


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory):
    return register_open_clip_config(tmp_path_factory.mktemp("configs"), TINY, {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    })


@pytest.fixture(scope="module")
def source(tiny_backbone, tmp_path_factory):
    """A 'trained' model (every tensor moved off its init, the frozen ones too) and its released checkpoint."""
    model = CLIPVQA(CLIPVQAConfig(backbone=tiny_backbone, pretrained=None, num_frames=FRAMES, image_size=32,
                                  sat_layers=SAT_LAYERS, vat_layers=VAT_LAYERS, init_seed=3)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.refresh_text_features()
    checkpoint = released_checkpoint(model)
    path = tmp_path_factory.mktemp("released") / "best.pth"
    save_released(checkpoint, path)
    return model, checkpoint, path


def pixels(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, FRAMES, 32, 32, 3), generator=g, dtype=torch.uint8)


def assert_same_model(converted, model):
    assert set(converted.state_dict()) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(converted.state_dict()[name], tensor), name
    assert torch.equal(converted.text_features, model.text_features)
    video = model.normalize(pixels(3))
    with torch.no_grad():
        assert torch.equal(converted.level_probs(video), model.level_probs(video))
        assert torch.equal(converted(video), model(video))


def test_every_tensor_lands_where_the_model_uses_it(source):
    model, checkpoint, path = source
    raw = read_checkpoint(path)
    assert raw["epoch"] == 3 and raw["max_accuracy"] == 1.7
    assert raw["config"]["DATA"]["NUM_FRAMES"] == FRAMES  # the yacs config, as plain dicts
    assert "optimizer" in raw and "lr_scheduler" in raw
    state = read_clipvqa(path)
    assert set(state) == set(checkpoint["model"])
    assert map_clipvqa(state).keys() == model.state_dict().keys()
    converted = load_clipvqa(path)
    config = converted.config
    assert (config.backbone, config.num_frames, config.image_size) == (TINY, FRAMES, 32)  # read off the shapes
    assert (config.sat_layers, config.vat_layers, config.pretrained, config.sat_attention) == (
        SAT_LAYERS, VAT_LAYERS, None, "alone")
    assert_same_model(converted, model)


def test_sat_attention_batch_converts_into_the_batch_mode_model(source):
    # the converted model in batch mode is the source model's batch mode (the released code's
    # attention across a batch; tests/test_clipvqa_modules.py checks that attention by hand)
    model, checkpoint, _ = source
    converted = load_clipvqa(checkpoint, sat_attention="batch")
    assert converted.config.sat_attention == "batch"
    released = CLIPVQA(CLIPVQAConfig(**(model.config.to_dict() | {"sat_attention": "batch", "pretrained": None})))
    released.load_state_dict(model.state_dict())
    video = model.normalize(pixels(2, seed=4))
    with torch.no_grad():
        assert torch.equal(converted.level_probs(video), released.eval().level_probs(video))


def test_a_module_prefix_and_a_bare_state_dict_are_accepted(source):
    model, checkpoint, _ = source
    prefixed = {"model": {f"module.{k}": v for k, v in checkpoint["model"].items()}}
    assert_same_model(load_clipvqa(prefixed), model)
    assert_same_model(load_clipvqa(dict(checkpoint["model"])), model)


def test_the_layout_helper_names_what_the_notes_name():
    """Spot checks of the independent inverse layout itself, one per released module."""
    assert released_key("messages.1.norm.weight") == "visual.transformer.resblocks.1.message_ln.weight"
    assert released_key("messages.0.attn.out_proj.bias") == "visual.transformer.resblocks.0.message_attn.out_proj.bias"
    assert released_key("sat.blocks.0.mlp.proj.weight") == "mit.resblocks.0.mlp.c_proj.weight"
    assert released_key("vat.layers.1.cross.q.weight") == "prompts_generator.decoder.1.cross_attn.q_proj.weight"
    assert released_key("vat.layers.0.cross.out.bias") == "prompts_generator.decoder.0.cross_attn.proj.bias"
    assert released_key("vat.layers.0.mlp.proj.bias") == "prompts_generator.decoder.0.mlp.3.bias"
    assert released_key("text.transformer.resblocks.1.ln_2.bias") == "transformer.resblocks.1.ln_2.bias"
    assert released_key("temporal_conv.weight") == "conv2.weight"


def _broken(checkpoint, change):
    state = dict(checkpoint["model"])
    change(state)
    return {"model": state}


@pytest.mark.parametrize("change,overrides,listed", [
    (lambda sd: sd.pop("mit.alpha"), {}, r"mit\.alpha \(→ sat\.alpha\): not in the checkpoint"),
    (lambda sd: sd.update({"prompts_generator.decoder.0.cross_attn.q_proj.weight": torch.zeros(3, 3)}), {},
     r"prompts_generator\.decoder\.0\.cross_attn\.q_proj\.weight \(3, 3\) \(→ vat\.layers\.0\.cross\.q\.weight\): "
     r"the model has \(64, 64\)"),
    (lambda sd: sd.update({"head.weight": torch.zeros(6, 64)}), {}, r"head\.weight: not a tensor of the released"),
    (lambda sd: sd.update({"prompts_generator.decoder.5.norm1.weight": torch.ones(64)}), {},
     r"prompts_generator\.decoder\.\*: blocks \[0, 5\]"),
    (lambda sd: sd.update({"conv2.weight": torch.zeros(64, 64, FRAMES + 1, 1)}), {}, r"conv2\.weight \(64, 64, 4, 1\)"),
    (lambda sd: sd.update({"visual.conv1.weight": torch.zeros(128, 3, 7, 7)}), {},
     r"fit no open_clip model.*ViT-B-16: vision width 768 ≠ 128"),
    (lambda sd: None, {"num_frames": 8}, r"num_frames=8 asked, but the checkpoint's shapes hold 3"),
    (lambda sd: None, {"backbone": "ViT-B-16"}, r"backbone 'ViT-B-16' does not fit: vision width 768 ≠ 128"),
    (lambda sd: sd.pop("mit.positional_embedding"), {}, r"lacks \['mit\.positional_embedding'\]"),
])
def test_what_does_not_fit_is_listed(source, change, overrides, listed):
    _, checkpoint, _ = source
    with pytest.raises(ConversionError, match=listed) as raised:
        load_clipvqa(_broken(checkpoint, change), **overrides)
    assert raised.value.code == "checkpoint_invalid"


def test_every_problem_is_listed_in_one_error(source):
    _, checkpoint, _ = source

    def change(sd):
        sd.pop("visual.transformer.resblocks.1.message_fc.bias")
        sd["prompts_visual_ln.weight"] = torch.ones(7)
        sd["extra"] = torch.zeros(1)

    with pytest.raises(ConversionError) as raised:
        load_clipvqa(_broken(checkpoint, change))
    message = str(raised.value)
    assert "(3 problems)" in message
    for needle in ("visual.transformer.resblocks.1.message_fc.bias (→ messages.1.fc.bias): not in the checkpoint",
                   "prompts_visual_ln.weight (7,) (→ patch_norm.weight): the model has (128,)",
                   "extra: not a tensor of the released CLIPVQA model"):
        assert needle in message
    with pytest.raises(ConversionError, match="extra"):
        map_clipvqa(_broken(checkpoint, change)["model"])


def test_unreadable_files_are_refused_in_one_line(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConversionError) as raised:
        read_checkpoint(junk)
    assert raised.value.code == "checkpoint_invalid" and "\n" not in str(raised.value)
    with pytest.raises(ConversionError) as raised:
        read_checkpoint(tmp_path / "missing.pth")
    assert raised.value.code == "not_found"
    # an object the weights-only load will not build: refused, never run
    hostile = tmp_path / "hostile.pth"
    torch.save({"model": {}, "config": ConversionError("x")}, hostile)
    with pytest.raises(ConversionError, match="weights-only load does not build") as raised:
        read_checkpoint(hostile)
    assert "\n" not in str(raised.value)


def test_config_is_read_off_the_shapes_without_building_a_model(source):
    _, checkpoint, _ = source
    config = clipvqa_config(read_clipvqa(checkpoint), sat_attention="batch", init_seed=5)
    assert (config.backbone, config.num_frames, config.image_size, config.sat_layers, config.vat_layers) == (
        TINY, FRAMES, 32, SAT_LAYERS, VAT_LAYERS)
    assert (config.sat_attention, config.init_seed, config.pretrained) == ("batch", 5, None)


def test_released_vit_b16_shapes_read_as_vit_b16_on_the_meta_device():
    """The released main config's sizes, shapes only: ViT-B/16, 224 px, 32 frames, 1 SAT block, 2 VAT layers."""
    with torch.device("meta"):
        model = CLIPVQA(CLIPVQAConfig(pretrained=None))
    state = {released_key(k): v for k, v in model.state_dict().items()}
    config = clipvqa_config(state)
    assert (config.backbone, config.num_frames, config.image_size, config.sat_layers, config.vat_layers) == (
        "ViT-B-16", 32, 224, 1, 2)
    assert {k: v.shape for k, v in map_clipvqa(state).items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_the_cli_converts_a_good_checkpoint_and_refuses_a_bad_one_in_one_line(source, tmp_path, capsys):
    from qclip_engine import load_artifact

    model, _, path = source
    assert convert_main(["clipvqa", str(path), "--out", str(tmp_path / "artifact")]) == 0
    printed = capsys.readouterr().out
    assert "mit.positional_embedding" in printed and "sat.frame_pos" in printed  # what it mapped, by name
    assert f"backbone {TINY}, {FRAMES} frames, 32 px" in printed and "sat_attention alone" in printed
    assert "epoch 3, max_accuracy 1.7" in printed and "left out (training state): lr_scheduler, optimizer" in printed
    assert_same_model(load_artifact(tmp_path / "artifact"), model)

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    for argv in (["clipvqa", str(junk), "--out", str(tmp_path / "x")],
                 ["clipvqa", str(path), "--out", str(tmp_path / "y"), "--num-frames", "8"]):
        assert convert_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0].startswith("qclip-convert: [checkpoint_invalid] "), err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_unreadable_file_cli_message_is_exactly_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    assert convert_main(["clipvqa", str(junk), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qclip-convert: [checkpoint_invalid] "), err


RANDOM_INIT = "Model initialized randomly"  # open_clip's warning for a pretrained=None build


def test_convert_then_load_artifact_round_trips_every_tensor(source, tmp_path, caplog):
    from qclip_engine import load_artifact

    model, _, path = source
    out = convert_clipvqa(path, tmp_path / "artifact", sat_attention="batch")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # every tensor: the model
    saved = json.loads((out / "config.json").read_text())
    assert saved["family"] == "clipvqa" and saved["model"]["sat_attention"] == "batch"
    assert saved["model"]["pretrained"] is None
    loaded = load_artifact(out)
    assert isinstance(loaded, CLIPVQA) and loaded.config.sat_attention == "batch" and loaded.sat.across == "batch"
    released = copy.deepcopy(model)
    released.sat.across = "batch"  # the source model, scoring as the released code does
    assert_same_model(loaded, released)
    assert RANDOM_INIT not in caplog.text  # converting and loading fill every tensor: no random model
    (out / "model.safetensors").rename(out / "adapters.safetensors")  # as artifacts were named before
    assert_same_model(load_artifact(out), released)


def test_a_model_built_without_weights_still_says_it_is_random(source, caplog):
    CLIPVQA(CLIPVQAConfig(**(source[0].config.to_dict() | {"pretrained": None})))
    assert RANDOM_INIT in caplog.text


def test_an_empty_out_directory_becomes_the_artifact_and_a_full_one_keeps_its_files(source, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    for name in ("empty", "full"):
        convert_clipvqa(source[1], tmp_path / name)
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]  # no staging folder left


def test_every_cli_option_states_its_default():
    parser = _parser()
    subparsers = next(a for a in parser._actions if a.dest == "kind").choices
    assert set(subparsers) == {"official", "clipvqa", "fastvqa", "vificlip"}
    for sub in subparsers.values():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and "default" in action.help, action.option_strings
    assert CLI_SAT_ATTENTIONS == SAT_ATTENTIONS


def test_a_converted_checkpoint_is_scored_exported_and_planned_for_ray_by_its_input_spec(source, tmp_path):
    import numpy as np

    from qclip_engine import QualityEngine
    from qclip_engine.artifact import artifact_spec
    from qclip_engine.cluster.batch import RayOptions, _model_settings  # what the Ray driver reads
    from qclip_engine.export.cli import main as export_main
    from qclip_engine.model.clipvqa import LEVEL_WORDS
    from qclip_engine.samples import sample_clips
    from qclip_engine.video import decode
    from qclip_engine.video.limits import DecodeLimits
    from qclip_engine.video.sampling import frame_indices

    model = source[0]
    out = convert_clipvqa(source[2], tmp_path / "artifact")
    spec = artifact_spec(out)  # off config.json, no model built
    assert (spec.config.sampler, spec.config.preprocessing, spec.levels) == ("segment_middle", "mmcv_short_side_crop", LEVEL_WORDS)
    assert _model_settings(str(out), RayOptions()) | {"strict": None} == {
        "image_size": (32, 32), "num_frames": FRAMES, "preprocessing": "mmcv_short_side_crop", "sampler": "segment_middle",
        "strict": None, "max_analysis_frames": 512, "limits": DecodeLimits()}

    engine = QualityEngine(out, engine="torch", precision="fp32", device="cpu")
    clip = sample_clips()[0]
    sampled = engine.sample(clip)  # the released test-time frames: segment middles, short side + centre crop
    n = decode.probe(clip).frame_count
    assert list(sampled.indices) == list(frame_indices(n, "segment_middle", FRAMES))
    assert np.array_equal(sampled.frames, decode.decode_frames(clip, (32, 32), indices=sampled.indices,
                                                               preprocessing="mmcv_short_side_crop"))
    result = engine.run_batch([sampled])[0]
    with torch.no_grad():
        sims = model.level_sims(model.normalize(torch.from_numpy(sampled.frames[None])))
    assert list(result.levels) == list(LEVEL_WORDS)
    assert np.allclose(list(result.levels.values()), sims[0].numpy(), atol=1e-5)
    assert abs(result.score - float(model.score_from_sims(sims)[0])) < 1e-5

    assert export_main([str(out), "--engine", "onnx"]) == 0
    parity = json.loads((out / "parity_onnx.json").read_text())["results"]["model.onnx"]
    assert parity["score"]["max_abs_diff"] <= 1e-4 and parity["level_sims"]["max_abs_diff"] <= 1e-4
    assert parity["frames"]["shape"][1] == FRAMES  # the family's fixed frame count


def test_keys_that_are_not_strings_are_refused_in_the_state_dict_and_listed_at_the_top(source, tmp_path, capsys):
    _, checkpoint, _ = source
    with pytest.raises(ConversionError, match=r"not strings\): \[7\]") as raised:
        read_clipvqa({"model": {**checkpoint["model"], 7: torch.zeros(1)}})
    assert raised.value.code == "checkpoint_invalid"
    path = tmp_path / "best.pth"  # beside the state dict, an entry of training state under a number
    save_released({**checkpoint, 5: "x"}, path)
    assert convert_main(["clipvqa", str(path), "--out", str(tmp_path / "artifact")]) == 0
    assert "left out (training state): 5, lr_scheduler, optimizer" in capsys.readouterr().out


LABELS_1 = ("very bad", "poor", "normal", "good", "great", "perfect")  # the released labels/labels_1.csv


@pytest.fixture(scope="module")
def trained_on_labels_1(source, tmp_path_factory):
    """The source model's checkpoint, its config naming the released labels_1.csv, and that file."""
    model = source[0]
    folder = tmp_path_factory.mktemp("labels_1")
    path = folder / "best.pth"
    save_released(released_checkpoint(model, label_list="labels/labels_1.csv"), path)
    labels = folder / "labels_1.csv"
    labels.write_text("id,name\n0,very bad \n1,poor\n2,normal\n3,good\n4,great\n5,perfect\n")  # as released
    return path, labels


def test_a_checkpoint_naming_another_label_list_is_refused_without_its_words(trained_on_labels_1, tmp_path, capsys):
    path, _ = trained_on_labels_1
    assert convert_main(["clipvqa", str(path), "--out", str(tmp_path / "artifact")]) == 2
    captured = capsys.readouterr()
    assert "its label list (DATA.LABEL_LIST): labels/labels_1.csv" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qclip-convert: [checkpoint_invalid] "), err
    assert "labels/labels_1.csv" in err[0] and "--labels FILE" in err[0] and "--level-words" in err[0]
    assert not (tmp_path / "artifact").exists()


@pytest.mark.parametrize("given", ["labels", "words"])
def test_the_words_given_go_into_the_artifact_and_score(trained_on_labels_1, source, tmp_path, capsys, given):
    from qclip_engine import load_artifact
    from qclip_engine.artifact import artifact_spec

    path, labels = trained_on_labels_1
    words = ["--labels", str(labels)] if given == "labels" else ["--level-words", ",".join(LABELS_1)]
    assert convert_main(["clipvqa", str(path), "--out", str(tmp_path / "artifact"), *words]) == 0
    assert f"level words ({f'from {labels}' if given == 'labels' else 'as given'}), worst first: very bad, poor" in (
        capsys.readouterr().out)
    assert artifact_spec(tmp_path / "artifact").levels == LABELS_1
    model = source[0]
    expected = CLIPVQA(CLIPVQAConfig(**(model.config.to_dict() | {"level_words": LABELS_1})))
    expected.load_state_dict(model.state_dict())
    expected.refresh_text_features()
    assert_same_model(load_artifact(tmp_path / "artifact"), expected.eval())


def test_the_default_label_list_needs_no_words_and_gets_the_default_ones(source):
    from qclip_engine.convert.clipvqa import level_words_for
    from qclip_engine.model.clipvqa import LEVEL_WORDS

    assert level_words_for(source[1]) == LEVEL_WORDS  # labels/labels.csv
    assert level_words_for(dict(source[1]["model"])) == LEVEL_WORDS  # a bare state dict names none
