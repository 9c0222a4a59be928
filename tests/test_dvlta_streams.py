"""DVLTA-VQA's streams, fusion, score and loss (qclip_engine/model/dvlta/adapter.py, temporal_context.py,
fusion.py) against values derived by hand on tiny inputs: the adapter's α mix (eqs. 3–4) and the time
average before it (eq. 2), eq. 6's aggregation against a per-frame loop, the Temporal Context Module's
shape and its ``temporal_op`` switch (only the temporal operators change), the text-guided fusion's
weights as the cosines they are defined as (eqs. 10–11) and the ablation modes, the score (eqs.
12–13), the PLCC loss (eqs. 14–15), and an ONNX export of a tiny TCM + fusion + score."""

import math
import warnings

import pytest
import torch
from torch import nn

from qclip_engine.model.dvlta.adapter import ConvAdapter, TemporalCLIPFeatures, patch_tokens_to_maps
from qclip_engine.model.dvlta.fusion import (FusionHead, PromptQuality, TextAdapter, plcc_loss,
                                             quality_from_prompts, text_guided_fusion)
from qclip_engine.model.dvlta.temporal_context import TEMPORAL_OPS, TemporalAggregation, TemporalContextModule


def identity_bn(*bns):
    """Eval-mode BatchNorm with mean 0, variance 1, γ = 1, β = 0 (and eps = 0 where built so): identity."""
    with torch.no_grad():
        for bn in bns:
            bn.running_mean.zero_(), bn.running_var.fill_(1.0), bn.weight.fill_(1.0), bn.bias.zero_()


def set_adapter(adapter, w_down, w_up):
    """Hand weights for the 1 × 1 convs and identity BNs."""
    with torch.no_grad():
        adapter.conv2[0].weight.copy_(torch.tensor(w_down, dtype=torch.float32)[..., None, None])
        adapter.conv1[0].weight.copy_(torch.tensor(w_up, dtype=torch.float32)[..., None, None])
    identity_bn(adapter.conv2[1], adapter.conv1[1])
    return adapter.eval()


def jitter(module, scale=0.15, seed=0):
    """Non-trivial parameters (zero-initialised ones included), BN statistics and buffers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.add_(1.0)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module


# -- Video-Based Temporal CLIP (eqs. 2–4) -------------------------------------------------------


def test_conv_adapter_mixes_alpha_times_the_adapter_with_one_minus_alpha_times_the_input():
    # Pixel 0: z = (1, −2, 3, 0.5); Conv2: h = ReLU((z0, z2 − z3)) = (1, 2.5);
    # Conv1: a = ReLU((h0, h1, −h0, 2·h0 − h1)) = (1, 2.5, 0, 0); out = 0.4·a + 0.6·z.
    adapter = set_adapter(ConvAdapter(4, reduction=2, alpha=0.4, bn_eps=0.0),
                          [[1, 0, 0, 0], [0, 0, 1, -1]], [[1, 0], [0, 1], [-1, 0], [2, -1]])
    z = torch.tensor([[1.0, 0.0], [-2.0, 0.0], [3.0, 0.0], [0.5, 0.0]]).reshape(1, 4, 1, 2)
    with torch.no_grad():
        out = adapter(z)
    expected = torch.tensor([[1.0, 0.0], [-0.2, 0.0], [1.8, 0.0], [0.3, 0.0]]).reshape(1, 4, 1, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # Conv1's BN shift acts before its ReLU: β3 = 1 turns a3 = ReLU(−0.5 + 1) = 0.5, out3 = 0.2 + 0.3.
    with torch.no_grad():
        adapter.conv1[1].bias[3] = 1.0
        assert adapter(z)[0, 3, 0, 0].item() == pytest.approx(0.5, abs=1e-6)
    # α = 0: the input unchanged; α = 1: the adapter alone.
    for alpha, want in ((0.0, z), (1.0, torch.tensor([1.0, 2.5, 0.0, 0.0]).reshape(1, 4, 1, 1))):
        other = set_adapter(ConvAdapter(4, reduction=2, alpha=alpha, bn_eps=0.0),
                            [[1, 0, 0, 0], [0, 0, 1, -1]], [[1, 0], [0, 1], [-1, 0], [2, -1]])
        with torch.no_grad():
            torch.testing.assert_close(other(z)[..., :1], want[..., :1], rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        ConvAdapter(4, alpha=1.5)


def test_temporal_clip_features_average_time_before_the_adapter_then_space():
    # D = 2, r = 2 (hidden 1): Conv2 takes channel 0, Conv1 writes channel 0.
    # ch0: frames (−1, −3), (3, 5) → Z = (1, 1); ch1: (2, 0), (0, 2) → Z = (1, 1).
    # A(Z) = (ReLU(1), 0) per pixel → out = (0.4 + 0.6, 0.6) → spatial mean (1.0, 0.6).
    # (Adapting each frame first would give ch0 = mean(0.6·(−1, −3), (3, 5)) = 1.4.)
    feats = TemporalCLIPFeatures(2, reduction=2, alpha=0.4, bn_eps=0.0)
    set_adapter(feats.adapter, [[1, 0]], [[1], [0]])
    frames = torch.tensor([[[-1.0, -3.0], [2.0, 0.0]], [[3.0, 5.0], [0.0, 2.0]]]).reshape(1, 2, 2, 1, 2)
    with torch.no_grad():
        out = feats.eval()(frames)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.6]]), rtol=0, atol=1e-6)
    # Frame vectors [B, T, D] are 1 × 1 maps: the mean of the two pixels' frames, per pixel.
    with torch.no_grad():
        out_vec = feats(frames[..., 0, 0])  # ch0 (−1, 3) → 1, ch1 (2, 0) → 1
    torch.testing.assert_close(out_vec, torch.tensor([[1.0, 0.6]]), rtol=0, atol=1e-6)


def test_patch_tokens_become_row_major_channel_first_maps():
    tokens = torch.tensor([[10.0 * i + d for d in range(3)] for i in range(6)]).reshape(1, 1, 6, 3)
    maps = patch_tokens_to_maps(tokens, 2, 3)
    assert maps.shape == (1, 1, 3, 2, 3)
    for d in range(3):
        for h in range(2):
            for w in range(3):
                assert maps[0, 0, d, h, w].item() == 10.0 * (h * 3 + w) + d
    with pytest.raises(ValueError):
        patch_tokens_to_maps(tokens, 2, 2)


# -- Temporal Context Module (eqs. 5–7) --------------------------------------------------------


def test_aggregation_by_hand_one_channel():
    # x over time (3, 6, 0, 9); pool k = 3, zero pad counted: (3, 3, 5, 3).
    agg = TemporalAggregation(1, pool_kernel=3, pool_bn_zero_init=False, bn_eps=0.0)
    identity_bn(agg.bn, agg.pool_bn)
    x = torch.tensor([3.0, 6.0, 0.0, 9.0]).reshape(1, 1, 4, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(agg.eval()(x).flatten(), torch.tensor([6.0, 9.0, 5.0, 12.0]))
        torch.testing.assert_close(agg(-x).flatten(), torch.zeros(4))  # the ReLU
    # The released zero init of BN2: eq. 6 starts as ReLU(BN1(x)).
    fresh = TemporalAggregation(1, bn_eps=0.0).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).flatten(), torch.tensor([3.0, 6.0, 0.0, 9.0]))


def test_aggregation_matches_a_per_frame_computation():
    torch.manual_seed(1)
    c, t = 3, 5
    agg = TemporalAggregation(c, pool_kernel=3, pool_bn_zero_init=False)
    with torch.no_grad():
        for bn in (agg.bn, agg.pool_bn):
            bn.weight.copy_(torch.randn(c)), bn.bias.copy_(torch.randn(c))
            bn.running_mean.copy_(torch.randn(c)), bn.running_var.copy_(torch.rand(c) + 0.5)
    x = torch.randn(2, c, t, 2, 3, dtype=torch.float64)
    agg = agg.double().eval()
    with torch.no_grad():
        out = agg(x)

    def bn(module, v, ch):
        return ((v - module.running_mean[ch].item()) / math.sqrt(module.running_var[ch].item() + module.eps)
                * module.weight[ch].item() + module.bias[ch].item())

    for b in range(2):
        for ch in range(c):
            for f in range(t):
                for h in range(2):
                    for w in range(3):
                        window = [x[b, ch, s, h, w].item() if 0 <= s < t else 0.0 for s in (f - 1, f, f + 1)]
                        pooled = sum(window) / 3
                        want = max(0.0, bn(agg.bn, x[b, ch, f, h, w].item(), ch) + bn(agg.pool_bn, pooled, ch))
                        assert out[b, ch, f, h, w].item() == pytest.approx(want, abs=1e-10)


def tiny_tcm(op="tadaconv", out_dim=None, seed=0):
    torch.manual_seed(seed)
    return TemporalContextModule(width=8, ratio=4, temporal_op=op, cbam_reduction=4, out_dim=out_dim)


@pytest.mark.parametrize("op", TEMPORAL_OPS)
def test_tcm_output_shape_and_composition(op):
    model = jitter(tiny_tcm(op, out_dim=16)).eval()
    frames = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        out = model(frames)
        x = model.stem(frames)
        assert x.shape == (2, 8, 4, 4, 4)  # time kept, space / 8
        for layer in model.layers:
            x = layer.aggregate(layer.op(x))
            assert x.shape == (2, 8, 4, 4, 4)
        manual = model.proj(model.cbam(x).mean(dim=(2, 3, 4)))
    assert out.shape == (2, 16)
    torch.testing.assert_close(out, manual)
    assert tiny_tcm(op).eval()(frames).shape == (2, 8)
    with pytest.raises(ValueError):
        TemporalContextModule(width=8, temporal_op="i3d")


def test_temporal_op_changes_only_the_temporal_operators():
    states = {op: tiny_tcm(op, out_dim=16).state_dict() for op in TEMPORAL_OPS}
    shared = {op: {k: v for k, v in s.items() if ".op." not in k} for op, s in states.items()}
    ref = shared["tadaconv"]
    assert any(k.startswith("stem.") for k in ref) and any(k.startswith("cbam.") for k in ref)
    assert any(".aggregate." in k for k in ref) and "proj.weight" in ref
    for op in ("c3d", "r2plus1d"):
        assert shared[op].keys() == ref.keys()
        for k, v in ref.items():
            assert torch.equal(shared[op][k], v), (op, k)
    ops = {op: sorted(k for k in s if ".op." in k) for op, s in states.items()}
    assert ops["c3d"] == ["layers.0.op.weight", "layers.1.op.weight"]
    assert states["c3d"]["layers.0.op.weight"].shape == (8, 8, 3, 3, 3)
    assert "layers.0.op.route.expand.weight" in ops["tadaconv"] and "layers.0.op.conv.weight" in ops["tadaconv"]
    assert states["r2plus1d"]["layers.0.op.spatial.weight"].shape == (18, 8, 1, 3, 3)  # ⌊27·64 / 96⌋
    assert states["r2plus1d"]["layers.0.op.temporal.weight"].shape == (8, 18, 3, 1, 1)
    assert len({tuple(v) for v in ops.values()}) == 3
    # The ops are used: outputs differ across the switch.
    frames = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        outs = [tiny_tcm(op).eval()(frames) for op in TEMPORAL_OPS]
    assert (outs[0] - outs[1]).abs().max() > 1e-4 and (outs[0] - outs[2]).abs().max() > 1e-4


# -- text-guided fusion (eqs. 10–11) -----------------------------------------------------------


def test_fusion_weights_are_the_raw_cosines_by_hand():
    features = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], [-1.0, 0.0, 0.0]]])
    fused, weights = text_guided_fusion(features, torch.tensor([2.0, 0.0, 0.0]))
    torch.testing.assert_close(weights, torch.tensor([[0.6, 0.0, -1.0]]))  # no softmax: negative stays
    torch.testing.assert_close(fused, torch.tensor([[2.8, 2.4, 0.0]]))  # 0.6·(3, 4, 0) + 1·(1, 0, 0)


def test_fusion_weights_equal_explicit_dot_products_over_norms():
    g = torch.Generator().manual_seed(3)
    features, text = torch.randn(2, 3, 5, generator=g), torch.randn(5, generator=g)
    fused, weights = text_guided_fusion(features, text)
    for b in range(2):
        want_fused = [0.0] * 5
        for k in range(3):
            f = features[b, k].tolist()
            dot = sum(fi * ti for fi, ti in zip(f, text.tolist()))
            cos = dot / (math.sqrt(sum(v * v for v in f)) * math.sqrt(sum(v * v for v in text.tolist())))
            assert weights[b, k].item() == pytest.approx(cos, abs=1e-6)
            want_fused = [acc + cos * fi for acc, fi in zip(want_fused, f)]
        torch.testing.assert_close(fused[b], torch.tensor(want_fused), rtol=0, atol=1e-5)
    # Per-sample text [B, D]; normalised branches sum unit vectors.
    _, w2 = text_guided_fusion(features, torch.stack([text, -text]))
    torch.testing.assert_close(w2, torch.stack([weights[0], -weights[1]]))
    fused_n, _ = text_guided_fusion(features, text, normalize=True)
    units = features / features.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(fused_n, (weights[..., None] * units).sum(1))


def test_fusion_head_text_mode_uses_the_adapted_text():
    g = torch.Generator().manual_seed(4)
    features, text = torch.randn(2, 3, 8, generator=g), torch.randn(8, generator=g)
    torch.manual_seed(0)
    head = FusionHead(8, branches=3, mode="text", text=text)
    with torch.no_grad():
        torch.testing.assert_close(head(features), text_guided_fusion(features, text)[0])  # adapter = identity
        head.text_adapter.up.weight.copy_(torch.randn(8, 2, generator=g))
        head.text_adapter.up.bias.copy_(torch.randn(8, generator=g))
        a = head.text_adapter
        adapted = text + a.up.weight @ torch.relu(a.down.weight @ text + a.down.bias) + a.up.bias
        want_w = (features @ adapted) / (features.norm(dim=-1) * adapted.norm())
        torch.testing.assert_close(head.weights(features), want_w)
        torch.testing.assert_close(head(features), (want_w[..., None] * features).sum(1))
    assert head.text_adapter.down.out_features == 2  # dim // 4


def test_text_adapter_starts_as_the_identity():
    torch.manual_seed(0)
    adapter = TextAdapter(16)
    t = torch.randn(3, 16)
    assert torch.equal(adapter(t), t)


def test_concat_and_add_modes_by_hand():
    features = torch.tensor([[[1.0, 2.0], [3.0, -4.0], [5.0, 0.0]]])
    add = FusionHead(2, branches=3, mode="add")
    torch.testing.assert_close(add(features), torch.tensor([[3.0, -2.0 / 3]]))
    torch.testing.assert_close(add.weights(features), torch.full((1, 3), 1 / 3))
    concat = FusionHead(2, branches=3, mode="concat")
    with torch.no_grad():
        concat.proj.weight.copy_(torch.tensor([[1.0, 0, 0, 0, 0, 0], [0, 0, 0, 1.0, 0, 2.0]]))
        concat.proj.bias.copy_(torch.tensor([0.5, -1.0]))
        torch.testing.assert_close(concat(features), torch.tensor([[1.5, -5.0]]))  # (1 + .5, −4 + 0 − 1)
    with pytest.raises(ValueError):
        concat.weights(features)
    with pytest.raises(ValueError):
        add(features[:, :2])


class TinyDVLTA(nn.Module):
    """Three branches in D = 16 (BVFE given, TCM projected, F_vbtc), one fusion head, the score."""

    def __init__(self, mode="text", op="tadaconv"):
        super().__init__()
        torch.manual_seed(0)
        self.tcm = TemporalContextModule(width=8, ratio=4, temporal_op=op, cbam_reduction=4, out_dim=16)
        self.clip = TemporalCLIPFeatures(16)
        self.fusion = FusionHead(16, branches=3, mode=mode)
        self.quality = PromptQuality(16)

    def forward(self, frames, clip_maps, local):
        features = torch.stack((local, self.tcm(frames), self.clip(clip_maps)), dim=1)
        fused = self.fusion(features)
        return self.quality(fused), fused


def test_fusion_mode_changes_only_the_fusion():
    states = {mode: TinyDVLTA(mode).state_dict() for mode in ("text", "concat", "add")}
    outside = {m: {k: v for k, v in s.items() if not k.startswith("fusion.")} for m, s in states.items()}
    for mode in ("concat", "add"):
        assert outside[mode].keys() == outside["text"].keys()
        assert all(torch.equal(outside[mode][k], v) for k, v in outside["text"].items())
    inside = {m: sorted(k for k in s if k.startswith("fusion.")) for m, s in states.items()}
    assert inside["add"] == [] and inside["concat"] == ["fusion.proj.bias", "fusion.proj.weight"]
    assert "fusion.text" in inside["text"] and "fusion.text_adapter.up.weight" in inside["text"]


# -- score (eqs. 12–13) and loss (eqs. 14–15) --------------------------------------------------


def test_score_from_hand_similarities():
    fused = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    positive = torch.tensor([0.6, 0.8, 0.0])  # cos with row 0: 0.6; row 1: 0
    negative = torch.tensor([-0.2, 0.0, math.sqrt(0.96)]) * 5  # row 0: −0.2; row 1: √0.96
    q = quality_from_prompts(fused, positive, negative)
    want0 = math.exp(0.6) / (math.exp(0.6) + math.exp(-0.2))
    want1 = 1.0 / (1.0 + math.exp(math.sqrt(0.96)))
    torch.testing.assert_close(q, torch.tensor([want0, want1]), rtol=0, atol=1e-6)
    want_scaled = math.exp(1.2) / (math.exp(1.2) + math.exp(-0.4))
    assert quality_from_prompts(fused, positive, negative, scale=2.0)[0].item() == pytest.approx(want_scaled, abs=1e-6)
    head = PromptQuality(3, scale=2.0, positive=positive, negative=negative)
    assert head(fused)[0].item() == pytest.approx(want_scaled, abs=1e-6)
    assert PromptQuality(3, learn_scale=True).log_scale.requires_grad


def test_plcc_loss():
    target = torch.tensor([1.0, 2.0, 3.0, 5.0, 8.0])
    assert plcc_loss(2.0 * target + 1.0, target).item() == pytest.approx(0.0, abs=1e-6)
    assert plcc_loss(-3.0 * target + 4.0, target).item() == pytest.approx(2.0, abs=1e-6)
    # pc = (−1, 0, 1), yc = (−1, 1, 0): Cov = 1/3, Var = 2/3 each → PLCC = 1/2.
    half = plcc_loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0]))
    assert half.item() == pytest.approx(0.5, abs=1e-6)
    pred = torch.full((4,), 0.5, requires_grad=True)
    loss = plcc_loss(pred, target[:4])
    loss.backward()
    assert loss.item() == pytest.approx(1.0) and torch.isfinite(pred.grad).all()


# -- ONNX --------------------------------------------------------------------------------------


def test_onnx_export_of_tcm_fusion_and_score_with_a_dynamic_batch(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = jitter(TinyDVLTA("text")).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        model.fusion.set_text(torch.randn(16, generator=g))
        model.quality.set_prompts(torch.randn(16, generator=g), torch.randn(16, generator=g))

    def inputs(batch):
        return (torch.randn(batch, 3, 4, 32, 32, generator=g), torch.randn(batch, 4, 16, 2, 2, generator=g),
                torch.randn(batch, 16, generator=g))

    names = ("frames", "clip_maps", "local")
    batch_dim = torch.export.Dim("batch", min=1, max=64)
    path = tmp_path / "dvlta.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs(2), str(path), input_names=list(names), output_names=["score", "fused"],
                          opset_version=18, dynamo=True, dynamic_shapes={n: {0: batch_dim} for n in names},
                          verbose=False)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in graph.graph.input)  # batch is symbolic
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        xs = inputs(batch)
        with torch.no_grad():
            score, fused = model(*xs)
        got_score, got_fused = sess.run(None, {n: x.numpy() for n, x in zip(names, xs)})
        assert got_score.shape == (batch,) and got_fused.shape == (batch, 16)
        assert abs(got_score - score.numpy()).max() <= 1e-5
        assert abs(got_fused - fused.numpy()).max() <= 1e-5
        if batch > 1:
            assert score.std() > 1e-3  # the score depends on the input
