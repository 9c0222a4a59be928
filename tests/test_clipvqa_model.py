"""CLIPVQA (qclip_engine/model/clipvqa/) as a whole, against values derived by hand on tiny inputs:
the configuration, the message tokens, the model's outputs, what an artifact stores, the optimizer
groups, the parameter count at ViT-B/16 and an ONNX round trip (the SAT, VAT, target and loss:
tests/test_clipvqa_modules.py)."""

import json

import pytest
import torch
from clipvqa_tiny import DIM, FRAMES, LAYERS, PATCHES, WIDTH, capture_block_io, layer_norm, pixels, set_identity_attention

from qclip_engine.model.clipvqa import (
    ADAMW_BETAS,
    ADAMW_EPS,
    LEVEL_WORDS,
    LR,
    NEW_MODULE_LR_SCALE,
    WEIGHT_DECAY,
    CLIPVQA,
    CLIPVQAConfig,
)


@pytest.fixture
def model(clipvqa_model):
    return clipvqa_model


# -- configuration -------------------------------------------------------------------------


def test_defaults_are_the_released_32_frame_vit_b16_setting():
    cfg = CLIPVQAConfig()
    assert (cfg.backbone, cfg.pretrained, cfg.num_frames, cfg.image_size) == ("ViT-B-16", "openai", 32, 224)
    assert (cfg.sat_layers, cfg.vat_layers, cfg.vat_alpha) == (1, 2, 0.1)
    assert cfg.level_words == LEVEL_WORDS == ("bad", "poor", "fair", "good", "great", "excellent")
    # the one departure from the released setting: a score must not depend on the batch
    assert cfg.sat_attention == "alone" and cfg.quick_gelu
    assert CLIPVQAConfig(sat_attention="batch").sat_attention == "batch"
    assert CLIPVQAConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        CLIPVQAConfig(sat_attention="frames")


# -- frame perception: message tokens ------------------------------------------------------


def test_every_block_appends_one_message_token_per_frame(model):
    inputs, outputs, handles = capture_block_io(model)
    images = model.normalize(pixels(2)).flatten(0, 1)
    with torch.no_grad():
        summary, patches = model.encode_frames(images, FRAMES)
    for h in handles:
        h.remove()
    n = 2 * FRAMES
    # block i runs on the class token, the P patches and the i messages of the blocks before it
    assert [tuple(x.shape) for x in inputs] == [(n, 1 + PATCHES + i, WIDTH) for i in range(LAYERS)]
    assert tuple(summary.shape) == (n, 1 + LAYERS, DIM)  # class token + one message per block
    assert tuple(patches.shape) == (n, PATCHES, WIDTH)
    # the patch tokens are the last block's, without ln_post
    assert torch.equal(patches, outputs[-1][:, 1:1 + PATCHES])
    # summary = ln_post(·) @ proj of the class token and of each block's message; block 0's message
    # is appended before block 1 (the last token of its input) and goes through block 1 as a token
    ln_post, proj = model.visual.ln_post, model.visual.proj
    with torch.no_grad():
        assert torch.allclose(summary[:, 0], ln_post(outputs[-1][:, 0]) @ proj, atol=1e-5)
        assert torch.allclose(summary[:, 1], ln_post(outputs[-1][:, 1 + PATCHES]) @ proj, atol=1e-5)
        assert not torch.allclose(summary[:, 1], ln_post(inputs[1][:, -1]) @ proj, atol=1e-3)


def test_the_message_is_fc_then_attention_across_the_frames_of_a_video(model):
    # fc = identity, attention = mean over the video's frames: the message of frame f is
    # c_f + mean_t LN(c_t), c = the class tokens after block 0
    msg = model.messages[0]
    with torch.no_grad():
        msg.fc.weight.copy_(torch.eye(WIDTH))
        msg.fc.bias.zero_()
    set_identity_attention(msg.attn, WIDTH)
    inputs, outputs, handles = capture_block_io(model)
    with torch.no_grad():
        model.encode_frames(model.normalize(pixels(2)).flatten(0, 1), FRAMES)
    for h in handles:
        h.remove()
    c = outputs[0][:, 0].reshape(2, FRAMES, WIDTH)
    expected = c + layer_norm(c).mean(dim=1, keepdim=True)
    appended = inputs[1][:, -1].reshape(2, FRAMES, WIDTH)
    assert torch.allclose(appended, expected, atol=1e-5)
    assert not torch.allclose(expected[0, 0], expected[1, 0], atol=1e-3)  # per video, not across videos


def test_frames_of_a_video_meet_only_through_the_message_tokens(model):
    clean = pixels(2)
    noisy = clean.clone()
    noisy[0, 1] = 255 - noisy[0, 1]  # change frame 1 of video 0 only

    def run(m, p):
        inputs, outputs, handles = capture_block_io(m)
        with torch.no_grad():
            summary, _ = m.encode_frames(m.normalize(p).flatten(0, 1), FRAMES)
        for h in handles:
            h.remove()
        return summary.reshape(2, FRAMES, 1 + LAYERS, DIM), outputs[0]

    a, block0_a = run(model, clean)
    b, block0_b = run(model, noisy)
    assert torch.equal(a[1], b[1])  # another video: untouched
    assert torch.equal(block0_a[0], block0_b[0])  # frame 0 in block 0: no message yet
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-3  # frame 0's summary changes through the messages
    # without the messages' attention (each message from its own frame only) frame 0 stays put
    for msg in model.messages:
        with torch.no_grad():
            msg.attn.out_proj.weight.zero_()
            msg.attn.out_proj.bias.zero_()
    a, _ = run(model, clean)
    b, _ = run(model, noisy)
    assert torch.allclose(a[0, 0], b[0, 0], atol=1e-6) and torch.allclose(a[0, 2:], b[0, 2:], atol=1e-6)
    assert (a[0, 1] - b[0, 1]).abs().max() > 1e-3

# -- the whole model -----------------------------------------------------------------------


def test_whole_model_outputs(model):
    video = model.normalize(pixels(2))
    with torch.no_grad():
        sims, probs, score = model.level_sims(video), model.level_probs(video), model(video)
    assert tuple(sims.shape) == tuple(probs.shape) == (2, 6) and tuple(score.shape) == (2,)
    assert (sims.abs() <= 1 + 1e-6).all()
    scale = model.text.logit_scale.exp()
    assert torch.allclose(probs, torch.softmax(scale * sims, dim=-1), atol=1e-6)
    assert torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-6)
    assert torch.allclose(score, (probs * torch.arange(6.0)).sum(-1), atol=1e-5)
    assert ((score >= 0) & (score <= 5)).all()
    with pytest.raises(ValueError):
        model.level_sims(video[:, :2])  # the model takes exactly num_frames frames


def test_by_default_a_videos_score_does_not_depend_on_the_rest_of_its_batch(model):
    assert model.config.sat_attention == "alone" and model.sat.across == "alone"
    frames = model.normalize(pixels(3, seed=5))
    with torch.no_grad():
        together = model.level_sims(frames)
        apart = torch.cat([model.level_sims(frames[i:i + 1]) for i in range(3)])
        reordered = model.level_sims(frames[[2, 0, 1]])
    assert torch.allclose(together, apart, atol=1e-5)
    assert torch.allclose(reordered, together[[2, 0, 1]], atol=1e-5)


def test_batch_mode_is_the_released_attention_across_the_videos_of_a_batch(_clipvqa_tiny, clipvqa_backbone):
    released = CLIPVQA(CLIPVQAConfig(backbone=clipvqa_backbone, pretrained=None, num_frames=FRAMES, image_size=32,
                                     sat_attention="batch")).eval()
    assert released.sat.across == "batch"
    released.load_state_dict(_clipvqa_tiny.state_dict())  # the same tensors: the mode is no weight
    a, b, c = (_clipvqa_tiny.normalize(pixels(1, seed=s)) for s in (1, 2, 3))
    with torch.no_grad():
        alone = _clipvqa_tiny.level_sims(a)
        assert torch.allclose(released.level_sims(a), alone, atol=1e-6)  # a batch of one: the same
        with_b = released.level_sims(torch.cat([a, b]))[0]
        with_c = released.level_sims(torch.cat([a, c]))[0]
    # in a batch the SAT attention mixes the videos: video a's result depends on its partner
    assert not torch.allclose(with_b, alone[0], atol=1e-4)
    assert not torch.allclose(with_b, with_c, atol=1e-4)


def test_an_artifact_stores_every_persistent_tensor_and_reloads_exactly(model, clipvqa_backbone):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # text tower, logit scale and temporal conv included
    model.refresh_text_features()
    tensors = model.artifact_tensors()
    assert set(tensors) == set(model.state_dict())
    assert {"text.logit_scale", "text.token_embedding.weight", "temporal_conv.weight", "visual.proj"} <= set(tensors)
    assert not {"text_features", "text_tokens", "level_values", "text.attn_mask"} & set(tensors)  # derived
    assert all(t.device.type == "cpu" and not t.requires_grad for t in tensors.values())
    other = CLIPVQA(CLIPVQAConfig(backbone=clipvqa_backbone, pretrained=None, num_frames=FRAMES, image_size=32,
                                  init_seed=7)).eval()
    other.load_artifact_tensors(tensors)
    for name, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], tensor), name
    assert torch.equal(other.text_features, model.text_features)  # the level texts re-encoded
    video = model.normalize(pixels(2))
    with torch.no_grad():
        assert torch.equal(other.level_probs(video), model.level_probs(video))
    broken = dict(tensors)
    del broken["sat.alpha"]
    broken["extra.weight"] = torch.zeros(2)
    broken["patch_proj"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"(?s)sat\.alpha.*extra\.weight.*patch_proj: \(3, 3\)"):
        other.load_artifact_tensors(broken)


def test_level_texts_are_the_six_bare_words_in_order(model):
    with torch.no_grad():
        expected = model.text.encode_text(model.tokenizer(["bad", "poor", "fair", "good", "great", "excellent"]))
    assert tuple(model.text_features.shape) == (6, DIM)
    assert torch.allclose(model.text_features, expected, atol=1e-6)
    # loading new text weights re-encodes the words
    state = model.state_dict()
    state["text.ln_final.bias"] = state["text.ln_final.bias"] + 0.5
    model.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(model.text_features, model.text.encode_text(model.text_tokens), atol=1e-6)
        assert not torch.allclose(model.text_features, expected, atol=1e-3)


def test_normalize_uses_imagenet_mean_and_std_on_0_255(model):
    frames = torch.zeros(1, FRAMES, 32, 32, 3, dtype=torch.uint8)
    frames[..., 0, 0, :] = 255
    x = model.normalize(frames)
    assert tuple(x.shape) == (1, FRAMES, 3, 32, 32)
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])
    assert torch.allclose(x[0, 0, :, 1, 1], -mean / std) and torch.allclose(x[0, 0, :, 0, 0], (255 - mean) / std)
    with pytest.raises(ValueError):
        model.normalize(frames.float())
    # the same statistics on 0–1 in the engine's terms, with the released short side (256 for 224 px)
    prep = model.preprocess
    assert prep["image_size"] == [32, 32] and prep["resize_short_side"] == 36  # int(256 / 224 · 32)
    assert torch.allclose(torch.tensor(prep["mean"]) * 255, mean) and torch.allclose(torch.tensor(prep["std"]) * 255, std)


def test_what_trains_and_what_stays_frozen(model):
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert all(n.startswith("text.") or n == "temporal_conv.weight" for n in frozen)
    assert "text.logit_scale" in frozen and "temporal_conv.weight" in frozen
    assert {n for n, _ in model.visual.named_parameters(prefix="visual")} <= trainable  # the whole tower
    for prefix in ("messages.", "sat.", "vat.", "patch_norm.", "patch_proj"):
        assert any(n.startswith(prefix) for n in trainable), prefix
    assert sum(p.numel() for p in model.trainable_parameters()) == sum(
        p.numel() for n, p in model.named_parameters() if n in trainable)


def test_param_groups_reproduce_the_released_optimizer(model):
    groups = model.param_groups(lr=1e-3, weight_decay=0.05)
    assert [g["name"] for g in groups] == [f"{r}_{k}" for r in ("clip", "sat", "vat", "messages")
                                           for k in ("decay", "no_decay")]
    assert [g["lr"] for g in groups] == [1e-3, 1e-3] + [1e-3 * 10] * 6
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] * 4
    names = {id(p): n for n, p in model.named_parameters()}
    members = [[names[id(p)] for p in g["params"]] for g in groups]
    flat = [n for m in members for n in m]
    assert sorted(flat) == sorted(n for n, p in model.named_parameters() if p.requires_grad)  # each once
    assert "visual.positional_embedding" in members[1] and "visual.class_embedding" in members[1]
    assert "visual.proj" in members[0] and "visual.conv1.weight" in members[0]
    assert "sat.frame_pos" in members[3] and "sat.alpha" in members[3]
    assert "patch_proj" in members[4] and "vat.alpha" in members[5] and "patch_norm.weight" in members[5]
    assert all(n.startswith("messages.") for n in members[6] + members[7])
    positions = ("visual.positional_embedding", "sat.frame_pos")
    for n in (n for m in members[1::2] for n in m):  # no decay: 1-D (biases too) or position embeddings
        assert model.get_parameter(n).ndim <= 1 or n in positions, n
    for n in (n for m in members[0::2] for n in m):
        assert model.get_parameter(n).ndim >= 2 and n not in positions, n
    assert (LR, WEIGHT_DECAY, ADAMW_BETAS, ADAMW_EPS, NEW_MODULE_LR_SCALE) == (8e-6, 1e-3, (0.9, 0.98), 1e-8, 10.0)
    assert all(g["betas"] == ADAMW_BETAS and g["eps"] == ADAMW_EPS for g in groups)
    optimizer = torch.optim.AdamW(model.param_groups())  # the released betas and eps, per group
    assert all(g["betas"] == (0.9, 0.98) and g["eps"] == 1e-8 for g in optimizer.param_groups)


def test_parameter_count_at_vit_b16_with_32_frames():
    with torch.device("meta"):
        model = CLIPVQA(CLIPVQAConfig(pretrained=None))
    w, d, layers, patch, grid, frames = 768, 512, 12, 16, 14, 32
    tw, tlayers, vocab, ctx = 512, 12, 49408, 77

    def block(x):  # LN, attention (in 3x² + 3x, out x² + x), LN, MLP (4x² + 4x, 4x² + x)
        return 2 * x + 3 * x * x + 3 * x + x * x + x + 2 * x + 4 * x * x + 4 * x + 4 * x * x + x

    visual = 3 * patch * patch * w + w + (grid * grid + 1) * w + 2 * w + layers * block(w) + 2 * w + w * d
    text = vocab * tw + ctx * tw + tlayers * block(tw) + 2 * tw + tw * d + 1  # … + logit scale
    messages = layers * ((w * w + w) + 2 * w + (3 * w * w + 3 * w) + (w * w + w))
    sat = block(d) + frames * d + d  # one block, position embedding, α
    vat_layer = 3 * d * d + (d * d + d) + 2 * d + 2 * d + (4 * d * d + 4 * d) + (4 * d * d + d)
    vat = 2 * vat_layer + 2 * d + d  # two layers, patch LayerNorm, α
    patch_side = 2 * w + w * d
    conv = d * d * frames
    assert visual + text == 149_620_737  # CLIP ViT-B/16
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.trainable_parameters())
    assert total == visual + text + messages + sat + vat + patch_side + conv == 203_330_561
    assert trainable == visual + messages + sat + vat + patch_side == 131_513_856


# -- ONNX ----------------------------------------------------------------------------------


class _Graph(torch.nn.Module):
    """uint8 frames → (level_sims, score), as an exported graph would compute them."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, frames):
        sims = self.model.level_sims(self.model.normalize(frames))
        return sims, self.model.score_from_sims(sims)


@pytest.mark.parametrize("sat_attention", ["alone", "batch"])
def test_onnx_export_with_dynamic_batch_matches_torch(model, tmp_path, sat_attention):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import warnings

    model.sat.across = model.config.sat_attention = sat_attention
    graph = _Graph(model).eval()
    path = tmp_path / "clipvqa.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (pixels(2),), str(path), input_names=["frames"], output_names=["level_sims", "score"],
                          opset_version=18, dynamo=True, dynamic_shapes={"frames": {0: batch}}, verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 3):
        frames = pixels(b, seed=b)
        sims, score = session.run(None, {"frames": frames.numpy()})
        with torch.no_grad():
            ref_sims, ref_score = graph(frames)
        assert sims.shape == (b, 6) and score.shape == (b,)
        assert torch.allclose(torch.from_numpy(sims), ref_sims, atol=1e-4)
        assert torch.allclose(torch.from_numpy(score), ref_score, atol=1e-4)


def test_the_deployable_module_equals_the_model_leaves_it_trainable_and_runs_in_bf16(model):
    from qclip_engine.model.families import deployable
    from qclip_engine.runtime.torch_backend import TorchBackend

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frames = pixels(2, seed=3)
    graph = deployable(model)
    with torch.no_grad():
        ref_sims = model.level_sims(model.normalize(frames))
        ref = model.score_from_sims(ref_sims)
        sims, score = graph(frames)
    torch.testing.assert_close(sims, ref_sims, rtol=0, atol=1e-5)
    torch.testing.assert_close(score, ref, rtol=0, atol=1e-5)
    assert not [n for n, _ in graph.named_parameters() if n.startswith("model.text.")]  # constants only
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable  # still trains
    model.train()  # and keeps its text tower

    low = TorchBackend(model, "cpu", precision="bf16")  # the reduced copy, built and set to eval
    low_sims, low_score = low.run(frames.numpy())
    assert low_sims.dtype == low_score.dtype == "float32" and low_sims.shape == (2, 6)
    assert abs(low_score - ref.numpy()).max() < 0.05  # bf16 tower, FP32 head (measured: 5e-3)
    assert next(low.module.model.visual.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # a copy was converted, not the model
