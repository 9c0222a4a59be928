"""Model families (``qclip_engine/model/families.py``): the registry, artifacts of every family,
artifacts from before families, and a third family that scores through the engine with nothing
but its own code and one registry line."""

import json
from dataclasses import asdict, dataclass

import pytest
import torch
from torch import nn

from qclip_engine import QCLIP, QCLIPConfig, load_artifact, save_artifact
from qclip_engine.errors import ArtifactError
from qclip_engine.model.families import FAMILIES, Family, create_model, family_of, register_family
from qclip_engine.model.state import check_state

TINY_QCLIP = {"backbone": "PE-Core-T-16-384", "pretrained": None, "image_size": 32, "num_frames": 2, "adapter_layers": 2}


def _video(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (batch, model.config.num_frames, *model.image_size, 3), generator=g, dtype=torch.uint8)
    return model.normalize(frames)


def test_create_model_builds_the_family_and_refuses_unknowns():
    model = create_model("qclip", **TINY_QCLIP)
    assert type(model) is QCLIP and family_of(model).name == "qclip"
    assert family_of(model).levels == ("bad", "poor", "fair", "good", "excellent")
    assert FAMILIES["clipvqa"].levels == ("bad", "poor", "fair", "good", "great", "excellent")
    with pytest.raises(ValueError, match="unknown model family 'nope'.*clipvqa.*qclip"):
        create_model("nope")
    with pytest.raises(ValueError, match=r"unknown qclip settings \['widht'\]"):
        create_model("qclip", widht=3, **TINY_QCLIP)
    with pytest.raises(ValueError, match="already registered"):
        register_family(FAMILIES["qclip"])


def test_an_artifact_without_a_family_is_a_qclip_artifact(tmp_path):
    torch.manual_seed(0)
    model = QCLIP(QCLIPConfig(**TINY_QCLIP)).eval()
    save_artifact(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["family"] == "qclip"
    del config["family"]  # as every artifact written before families existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_artifact(tmp_path)
    assert type(loaded) is QCLIP
    video = _video(model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), model(video), rtol=0, atol=0)


def test_an_unknown_family_in_an_artifact_is_artifact_invalid(tmp_path):
    save_artifact(QCLIP(QCLIPConfig(**TINY_QCLIP)), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"family": "rsfiqa"}))
    with pytest.raises(ArtifactError, match="unknown model family 'rsfiqa'") as info:
        load_artifact(tmp_path)
    assert info.value.code == "artifact_invalid"


# -- a third family, defined here alone: its module and one register_family line ------------
@dataclass
class ToyConfig:
    num_frames: int = 2
    image_size: int = 4
    pretrained: str | None = None
    init_seed: int = 0
    sampler: str = "uniform"
    preprocessing: str = "fast"

    def to_dict(self):
        return asdict(self)


class Toy(nn.Module):
    levels = ("low", "mid", "high")
    training_output = "score"

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config, self.image_size, self.calibration = config, (config.image_size, config.image_size), None
        g = torch.Generator().manual_seed(config.init_seed)
        self.frozen = nn.Parameter(torch.randn(3, 4, generator=g), requires_grad=False)  # rebuilt from init_seed
        self.head = nn.Linear(4, 3)

    def normalize(self, frames):
        return frames.float().movedim(-1, -3) / 255

    def level_sims(self, video):
        return self.head(video.mean(dim=(1, 3, 4)) @ self.frozen)

    def score_from_sims(self, sims):
        return sims.softmax(-1) @ torch.arange(3.0)

    def forward(self, video, *, output="score"):
        sims = self.level_sims(video)
        return sims if output == "sims" else self.score_from_sims(sims)

    def trainable_parameters(self):
        return list(self.head.parameters())

    def param_groups(self, lr, weight_decay):
        return [{"params": self.trainable_parameters(), "lr": lr, "weight_decay": weight_decay}]

    def training_loss(self, score, mos):
        return ((score - mos) ** 2).mean(), score

    def evaluation_inputs(self):
        return {}

    def artifact_tensors(self):
        return {k: v.detach() for k, v in self.head.state_dict(prefix="head.").items()}

    def load_artifact_tensors(self, tensors):
        check_state(self.artifact_tensors(), tensors)
        self.load_state_dict(tensors, strict=False)

    def rebuilt_state(self):
        return {"frozen": self.frozen}

    def artifact_info(self):
        return {"preprocess": {"image_size": list(self.image_size)}, "prompts": {"levels": list(self.levels)}}


class ToyGraph(nn.Module):
    """The toy's deployable module: uint8 frames → (level_sims, score)."""

    fixed_frames = False

    def __init__(self, model, dtype=torch.float32):
        super().__init__()
        self.model, self.image_size, self.num_frames, self.levels = model, model.image_size, model.config.num_frames, model.levels

    def forward(self, frames):
        sims = self.model.level_sims(self.model.normalize(frames))
        return sims, self.model.score_from_sims(sims)


@pytest.fixture
def toy_family():
    family = register_family(Family("toy", ToyConfig, Toy, Toy.levels, ToyGraph))
    yield family
    del FAMILIES["toy"]


def test_a_third_family_saves_and_loads_through_the_registry_alone(tmp_path, toy_family):
    model = create_model("toy", init_seed=3)
    with torch.no_grad():
        model.head.weight.add_(1.0)  # "trained"
    save_artifact(model, tmp_path, calibration={"pred_mean": 0.0, "pred_std": 1.0, "target_mean": 50.0, "target_std": 10.0})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["family"] == "toy" and config["model"]["init_seed"] == 3
    loaded = load_artifact(tmp_path)
    assert type(loaded) is Toy and loaded.calibration["target_mean"] == 50.0
    video = _video(model)
    torch.testing.assert_close(loaded(video), model(video), rtol=0, atol=0)
    # another frozen part (here: another init) is refused as another backbone is
    config["model"]["init_seed"] = 4
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="fingerprint differs"):
        load_artifact(tmp_path)


def test_a_third_family_scores_through_the_engine_and_exports_with_no_other_edit(toy_family, tmp_path):
    from qclip_engine import QualityEngine
    from qclip_engine.samples import sample_clips

    model = create_model("toy", init_seed=3)
    save_artifact(model, tmp_path / "toy")
    clip = sample_clips()[0]
    results = {}
    for engine in ("torch", "onnxruntime"):
        scorer = QualityEngine(tmp_path / "toy", engine=engine, precision="fp32", device="cpu")
        assert scorer.levels == ("low", "mid", "high")
        sampled = scorer.sample(clip)  # the toy's spec: 2 uniform frames at 4 × 4
        assert sampled.frames.shape == (2, 4, 4, 3) and list(sampled.indices) == [0, 131]
        results[engine] = scorer.run_batch([sampled])[0]
        assert set(results[engine].levels) == {"low", "mid", "high"}
    with torch.no_grad():
        expected = model(model.normalize(torch.from_numpy(sampled.frames[None])))
    assert abs(results["torch"].score - float(expected)) < 1e-6
    assert abs(results["onnxruntime"].score - float(expected)) < 1e-5
