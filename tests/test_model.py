"""The Q-CLIP model: what trains, where the adapters act, and equality with open_clip."""

import pytest
import torch
import torch.nn.functional as F
from conftest import random_video

from qclip_engine import QCLIP, QUALITY_LEVELS, QCLIPConfig

TRAINABLE_PREFIXES = ("escma.", "pscma.", "prompts.context", "level_weights")


def test_only_adapters_prompts_scales_and_head_are_trainable(model):
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith(TRAINABLE_PREFIXES) for name in trainable)
    for scale in ("escma.alpha_visual", "escma.alpha_text", "pscma.alpha_visual", "pscma.alpha_text"):
        assert scale in trainable
    assert "prompts.context" in trainable and "level_weights" in trainable
    assert not any(p.requires_grad for p in model.backbone.parameters())
    # Prompt words other than the X tokens are frozen buffers, not parameters.
    assert {"prompts.prefix", "prompts.suffix"} <= {name for name, _ in model.named_buffers()}


def test_optimizer_step_leaves_backbone_bit_identical(model):
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    adapters_before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    # Even an optimizer handed *every* parameter must not move the backbone.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    model.train()
    assert not model.backbone.training, "the frozen backbone must stay in eval mode"
    for step in range(2):
        optimizer.zero_grad()
        score = model(random_video(model, seed=step))
        loss = (score - torch.tensor([1.0, -1.0])).pow(2).mean()
        loss.backward()
        optimizer.step()
    after = model.backbone.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), f"backbone tensor {name} changed"
    changed = [k for k, v in model.trainable_state_dict().items() if not torch.equal(v, adapters_before[k])]
    assert set(changed) == set(adapters_before), "every trainable tensor should receive a gradient"


def test_trainable_count_of_pe_core_l_matches_closed_form():
    with torch.device("meta"):  # the real module, built without allocating its weights
        model = QCLIP(QCLIPConfig(backbone="PE-Core-L-14-336", pretrained=None, adapter_layers=6, shared_dim=128))
    d, r, k = 1024, 128, 6
    closed_form = (
        k * (2 * d * r + r + d + 2 * d)  # Down_i, Up_i, LN_i, shared by both towers (equal widths)
        + 2 * (r * r + r)  # Core
        + (d * r + r + r * r + r + r * d + d)  # P-SCMA A
        + 4  # α_img, α_txt, α_proj_img, α_proj_txt
        + 3 * d  # context tokens
        + 5  # level weights
    )
    assert closed_form == 1_907_977
    assert sum(p.numel() for p in model.trainable_parameters()) == closed_form
    assert model.escma.shared_across_modalities and model.pscma.shared_across_modalities
    assert "shared by both towers" in repr(model.escma)


def test_unequal_widths_get_per_tower_projections_and_one_core(model):
    assert model.visual_tower.width != model.text_tower.width
    assert not model.escma.shared_across_modalities
    assert "widths differ" in repr(model.escma) and "widths differ" in repr(model.pscma)
    cores = [m for name, m in model.named_modules() if name.endswith("core")]
    assert len(cores) == 1


def _zero_alphas(model):
    with torch.no_grad():
        for scma in (model.escma, model.pscma):
            scma.alpha_visual.zero_()
            scma.alpha_text.zero_()


@torch.no_grad()
def test_zero_alpha_matches_open_clip_encoders(model):
    _zero_alphas(model)
    images = random_video(model, batch=1, frames=2)[0]
    torch.testing.assert_close(model.encode_frames(images), model.backbone.encode_image(images), rtol=0, atol=1e-5)
    # Trained prompts, built from embeddings with the learned X slots at their init:
    tokens = model.tokenizer(model.prompts.texts)
    torch.testing.assert_close(model.forward_text(), model.backbone.encode_text(tokens), rtol=0, atol=1e-5)


@torch.no_grad()
def test_zero_shot_mode_matches_open_clip_with_zero_shot_prompts(model):
    model.zero_shot = True
    assert model.prompts.zero_shot_texts == [f"a video of {level} quality" for level in QUALITY_LEVELS]
    images = random_video(model, batch=1, frames=2)[0]
    torch.testing.assert_close(model.encode_frames(images), model.backbone.encode_image(images), rtol=0, atol=1e-5)
    tokens = model.tokenizer(model.prompts.zero_shot_texts)
    torch.testing.assert_close(model.forward_text(), model.backbone.encode_text(tokens), rtol=0, atol=1e-5)


@torch.no_grad()
def test_adapters_change_features_when_alpha_is_nonzero(model):
    images = random_video(model, batch=1, frames=1)[0]
    assert not torch.allclose(model.encode_frames(images), model.backbone.encode_image(images), atol=1e-5)


@torch.no_grad()
def test_adapters_act_after_exactly_the_last_k_blocks_of_each_tower(model):
    log = []
    handles = []
    for modality, tower in (("visual", model.visual_tower), ("text", model.text_tower)):
        for i, block in enumerate(tower.blocks):
            handles.append(block.register_forward_hook(lambda *_, m=modality, i=i: log.append((m, "block", i))))
    k = model.config.adapter_layers
    for modality in ("visual", "text"):
        for j in range(k):
            layer = model.escma.layer(modality, j)
            handles.append(layer.register_forward_hook(lambda *_, m=modality, j=j: log.append((m, "adapter", j))))

    model.encode_frames(random_video(model, batch=1, frames=1)[0])
    model.forward_text()
    for h in handles:
        h.remove()

    for modality, tower in (("visual", model.visual_tower), ("text", model.text_tower)):
        events = [e[1:] for e in log if e[0] == modality]
        depth = len(tower.blocks)
        expected = []
        for i in range(depth):
            expected.append(("block", i))
            if i >= depth - k:
                expected.append(("adapter", i - (depth - k)))
        assert events == expected, modality
    assert sum(1 for e in log if e[1] == "adapter") == 2 * k


def test_core_is_one_module_reached_by_visual_and_text_losses(model):
    core = model.escma.core
    first_linear = core[0].weight
    model.encode_frames(random_video(model, batch=1, frames=1)[0]).sum().backward()
    visual_grad = first_linear.grad.clone()
    assert visual_grad.abs().sum() > 0
    model.zero_grad()
    model.forward_text().sum().backward()
    assert first_linear.grad.abs().sum() > 0
    assert not torch.equal(first_linear.grad, visual_grad)
    # One Core object, and no other parameter aliases its weights.
    core_params = {id(p) for p in core.parameters()}
    assert sum(id(p) in core_params for p in model.parameters()) == len(core_params)


@torch.no_grad()
def test_score_is_level_weights_over_cosine_similarities_of_frame_mean(model):
    video = random_video(model, batch=2, frames=3)
    frame_features = model.encode_frames(video.flatten(0, 1)).view(2, 3, -1)
    v = F.normalize(frame_features.mean(dim=1), dim=-1)
    t = F.normalize(model.forward_text(), dim=-1)
    sims = model.level_sims(video)
    assert sims.shape == (2, len(QUALITY_LEVELS))
    torch.testing.assert_close(sims, v @ t.T)
    torch.testing.assert_close(model(video), sims @ model.level_weights)


@torch.no_grad()
def test_zero_shot_score_is_expected_level(model):
    model.zero_shot = True
    video = random_video(model, batch=2, frames=2)
    sims = model.level_sims(video)
    expected = (100 * sims).softmax(-1) @ torch.arange(1.0, 6.0)
    score = model(video)
    torch.testing.assert_close(score, expected)
    assert ((score >= 1) & (score <= 5)).all()


def test_normalize_uses_backbone_mean_and_std(pe_model):
    assert pe_model.preprocess["mean"] == [0.5, 0.5, 0.5] and pe_model.preprocess["std"] == [0.5, 0.5, 0.5]
    h, w = pe_model.image_size
    frames = torch.zeros(1, 2, h, w, 3, dtype=torch.uint8)
    frames[..., 0] = 255
    x = pe_model.normalize(frames)
    assert x.shape == (1, 2, 3, h, w)
    assert torch.all(x[:, :, 0] == 1.0) and torch.all(x[:, :, 1:] == -1.0)
    with pytest.raises(ValueError, match="model takes"):
        pe_model.normalize(torch.zeros(1, 2, 17, 9, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        pe_model.normalize(torch.zeros(1, 2, h, w, 3))


def test_prompt_context_starts_as_the_x_embedding(pe_model):
    tokens = pe_model.tokenizer(pe_model.prompts.texts)
    x_embedding = pe_model.text_tower.token_embedding(tokens[0, 1])
    assert pe_model.prompts.context.shape == (3, pe_model.text_tower.width)
    for row in pe_model.prompts.context:
        assert torch.equal(row, x_embedding)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="sampler"):
        QCLIPConfig(sampler="every_frame")
    with pytest.raises(ValueError, match="adapter_layers"):
        QCLIPConfig(adapter_layers=0)
    with pytest.raises(ValueError, match="exceeds"):
        with torch.device("meta"):
            QCLIP(QCLIPConfig(backbone="PE-Core-T-16-384", pretrained=None, adapter_layers=13))
