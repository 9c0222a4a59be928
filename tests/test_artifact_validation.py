"""Bad artifacts never take scoring down (qclip_engine/artifact_schema.py, qclip_engine/artifact.py):
a damaged config.json, NaN or infinite weights, or a calibration without finite MOS is one
``artifact_invalid`` line naming the field, at load, in ``artifact_spec``, in ``qclip-score`` (exit 2)
and already at save (``qclip-convert``); a non-finite model output is that video's
``non_finite_output`` error (``QualityEngine.run_batch``), never a NaN in a record."""

import json
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_model
from media import encode, moving_frames
from safetensors.torch import load_file, save_file

from qclip_engine import load_artifact, save_artifact
from qclip_engine.artifact import ADAPTERS_FILE, CONFIG_FILE, artifact_spec
from qclip_engine.artifact_schema import MODEL_SCHEMAS, check_config
from qclip_engine.errors import ArtifactError
from qclip_engine.model.clipvqa import CLIPVQAConfig
from qclip_engine.model.dvlta import DVLTAConfig
from qclip_engine.model.fastvqa import FASTVQAConfig
from qclip_engine.model.qclip import QCLIPConfig

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = {"pred_mean": 0.1, "pred_std": 0.02, "target_mean": 60.0, "target_std": 15.0}


@pytest.fixture(scope="module")
def model():
    return tiny_model()  # PE-Core-T at 64 px, 4 frames


@pytest.fixture(scope="module")
def qclip_artifact(model, tmp_path_factory):
    return save_artifact(model, tmp_path_factory.mktemp("valid") / "qclip", calibration=CALIBRATION)


@pytest.fixture(scope="module")
def clipvqa_artifact(_clipvqa_tiny, tmp_path_factory):
    return save_artifact(_clipvqa_tiny, tmp_path_factory.mktemp("valid") / "clipvqa")


def damaged_config(artifact, directory, edit):
    """A copy of ``artifact`` whose config.json went through ``edit`` (a dict → None); the tensors
    are linked, not copied."""
    directory.mkdir()
    (directory / ADAPTERS_FILE).symlink_to(artifact / ADAPTERS_FILE)
    config = json.loads((artifact / CONFIG_FILE).read_text())
    edit(config)
    (directory / CONFIG_FILE).write_text(json.dumps(config))  # NaN and Infinity as Python's json writes them
    return directory


def assert_refused(call, field):
    with pytest.raises(ArtifactError) as info:
        call()
    assert info.value.code == "artifact_invalid"
    assert field in info.value.message and "\n" not in info.value.message, info.value.message


def put(path, value):
    """An edit setting ``path`` (dotted) to ``value``."""
    *parents, last = path.split(".")

    def edit(config):
        for key in parents:
            config = config[key]
        config[last] = value
    return edit


def drop(path):
    *parents, last = path.split(".")

    def edit(config):
        for key in parents:
            config = config[key]
        del config[last]
    return edit


QCLIP_DAMAGE = [
    (drop("model"), "model is missing"),
    (drop("backbone"), "backbone is missing"),
    (drop("model.backbone"), "model.backbone"),
    (put("model", [1, 2]), "model must be an object"),
    (put("backbone", ["PE-Core-T-16-384"]), "backbone must be an object"),
    (put("preprocess", [64, 64]), "preprocess must be an object"),
    (put("model.num_frames", 8.5), "model.num_frames"),
    (put("model.num_frames", "8"), "model.num_frames"),
    (put("model.num_frames", True), "model.num_frames"),
    (put("model.num_frames", 100000), "model.num_frames"),
    (put("model.image_size", 100000), "model.image_size"),
    (put("model.image_size", [64]), "model.image_size"),
    (put("model.shared_dim", 10**6), "model.shared_dim"),
    (put("model.adapter_layers", 0), "model.adapter_layers"),
    (put("model.context_tokens", -1), "model.context_tokens"),
    (put("model.sampler", "nope"), "model.sampler"),
    (put("model.rope", 3), "model.rope"),
    (put("model.preprocessing", "fastest"), "model.preprocessing"),
    (put("model.init_seed", -1), "model.init_seed"),
    (put("model.pretrained", 5), "model.pretrained"),
    (put("family", ["qclip"]), "family"),
    (put("mode", "training"), "mode"),
    (drop("backbone.fingerprint"), "backbone.fingerprint"),
    (put("backbone.fingerprint", "abc"), "backbone.fingerprint"),
    (drop("preprocess.image_size"), "preprocess.image_size"),
    (put("preprocess.image_size", [100000, 100000]), "preprocess.image_size"),
    (put("preprocess.image_size", [32, 32]), "preprocess.image_size must equal model.image_size"),
    (put("prompts", "bad to excellent"), "prompts must be an object"),
    (put("prompts.levels", ["bad"]), "prompts.levels"),
    (put("prompts.levels", ["bad", "poor", "fair", "good", "great", "excellent"]), "prompts.levels"),
    (put("calibration", "linear"), "calibration must be null or an object"),
    (drop("calibration.pred_std"), "calibration lacks pred_std"),
    (put("calibration.scale", 2.0), "calibration has keys this version does not know"),
    (put("calibration.pred_std", "0.02"), "calibration.pred_std"),
    (put("calibration.target_std", True), "calibration.target_std"),
    (put("calibration.pred_std", 0), "calibration.pred_std"),
    (put("calibration.target_std", -15.0), "calibration.target_std"),
    (put("calibration.pred_mean", float("nan")), "calibration.pred_mean"),
    (put("calibration.target_mean", float("inf")), "calibration.target_mean"),
    (lambda c: c["calibration"].update(pred_std=1e-308, target_std=1e308), "calibration.target_std / calibration.pred_std"),
    (lambda c: c["calibration"].update(pred_mean=1e308, pred_std=1e308, target_std=1.0), "calibration maps scores"),
]


@pytest.mark.parametrize("edit, field", QCLIP_DAMAGE, ids=[f for _, f in QCLIP_DAMAGE])
def test_a_damaged_qclip_config_is_one_line_naming_the_field(qclip_artifact, tmp_path, edit, field):
    damaged = damaged_config(qclip_artifact, tmp_path / "art", edit)
    assert_refused(lambda: artifact_spec(damaged), field)  # Ray's and the CLI's CSV columns: no model built
    assert_refused(lambda: load_artifact(damaged), field)


CLIPVQA_DAMAGE = [
    (put("model.num_frames", 8.5), "model.num_frames"),
    (put("model.image_size", [32, 32]), "model.image_size"),  # CLIPVQAConfig takes a square side only
    (put("model.image_size", 100000), "model.image_size"),
    (put("model.sat_layers", 1000), "model.sat_layers"),
    (put("model.vat_alpha", float("nan")), "model.vat_alpha"),
    (put("model.quick_gelu", 1), "model.quick_gelu"),
    (put("model.sat_attention", "both"), "model.sat_attention"),
    (put("model.level_words", "bad"), "model.level_words"),
    (put("model.level_words", ["bad", "bad"]), "model.level_words"),
    (put("model.mos_scale", 0), "model.mos_scale"),
    (put("model.mos_scale", "20"), "model.mos_scale"),
    (put("prompts.levels", ["bad", "poor", "fair", "good", "excellent"]), "prompts.levels"),
]


@pytest.mark.parametrize("edit, field", CLIPVQA_DAMAGE, ids=[f for _, f in CLIPVQA_DAMAGE])
def test_a_damaged_clipvqa_config_is_one_line_naming_the_field(clipvqa_artifact, tmp_path, edit, field):
    damaged = damaged_config(clipvqa_artifact, tmp_path / "art", edit)
    assert_refused(lambda: artifact_spec(damaged), field)
    assert_refused(lambda: load_artifact(damaged), field)


def test_the_undamaged_artifacts_pass(qclip_artifact, clipvqa_artifact):
    """The copies above differ from these by their one damage."""
    assert artifact_spec(qclip_artifact).image_size == (64, 64)
    assert artifact_spec(clipvqa_artifact).levels == ("bad", "poor", "fair", "good", "great", "excellent")


def test_every_setting_of_every_family_has_a_rule():
    for family, config in (("qclip", QCLIPConfig), ("clipvqa", CLIPVQAConfig), ("fastvqa", FASTVQAConfig),
                           ("dvlta", DVLTAConfig)):
        assert set(MODEL_SCHEMAS[family].fields) == {f.name for f in fields(config)}, family


MODEL_CONFIGS = [p for p in sorted(ROOT.glob("configs/*.yaml")) if "model" in yaml.safe_load(p.read_text())]


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.name)
def test_the_shipped_configs_fit_the_bounds(qclip_artifact, path):
    """What configs/*.yaml train must load: their model sections pass the schema (the fine-tuning
    configs take theirs from the pretraining artifact)."""
    model = dict(yaml.safe_load(path.read_text())["model"])
    config = json.loads((qclip_artifact / CONFIG_FILE).read_text())
    config["family"] = model.pop("family", "qclip")
    config["model"] = model
    config.pop("prompts")  # the saved one is Q-CLIP's
    if model.get("image_size") is not None:
        config["preprocess"]["image_size"] = [model["image_size"]] * 2
    if config["family"] == "dvlta":  # both streams' halves side by side
        config["preprocess"]["image_size"] = list(DVLTAConfig(**model).frame_size)
    check_config(config, str(path))


# -- tensors -----------------------------------------------------------------------------------
def _damage_tensor(tensor, how):
    if how == "all NaN":
        return torch.full_like(tensor, float("nan"))
    flat = tensor.clone().reshape(-1)
    flat[flat.numel() // 2] = {"one NaN": float("nan"), "one +inf": float("inf"), "one -inf": float("-inf")}[how]
    return flat.reshape(tensor.shape)


@pytest.mark.parametrize("how", ["all NaN", "one NaN", "one +inf", "one -inf"])
def test_non_finite_weights_are_refused_at_load(qclip_artifact, tmp_path, how):
    tensors = load_file(str(qclip_artifact / ADAPTERS_FILE))
    name = "level_weights" if how == "all NaN" else max(tensors, key=lambda k: tensors[k].numel())
    tensors[name] = _damage_tensor(tensors[name], how)
    damaged = tmp_path / "art"
    damaged.mkdir()
    shutil.copy(qclip_artifact / CONFIG_FILE, damaged / CONFIG_FILE)
    save_file(tensors, str(damaged / ADAPTERS_FILE))
    assert_refused(lambda: load_artifact(damaged), f"tensor {name}")


@pytest.mark.parametrize("how", ["all NaN", "one +inf"])
def test_non_finite_weights_are_refused_at_save(model, tmp_path, how):
    """qclip-convert writes through save_artifact: it refuses what loading would, and writes nothing."""
    param = model.level_weights if how == "all NaN" else max(model.trainable_parameters(), key=torch.numel)
    kept = param.detach().clone()
    with torch.no_grad():
        param.copy_(_damage_tensor(param, how))
    try:
        assert_refused(lambda: save_artifact(model, tmp_path / "art"), "tensor ")
    finally:
        with torch.no_grad():
            param.copy_(kept)
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("calibration, field", [
    ({**CALIBRATION, "pred_std": 0.0}, "calibration.pred_std"),
    ({**CALIBRATION, "target_mean": float("nan")}, "calibration.target_mean"),
    ({**CALIBRATION, "pred_std": "0.02"}, "calibration.pred_std"),
    ({**CALIBRATION, "pred_std": 1e-308, "target_std": 1e308}, "calibration.target_std / calibration.pred_std"),
    ({"pred_mean": 0.1}, "calibration lacks pred_std"),
])
def test_a_bad_calibration_is_refused_at_save(model, tmp_path, calibration, field):
    assert_refused(lambda: save_artifact(model, tmp_path / "art", calibration=calibration), field)
    assert not (tmp_path / "art").exists()


def test_a_model_config_out_of_bounds_is_refused_at_save(model, tmp_path):
    model.config.num_frames = 1000
    try:
        assert_refused(lambda: save_artifact(model, tmp_path / "art"), "model.num_frames")
    finally:
        model.config.num_frames = 4


# -- qclip-score -----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["config", "tensor"])
def test_qclip_score_exits_2_with_one_line_for_a_damaged_artifact(qclip_artifact, tmp_path, capsys, damage):
    from qclip_engine.cli.score import main

    if damage == "config":
        damaged = damaged_config(qclip_artifact, tmp_path / "art", put("model.num_frames", 8.5))
    else:
        damaged = tmp_path / "art"
        damaged.mkdir()
        shutil.copy(qclip_artifact / CONFIG_FILE, damaged / CONFIG_FILE)
        tensors = load_file(str(qclip_artifact / ADAPTERS_FILE))
        tensors["level_weights"] = _damage_tensor(tensors["level_weights"], "all NaN")
        save_file(tensors, str(damaged / ADAPTERS_FILE))
    video = encode(tmp_path / "clip.mp4", moving_frames(6, h=32, w=32))
    assert main(["--artifact", str(damaged), str(video), "--engine", "torch", "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert ("model.num_frames" if damage == "config" else "tensor level_weights") in err


# -- run_batch -------------------------------------------------------------------------------------
class HalfBrokenBackend:
    """Returns the given scores (and level similarities) for a batch, whatever the frames."""

    name, device, precision, label = "fake", "cpu", "fp32", "fake-fp32"

    def __init__(self, scores, sims):
        self.scores, self.sims = np.asarray(scores, np.float32), np.asarray(sims, np.float32)

    def run(self, frames):
        assert len(frames) == len(self.scores)
        return self.sims, self.scores


@pytest.fixture(scope="module")
def engine(model):
    from qclip_engine import QualityEngine

    return QualityEngine(model=model, engine="torch", device="cpu", precision="fp32", decoder="host", batch=2)


@pytest.mark.parametrize("scores, sims, calibration, what", [
    ([float("nan"), 0.5], [[0.1] * 5, [0.2] * 5], None, "score nan"),
    ([0.3, 0.5], [[0.1, 0.1, float("inf"), 0.1, 0.1], [0.2] * 5], None, "levels.fair inf"),
    # a calibration finite near its pred_mean that overflows on an outlying score: 1e10 / 1e-300
    ([1e10, 0.5], [[0.1] * 5, [0.2] * 5], {"pred_mean": 0.0, "pred_std": 1e-300, "target_mean": 0.0, "target_std": 1.0},
     "mos inf"),
])
def test_a_non_finite_output_is_that_videos_error_and_the_other_keeps_its_score(engine, scores, sims, calibration, what):
    engine.backend, engine.calibration = HalfBrokenBackend(scores, sims), calibration
    blank = np.zeros((4, *engine.image_size, 3), np.uint8)
    broken, kept = engine.run_batch([engine.sample_frames(blank, "broken"), engine.sample_frames(blank, "kept")])
    assert broken.error["code"] == "non_finite_output" and what in broken.error["message"]
    assert broken.score is None and broken.levels is None
    assert kept.ok and kept.score == pytest.approx(0.5) and kept.levels["bad"] == pytest.approx(0.2)
    records = json.dumps([broken.to_record(), kept.to_record()], allow_nan=False)  # valid JSON: no NaN, no Infinity
    assert '"non_finite_output"' in records
