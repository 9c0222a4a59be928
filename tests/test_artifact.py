"""Artifacts: a trained model saved and loaded gives the same scores, and bad artifacts fail clearly."""

import json

import numpy as np
import pytest
import torch
from conftest import random_video
from safetensors.torch import load_file, save_file

from qclip_engine import ArtifactError, load_artifact, save_artifact
from qclip_engine.artifact import ADAPTERS_FILE, CONFIG_FILE, calibrated_mos
from qclip_engine.model.backbone import create_clip

CALIBRATION = {"pred_mean": 0.1, "pred_std": 0.02, "target_mean": 3.2, "target_std": 0.6}


def _as_if_trained(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_round_trip_gives_identical_scores(model, tmp_path):
    _as_if_trained(model)
    video = random_video(model, batch=2, frames=2)
    with torch.no_grad():
        expected = model(video)
    save_artifact(model, tmp_path / "art", calibration=CALIBRATION)

    loaded = load_artifact(tmp_path / "art")
    with torch.no_grad():
        assert torch.equal(loaded(video), expected)
    assert loaded.config == model.config
    assert loaded.calibration == CALIBRATION
    assert not loaded.zero_shot and not loaded.training


def test_artifact_stores_only_trainable_tensors_and_a_complete_config(pe_model, tmp_path):
    save_artifact(pe_model, tmp_path)
    tensors = load_file(str(tmp_path / ADAPTERS_FILE))
    assert set(tensors) == set(pe_model.trainable_state_dict())
    assert sum(t.numel() for t in tensors.values()) == sum(p.numel() for p in pe_model.trainable_parameters())

    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["model"]["backbone"] == "PE-Core-T-16-384" and config["model"]["pretrained"] is None
    assert config["model"]["adapter_layers"] == 6 and config["model"]["shared_dim"] == 128
    assert config["model"]["num_frames"] == 8 and config["model"]["sampler"] == "mixed"
    assert config["backbone"]["visual_width"] == 192 and config["backbone"]["text_width"] == 512
    assert config["prompts"]["levels"] == ["bad", "poor", "fair", "good", "excellent"]
    assert config["prompts"]["texts"][0] == "X X X a video of bad quality"
    assert config["preprocess"]["image_size"] == [384, 384] and config["preprocess"]["mean"] == [0.5] * 3
    assert config["calibration"] is None
    assert {"torch", "open-clip-torch", "timm", "qclip-engine"} <= set(config["versions"])


def test_zero_shot_mode_survives_the_round_trip(pe_model, tmp_path):
    pe_model.zero_shot = True
    save_artifact(pe_model, tmp_path)
    loaded = load_artifact(tmp_path)
    assert loaded.zero_shot
    video = random_video(pe_model, batch=1, frames=2)
    with torch.no_grad():
        assert torch.equal(loaded(video), pe_model(video))


def test_artifact_refuses_another_backbone(pe_model, tmp_path):
    save_artifact(pe_model, tmp_path / "art")
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in create_clip("PE-Core-T-16-384", None, init_seed=5).state_dict().items()}, str(other))
    with pytest.raises(ArtifactError, match="fingerprint"):
        load_artifact(tmp_path / "art", pretrained=str(other))
    # Deliberately overriding the check loads it.
    assert load_artifact(tmp_path / "art", pretrained=str(other), check_backbone=False) is not None


def test_local_weights_path_is_stored_absolute(tmp_path, monkeypatch):
    from qclip_engine import QCLIP, QCLIPConfig

    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in create_clip("PE-Core-T-16-384", None, init_seed=3).state_dict().items()}, str(weights))
    monkeypatch.chdir(tmp_path)
    model = QCLIP(QCLIPConfig(backbone="PE-Core-T-16-384", pretrained="./w.safetensors"))
    save_artifact(model, tmp_path / "art")
    config = json.loads((tmp_path / "art" / CONFIG_FILE).read_text())
    assert config["model"]["pretrained"] == str(weights.resolve())
    monkeypatch.chdir("/")
    assert load_artifact(tmp_path / "art").config.pretrained == str(weights.resolve())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / CONFIG_FILE).unlink(), "lacks config.json"),
        (lambda d: (d / ADAPTERS_FILE).unlink(), "lacks adapters.safetensors"),
        (lambda d: (d / CONFIG_FILE).write_text("{not json"), "not valid JSON"),
        (lambda d: (d / ADAPTERS_FILE).write_bytes(b"\x00" * 64), "unreadable"),
        (lambda d: _edit_config(d, lambda c: c.update(format_version=99)), "not a qclip-artifact v1"),
        (lambda d: _edit_config(d, lambda c: c["model"].update(warp_drive=True)), "does not know"),
        (lambda d: _edit_config(d, lambda c: c["model"].update(shared_dim=64)), "shape"),
        (lambda d: _drop_tensor(d, "level_weights"), "missing \\['level_weights'\\]"),
    ],
)
def test_broken_artifacts_raise_artifact_error(pe_model, tmp_path, damage, message):
    save_artifact(pe_model, tmp_path)
    damage(tmp_path)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(tmp_path)


def test_missing_directory_is_not_found(tmp_path):
    with pytest.raises(ArtifactError) as info:
        load_artifact(tmp_path / "nothing-here")
    assert info.value.code == "not_found"


def _edit_config(directory, edit):
    config = json.loads((directory / CONFIG_FILE).read_text())
    edit(config)
    (directory / CONFIG_FILE).write_text(json.dumps(config))


def _drop_tensor(directory, name):
    tensors = load_file(str(directory / ADAPTERS_FILE))
    del tensors[name]
    save_file(tensors, str(directory / ADAPTERS_FILE))


def test_calibration_maps_scores_to_the_training_mos_scale():
    scores = np.array([0.1, 0.12, 0.08])
    np.testing.assert_allclose(calibrated_mos(scores, CALIBRATION), [3.2, 3.8, 2.6])


def test_invalid_calibration_is_rejected(pe_model, tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        save_artifact(pe_model, tmp_path, calibration={"pred_mean": 0.0})
    with pytest.raises(ValueError, match="pred_std > 0"):
        save_artifact(pe_model, tmp_path, calibration=dict(CALIBRATION, pred_std=0.0))


def test_artifact_files_follow_the_umask_like_any_file(pe_model, tmp_path):
    """A service running as another user must be able to read an artifact (not mkstemp's 0600)."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        save_artifact(pe_model, tmp_path / "art")
    finally:
        os.umask(old)
    for name in (CONFIG_FILE, ADAPTERS_FILE):
        assert stat.S_IMODE((tmp_path / "art" / name).stat().st_mode) == 0o644, name
    assert not [p.name for p in (tmp_path / "art").iterdir() if p.name.startswith(".")]  # no temp file left
