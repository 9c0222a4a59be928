"""The frozen-trunk cache (``train.cache_trunk``): the same losses, gradients and artifact as
training without it, stale entries rebuilt, samplers that change frames refused, the disk
it needs stated before it starts."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_video, tiny_train_config
from media import encode, moving_frames, noisy_labelled_clips
from safetensors.torch import load_file

from qclip_engine import QCLIP, QCLIPConfig
from qclip_engine.train import run, trunk_cache
from qclip_engine.train.datasets import build_datasets, loader
from qclip_engine.train.errors import ConfigError
from qclip_engine.model.qclip_losses import qclip_loss
from qclip_engine.video.sampling import SAMPLERS, frame_indices


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return noisy_labelled_clips(tmp_path_factory.mktemp("tiny_trunk"))


def _config(tmp_path: Path, data: Path, sampler: str = "uniform", **train) -> Path:
    base = {"epochs": 1, "warmup_epochs": 0, "batch_size": 3, "val_batch_size": 2, "lr": 1e-3, "device": "cpu"}
    return tiny_train_config(tmp_path / "config.yaml", data, base | train, model={"sampler": sampler})


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _model_and_data(config_path: Path):
    config = run.load_config(config_path)
    torch.manual_seed(0)
    model = QCLIP(QCLIPConfig(**config["model"]))
    data = build_datasets(config, model)
    return config, model, data


def _loss_and_grads(model: QCLIP, inputs: dict, mos: torch.Tensor):
    model.zero_grad(set_to_none=True)
    loss = qclip_loss(model(**inputs), mos)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_trunk_then_the_rest_is_encode_frames(model):
    # both tower kinds of conftest.BACKBONES (PE-Core's timm Eva, a classic open_clip ViT), with the
    # adapters and zero-shot (no adapters): the split must be the very same computation
    images = random_video(model, batch=1, frames=2).flatten(0, 1)
    for zero_shot in (False, True):
        model.zero_shot = zero_shot
        with torch.no_grad():
            tokens = model.encode_trunk(images)
            split, whole = model.encode_after_trunk(tokens), model.encode_frames(images)
        assert tokens.shape == (2, *trunk_cache.trunk_shape(model))  # batch-first
        torch.testing.assert_close(split, whole, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cached_batches_give_the_loss_and_gradients_of_frames(tmp_path, tiny_dataset, dtype):
    config, model, data = _model_and_data(_config(tmp_path, tiny_dataset))
    model.train()
    batch = next(iter(loader(data.train, 6, None, 0)))
    plain = _loss_and_grads(model, trunk_cache.batch_inputs(model, batch, data.train, torch.device("cpu")), batch["mos"])

    cache = trunk_cache.TrunkCache(tmp_path / "cache", model, dtype)
    plan = trunk_cache.attach(cache, {"train": data.train})
    assert plan["missing"] == len(data.train) and plan["present"] == 0
    runs = []
    for expected in ("built", "hit"):  # the first pass makes and writes the entries, the second reads them
        cached = next(iter(loader(data.train, 6, None, 0)))
        assert cached["cache"] == [expected] * 6
        assert ("tokens" in cached) == (expected == "hit") and ("video" in cached) == (expected == "built")
        inputs = trunk_cache.batch_inputs(model, cached, data.train, torch.device("cpu"))
        assert set(inputs) == {"trunk_tokens"}
        runs.append(_loss_and_grads(model, inputs, cached["mos"]))
    assert cache.counts == {"built": 6, "hit": 6}

    entry = load_file(cache.entry_path(data.train.records[0].path))["tokens"]
    assert entry.dtype == trunk_cache.DTYPES[dtype]
    assert entry.shape == (model.config.num_frames, *trunk_cache.trunk_shape(model))
    if dtype == "float32":  # bit-exact tokens: the cached path IS the frames' path, split in two
        for loss, grads in runs:
            assert loss == pytest.approx(plain[0], abs=1e-5)
            for name, grad in grads.items():
                torch.testing.assert_close(grad, plain[1][name], atol=1e-5, rtol=1e-5, msg=name)
    else:  # float16 tokens: both cached passes see the same rounded tokens, a loss within fp16's rounding
        assert runs[0][0] == runs[1][0]
        assert runs[0][0] != plain[0] and runs[0][0] == pytest.approx(plain[0], rel=1e-3)


def test_one_epoch_from_the_cache_gives_the_same_artifact(tmp_path, tiny_dataset):
    config = _config(tmp_path, tiny_dataset, cache_trunk_dtype="float32")
    cache = tmp_path / "trunk"
    plain, built, read = tmp_path / "plain", tmp_path / "built", tmp_path / "read"
    assert run.main(["--config", str(config), "--output-dir", str(plain)]) == 0
    for out in (built, read):
        assert run.main(["--config", str(config), "--output-dir", str(out), f"train.cache_trunk={cache}"]) == 0
    assert "trunk_cache" not in _lines(plain)[0]
    assert _lines(built)[0]["trunk_cache"] == {"hit": 0, "built": 12, "rebuilt": 0}  # 9 training + 3 held-out
    assert _lines(read)[0]["trunk_cache"] == {"hit": 12, "built": 0, "rebuilt": 0}
    reference = load_file(plain / "best" / "adapters.safetensors")
    for out in (built, read):
        np.testing.assert_allclose(_lines(out)[0]["steps"]["loss"], _lines(plain)[0]["steps"]["loss"], atol=1e-5)
        adapters = load_file(out / "best" / "adapters.safetensors")
        assert adapters.keys() == reference.keys()
        for name, tensor in adapters.items():
            torch.testing.assert_close(tensor, reference[name], atol=1e-6, rtol=1e-5, msg=name)
        for key in ("srocc", "plcc", "rmse"):
            assert _lines(out)[0]["val"]["heldout"][key] == pytest.approx(_lines(plain)[0]["val"]["heldout"][key], abs=1e-5)


def test_a_stale_entry_is_detected_and_rebuilt(tmp_path, tiny_dataset):
    data_dir = tmp_path / "data"
    shutil.copytree(tiny_dataset, data_dir)
    config, model, data = _model_and_data(_config(tmp_path, data_dir))
    cache = trunk_cache.TrunkCache(tmp_path / "cache", model, "float32")
    trunk_cache.attach(cache, {"train": data.train})
    for _ in loader(data.train, 4, None, 0):
        pass
    for batch in loader(data.train, 4, None, 0):
        trunk_cache.batch_inputs(model, batch, data.train, torch.device("cpu"))
    assert trunk_cache.attach(cache, {"train": data.train})["present"] == len(data.train)

    # another video under the same name, and an entry cut short
    changed, cut = data.train.records[0].path, data.train.records[1].path
    encode(Path(changed), moving_frames(6, h=32, w=32, seed=99) // 2, options={"qp": "10"})
    entry = cache.entry_path(cut)
    entry.write_bytes(entry.read_bytes()[:100])
    plan = trunk_cache.attach(cache, {"train": data.train})
    assert (plan["stale"], plan["present"]) == (2, len(data.train) - 2)
    assert plan["bytes_to_write"] == 2 * cache.bytes_per_video

    cache.counts.clear()
    batch = next(iter(loader(data.train, 2, None, 0, indices=[0, 1])))
    assert batch["cache"] == ["rebuilt", "rebuilt"]
    tokens = trunk_cache.batch_inputs(model, batch, data.train, torch.device("cpu"))["trunk_tokens"]
    with torch.no_grad():
        fresh = model.encode_trunk(model.normalize(torch.from_numpy(data.train._picked(0, data.train.picked_indices(0)))))
    torch.testing.assert_close(tokens[0], fresh)
    torch.testing.assert_close(load_file(cache.entry_path(changed))["tokens"], fresh)
    assert trunk_cache.attach(cache, {"train": data.train})["present"] == len(data.train)

    # another model setting (K) or another training precision has its own folder: nothing of this
    # one is taken for it
    other = QCLIP(QCLIPConfig(**(config["model"] | {"adapter_layers": 1})))
    assert trunk_cache.TrunkCache(tmp_path / "cache", other, "float32").plan({"train": data.train})["present"] == 0
    bf16 = trunk_cache.TrunkCache(tmp_path / "cache", model, "float32", precision="bf16")
    assert bf16.root != cache.root and bf16.plan({"train": data.train})["present"] == 0


def test_a_cache_that_cannot_be_written_is_a_config_error_and_leaves_no_partial_file(tmp_path, tiny_dataset, monkeypatch):
    config, model, data = _model_and_data(_config(tmp_path, tiny_dataset))
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match="cannot use"):
        trunk_cache.TrunkCache(tmp_path / "file", model).plan({"train": data.train})

    cache = trunk_cache.TrunkCache(tmp_path / "cache", model)
    trunk_cache.attach(cache, {"train": data.train})

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trunk_cache, "save_file", full_disk)
    batch = next(iter(loader(data.train, 2, None, 0)))
    with pytest.raises(ConfigError, match="could not write .*No space left") as info:
        trunk_cache.batch_inputs(model, batch, data.train, torch.device("cpu"))
    assert info.value.code == "config_invalid"
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("sampler", [name for name, s in SAMPLERS.items() if s.draws or s.needs_motion])
def test_samplers_that_change_frames_are_refused(tmp_path, tiny_dataset, capsys, sampler):
    config = _config(tmp_path, tiny_dataset, sampler=sampler)
    assert run.main(["--config", str(config), "--output-dir", str(tmp_path / "out"), f"train.cache_trunk={tmp_path}/c"]) == 2
    err = capsys.readouterr().err
    assert "train.cache_trunk" in err and "'uniform'" in err and repr(sampler) in err
    assert not (tmp_path / "c").exists()


def test_draws_marks_the_samplers_whose_training_picks_change_between_epochs():
    motion = np.random.default_rng(0).random(300)
    for name, sampler in SAMPLERS.items():
        picks = {tuple(frame_indices(300, name, 8, motion, seed=(0, epoch, 0), training=True)) for epoch in range(20)}
        assert (len(picks) > 1) == sampler.draws, name


def test_the_disk_it_needs_is_stated_before_it_starts(tmp_path, tiny_dataset, monkeypatch, capsys):
    with torch.device("meta"):
        large = QCLIP(QCLIPConfig(backbone="PE-Core-L-14-336", pretrained=None, num_frames=8, sampler="uniform"))
    assert trunk_cache.trunk_shape(large) == (577, 1024)
    assert trunk_cache.bytes_per_video(large) == 8 * 577 * 1024 * 2  # ≈ 9.4 MB per 8-frame video

    config = _config(tmp_path, tiny_dataset)
    args = ["--config", str(config), "--output-dir", str(tmp_path / "out"), f"train.cache_trunk={tmp_path}/c"]
    monkeypatch.setattr(trunk_cache.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**6, 10**6, 1000))
    assert run.main(args) == 2
    assert "train.cache_trunk needs" in capsys.readouterr().err
    monkeypatch.undo()
    assert run.main(args) == 0
    err = capsys.readouterr().err
    tokens, width = trunk_cache.trunk_shape(_model_and_data(config)[1])
    assert f"12 videos × 2 frames × {tokens} tokens × {width} × 2 B" in err and "12 to build" in err
