"""CLIPVQA's modules (qclip_engine/model/clipvqa/modules.py, target.py) against values derived by hand
on tiny inputs: SAT (both attention modes), the temporal conv, VAT, QuickGELU, the target and the loss."""

import math

import pytest
import torch
from clipvqa_tiny import DIM, FRAMES, LAYERS, LN_EPS, PATCHES, layer_norm, pixels, quick_gelu, set_identity_attention

from qclip_engine.model.clipvqa import (
    PatchCrossAttention,
    SpatioTemporalAggregation,
    VideoAwareText,
    clipvqa_loss,
    label_distribution,
)


@pytest.fixture
def model(clipvqa_model):
    return clipvqa_model


# -- SAT -----------------------------------------------------------------------------------


def identity_sat(across="batch"):
    sat = SpatioTemporalAggregation(dim=4, frames=2, layers=1, heads=1, across=across)
    block = sat.blocks[0]
    with torch.no_grad():
        block.attn.out_proj.weight.zero_()
        block.attn.out_proj.bias.zero_()
        block.mlp.proj.weight.zero_()
        block.mlp.proj.bias.zero_()
    return sat


def test_sat_is_the_mean_of_the_first_tokens_plus_position_and_the_rest_times_alpha():
    sat = identity_sat()  # blocks that add nothing
    with torch.no_grad():
        sat.frame_pos.copy_(torch.tensor([[[0.5, 0, 0, 0], [0, 0, 0, 0.5]]]))
        sat.alpha.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        out = sat(torch.eye(4).unsqueeze(0))  # tokens e_0 … e_3; F = 2
    # head: e_0 + (.5,0,0,0), e_1 + (0,0,0,.5); rest: α·e_2 = (0,0,3,0), α·e_3 = (0,0,0,4); mean of 4
    assert tuple(out.shape) == (1, 4)
    assert torch.allclose(out, torch.tensor([[1.5, 1.0, 3.0, 4.5]]) / 4)


def test_sat_attention_runs_across_the_videos_of_the_batch():
    a, b = 2.0, 3.0
    tokens = torch.zeros(2, 3, 4)  # 2 videos, F = 2 head tokens + 1 more
    tokens[0, 0] = torch.tensor([a, -a, a, -a])
    tokens[1, 0] = torch.tensor([b, -b, b, -b])
    tokens[0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    tokens[1, 1] = torch.tensor([-1.0, 0.0, 0.0, 1.0])
    tokens[:, 2] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    results = {}
    for across in ("batch", "alone"):
        sat = SpatioTemporalAggregation(dim=4, frames=2, layers=1, heads=1, across=across)
        set_identity_attention(sat.blocks[0].attn, 4)
        with torch.no_grad():
            sat.blocks[0].mlp.proj.weight.zero_()
            sat.blocks[0].mlp.proj.bias.zero_()
            sat.frame_pos.zero_()
            results[across] = sat(tokens)
    # LN([x, −x, x, −x]) = [1, −1, 1, −1] · x / sqrt(x² + eps)
    def ln_alt(x):
        return torch.tensor([1.0, -1.0, 1.0, -1.0]) * x / math.sqrt(x * x + LN_EPS)

    ln_second = layer_norm(tokens[:, 1])
    # batch: each head position attends (uniformly) over both videos at that position
    shared0 = (ln_alt(a) + ln_alt(b)) / 2
    shared1 = ln_second.mean(0)
    for v in range(2):
        expected = (tokens[v, 0] + shared0 + tokens[v, 1] + shared1 + tokens[v, 2]) / 3
        assert torch.allclose(results["batch"][v], expected, atol=1e-6)
    # alone: each video is its own only key
    alone0 = (tokens[0, 0] + ln_alt(a) + tokens[0, 1] + ln_second[0] + tokens[0, 2]) / 3
    assert torch.allclose(results["alone"][0], alone0, atol=1e-6)


def test_sat_alone_is_the_released_batch_of_one_and_batch_depends_on_the_partner():
    torch.manual_seed(0)
    sat = SpatioTemporalAggregation(dim=8, frames=2, layers=1, heads=2, across="batch")
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        single = sat(x[:1])
        paired = sat(x[:2])
        sat.across = "alone"
        alone = sat(x)
    assert torch.allclose(alone[:1], single, atol=1e-6)
    assert not torch.allclose(paired[:1], single, atol=1e-4)


def test_sat_reads_the_frame_major_summary_and_gives_its_blocks_the_first_f_tokens(model):
    seen = []
    handle = model.sat.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        for block in model.sat.blocks:
            block.attn.out_proj.weight.zero_()
            block.attn.out_proj.bias.zero_()
            block.mlp.proj.weight.zero_()
            block.mlp.proj.bias.zero_()
        model.sat.alpha.zero_()
        video = model.normalize(pixels(2))
        summary, _ = model.encode_frames(video.flatten(0, 1), FRAMES)
        v, _ = model.encode_video(video)
    handle.remove()
    tokens = seen[0]
    per_frame = 1 + LAYERS
    assert tuple(tokens.shape) == (2, FRAMES * per_frame, DIM)
    for b in range(2):
        for f in range(FRAMES):
            for j in range(per_frame):
                assert torch.equal(tokens[b, f * per_frame + j], summary[b * FRAMES + f, j])
    # α = 0 and blocks that add nothing: v = (first F tokens + position) summed over the S tokens
    # (F = 4, 3 tokens per frame: frame 0's class token and messages, then frame 1's class token)
    expected = (tokens[:, :FRAMES] + model.sat.frame_pos).sum(1) / (FRAMES * per_frame)
    assert torch.allclose(v, expected, atol=1e-6)
    assert torch.equal(tokens[:, FRAMES - 1], summary.reshape(2, FRAMES, per_frame, DIM)[:, 1, 0])


# -- temporal conv and VAT -----------------------------------------------------------------


def test_temporal_mix_is_the_conv_over_frames_then_a_reshape_not_a_permute(model):
    g = torch.Generator().manual_seed(1)
    patches = torch.randn(2, FRAMES, PATCHES, DIM, generator=g)
    w = model.temporal_conv.weight  # [D_out, D_in, F, 1]
    y = torch.einsum("oit,btpi->bop", w[..., 0], patches)  # [B, D, P]
    with torch.no_grad():
        mixed = model.temporal_mix(patches)
    assert tuple(mixed.shape) == (2, PATCHES, DIM)
    assert torch.allclose(mixed, y.reshape(2, PATCHES, DIM), atol=1e-4)
    assert not torch.allclose(mixed, y.transpose(1, 2), atol=1e-2)  # what a permute would give


def test_vat_with_uniform_attention_adds_the_mean_normalised_patch_to_the_text():
    vat = VideoAwareText(dim=4, layers=1, alpha=0.5, heads=1)
    cross = vat.layers[0].cross
    with torch.no_grad():
        cross.q.weight.zero_()
        cross.k.weight.zero_()
        cross.v.weight.copy_(torch.eye(4))
        cross.out.weight.copy_(torch.eye(4))
        cross.out.bias.zero_()
        vat.layers[0].mlp.proj.weight.zero_()
        vat.layers[0].mlp.proj.bias.zero_()
    text = torch.tensor([[[1.0, 0, 0, 0], [0, 2.0, 0, 0]]])
    patches = torch.tensor([[[1.0, -1, 1, -1], [2.0, -2, 2, -2], [3.0, 3, -3, -3]]])
    with torch.no_grad():
        out = vat(text, patches)
    # LN of the three patches: ≈ (1,−1,1,−1), (1,−1,1,−1), (1,1,−1,−1); their mean ≈ (1, −1/3, 1/3, −1)
    s = [x / math.sqrt(x * x + LN_EPS) for x in (1.0, 2.0, 3.0)]
    mean_patch = torch.tensor([s[0] + s[1] + s[2], -s[0] - s[1] + s[2], s[0] + s[1] - s[2], -s[0] - s[1] - s[2]]) / 3
    assert tuple(out.shape) == (1, 2, 4)
    assert torch.allclose(out, 0.5 * (text + mean_patch), atol=1e-6)


def test_vat_layer_is_pre_norm_cross_attention_then_mlp():
    torch.manual_seed(0)
    vat = VideoAwareText(dim=8, layers=1, alpha=1.0, heads=2)
    layer = vat.layers[0]
    with torch.no_grad():
        for norm in (layer.norm_query, layer.norm_mlp):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
        text, patches = torch.randn(2, 6, 8), torch.randn(2, 5, 8)

        def ln(norm, x):
            return layer_norm(x) * norm.weight + norm.bias

        t = text + layer.cross(ln(layer.norm_query, text), layer_norm(patches))
        t = t + layer.mlp.proj(quick_gelu(layer.mlp.fc(ln(layer.norm_mlp, t))))
        assert torch.allclose(vat(text, patches), t, atol=1e-5)


def test_every_mlp_uses_quick_gelu(model):
    x = torch.linspace(-3, 3, 13)
    acts = [b.mlp.gelu for b in model.visual.transformer.resblocks]
    acts += [b.mlp.gelu for b in model.text.transformer.resblocks]  # swapped in for the OpenAI weights
    acts += [b.mlp.act for b in model.sat.blocks] + [layer.mlp.act for layer in model.vat.layers]
    for act in acts:
        assert torch.allclose(act(x), quick_gelu(x), atol=1e-6)


def test_vat_cross_attention_is_multi_head_attention_without_qkv_bias():
    torch.manual_seed(0)
    cross = PatchCrossAttention(dim=8, heads=2)
    reference = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([cross.q.weight, cross.k.weight, cross.v.weight]))
        reference.in_proj_bias.zero_()
        reference.out_proj.weight.copy_(cross.out.weight)
        reference.out_proj.bias.copy_(cross.out.bias)
        q, mem = torch.randn(3, 6, 8), torch.randn(3, 5, 8)
        assert torch.allclose(cross(q, mem), reference(q, mem, mem, need_weights=False)[0], atol=1e-6)
    vat = VideoAwareText(dim=DIM, layers=2, alpha=0.1)
    assert tuple(vat(torch.randn(2, 6, DIM), torch.randn(2, PATCHES, DIM)).shape) == (2, 6, DIM)
    assert torch.equal(vat.alpha, torch.full((DIM,), 0.1))


# -- target and loss -----------------------------------------------------------------------


def test_label_distribution_by_hand():
    q = label_distribution(torch.tensor([3.0, 2.5]))
    assert tuple(q.shape) == (2, 6)
    # MOS 3: ∝ (e⁻⁹, e⁻⁴, e⁻¹, 1, e⁻¹, e⁻⁴)
    z = 1 + 2 / math.e + 2 * math.exp(-4) + math.exp(-9)
    expected3 = torch.tensor([math.exp(-9), math.exp(-4), math.exp(-1), 1.0, math.exp(-1), math.exp(-4)]) / z
    # MOS 2.5: ∝ (e^-6.25, e^-2.25, e^-0.25, e^-0.25, e^-2.25, e^-6.25)
    e = [math.exp(-6.25), math.exp(-2.25), math.exp(-0.25)]
    expected25 = torch.tensor([e[0], e[1], e[2], e[2], e[1], e[0]]) / (2 * sum(e))
    assert torch.allclose(q[0], expected3, atol=1e-7) and abs(q[0, 3].item() - 0.56417058) < 1e-7
    assert torch.allclose(q[1], expected25, atol=1e-7) and abs(q[1, 2].item() - 0.43943912) < 1e-7
    assert torch.allclose(label_distribution(torch.tensor([60.0]), scale=20.0), q[:1])  # 0–100 MOS / 20


def test_loss_is_the_mean_cosine_embedding_loss_by_hand():
    p = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0]])
    q = torch.tensor([[0.5, 0.5, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0]])
    # 1 − cos: 1 − 0.5/√0.5 and 0
    assert abs(clipvqa_loss(p, q).item() - (1 - 0.5 / math.sqrt(0.5)) / 2) < 1e-6
    assert abs(clipvqa_loss(p, q).item() - 0.14644661) < 1e-6

