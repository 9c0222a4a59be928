"""Backbone weights: seeded random init, local files through open_clip's real loader, hub offline."""

import os
import subprocess
import sys
import textwrap
import time

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from qclip_engine import QCLIP, QCLIPConfig, WeightsUnavailableError
from qclip_engine.model.backbone import create_clip

BACKBONE = "PE-Core-T-16-384"


def _other_weights() -> dict[str, torch.Tensor]:
    """A full open_clip state dict that differs from the seed-0 random init."""
    return {k: v.contiguous() for k, v in create_clip(BACKBONE, None, init_seed=123).state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_weights_file_loads_identical_tensors(tmp_path, suffix):
    weights = _other_weights()
    path = tmp_path / f"open_clip_model{suffix}"
    if suffix == ".safetensors":
        save_file(weights, str(path))
    else:
        torch.save(weights, path)

    model = QCLIP(QCLIPConfig(backbone=BACKBONE, pretrained=str(path)))
    loaded = model.backbone.state_dict()
    assert loaded.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(loaded[name], tensor), name
    seed_init = create_clip(BACKBONE, None, init_seed=0).state_dict()
    assert not torch.equal(loaded["visual.trunk.patch_embed.proj.weight"], seed_init["visual.trunk.patch_embed.proj.weight"])
    # Preprocessing follows the model's published weights, not open_clip's generic default.
    assert model.preprocess["mean"] == [0.5, 0.5, 0.5] and model.preprocess["resize_mode"] == "squash"


def test_random_init_is_seeded():
    a = create_clip(BACKBONE, None, init_seed=0).state_dict()
    b = create_clip(BACKBONE, None, init_seed=0).state_dict()
    c = create_clip(BACKBONE, None, init_seed=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # The global RNG is left as it was (training seeds stay meaningful).
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    create_clip(BACKBONE, None, init_seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_missing_local_file_is_a_typed_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found") as info:
        QCLIP(QCLIPConfig(backbone=BACKBONE, pretrained=str(tmp_path / "nope.safetensors")))
    assert info.value.code == "not_found"


def test_corrupt_local_file_is_a_typed_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsUnavailableError, match="could not load"):
        QCLIP(QCLIPConfig(backbone=BACKBONE, pretrained=str(path)))


def test_unknown_tag_lists_the_published_tags():
    with pytest.raises(WeightsUnavailableError, match="meta"):
        QCLIP(QCLIPConfig(backbone=BACKBONE, pretrained="laion9000"))


def test_unknown_backbone_is_a_typed_error():
    from qclip_engine import BackboneError

    with pytest.raises(BackboneError, match="unknown open_clip model"):
        QCLIP(QCLIPConfig(backbone="ViT-Q-99", pretrained=None))


@pytest.mark.parametrize("pretrained", ["meta", f"hf-hub:timm/{BACKBONE}"])
def test_hub_weights_offline_fail_fast_with_local_file_hint(tmp_path, pretrained):
    script = textwrap.dedent(
        f"""
        from qclip_engine import QCLIP, QCLIPConfig, WeightsUnavailableError
        try:
            QCLIP(QCLIPConfig(backbone={BACKBONE!r}, pretrained={pretrained!r}))
        except WeightsUnavailableError as exc:
            print("CODE", exc.code)
            print("MESSAGE", exc)
        else:
            print("LOADED")
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))  # empty cache
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert "CODE weights_unavailable" in out.stdout, out.stdout + out.stderr
    assert "pass a local weights file" in out.stdout.lower()
    assert "pretrained='/path/to/" in out.stdout
    # "Within seconds": the interpreter start and imports dominate; no network wait.
    assert elapsed < 30, f"offline failure took {elapsed:.1f} s"


def test_preprocess_of_a_classic_vit_is_openai_clip():
    with torch.device("meta"):
        model = QCLIP(QCLIPConfig(backbone="ViT-B-32", pretrained=None))
    assert model.image_size == (224, 224)
    assert model.preprocess["mean"] == list(open_clip.OPENAI_DATASET_MEAN)


@pytest.mark.parametrize("wrapped", [False, True])
def test_meta_pe_file_loads_equal_to_open_clips_layout_of_the_same_tensors(tmp_path, wrapped):
    """Meta's ``PE-Core-*.pt`` layout (vision and text) converts on load: the same tensors, the same
    fingerprint as open_clip's safetensors of those weights."""
    from official_layout import meta_pe_layout

    from qclip_engine.artifact import backbone_fingerprint

    weights = _other_weights()
    weights["visual.trunk.head.bias"].zero_()  # Meta's projection has no bias
    meta = meta_pe_layout(weights)
    assert not set(meta) & {k for k in weights if k.startswith(("visual.trunk.", "text."))}
    meta_path, open_clip_path = tmp_path / "PE-Core-T16-384.pt", tmp_path / "open_clip_model.safetensors"
    # Meta's loader accepts a bare dict or one under "state_dict", keys possibly "module."-prefixed
    torch.save({"state_dict": {f"module.{k}": v for k, v in meta.items()}} if wrapped else meta, meta_path)
    save_file(weights, str(open_clip_path))

    from_meta = QCLIP(QCLIPConfig(backbone=BACKBONE, pretrained=str(meta_path)))
    from_open_clip = QCLIP(QCLIPConfig(backbone=BACKBONE, pretrained=str(open_clip_path)))
    loaded = from_meta.backbone.state_dict()
    assert loaded.keys() == weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(loaded[name], tensor), name
    assert backbone_fingerprint(from_meta) == backbone_fingerprint(from_open_clip)


def test_meta_pe_file_of_another_backbone_is_refused_with_the_keys_that_do_not_fit(tmp_path):
    from official_layout import meta_pe_layout

    weights = _other_weights()
    weights["visual.trunk.head.bias"].zero_()
    path = tmp_path / "PE-Core-T16-384.pt"
    torch.save(meta_pe_layout(weights), path)
    with pytest.raises(WeightsUnavailableError, match="does not fit this backbone.*misshapen.*visual.trunk"):
        QCLIP(QCLIPConfig(backbone="PE-Core-S-16-384", pretrained=str(path)))
