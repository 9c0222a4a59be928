"""DVLTA-VQA's Temporal Context Module blocks (qclip_engine/model/dvlta/tadaconv.py, cbam.py) against
per-frame loop references and values derived by hand on tiny inputs: TAdaConv2d (both calibrations,
the uncalibrated bias, the released initialisation), RouteFuncMLP (α ≡ 1 at init, the routing by
hand, BatchNorm over batch and time), CBAM (channel and spatial attention by hand, the sequential
order), and the three exported together to ONNX. Where QCLIP_TADACONV_SOURCE names a folder holding
the released ``tadaconv`` package, TAdaConv2d and RouteFuncMLP are also compared with the released
modules (``tadaconv/models/module_zoo/ops/tadaconv.py``, read from there at run time)."""

import importlib.util
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qclip_engine.model.dvlta.cbam import CBAM, ChannelAttention, SpatialAttention
from qclip_engine.model.dvlta.tadaconv import RouteFuncMLP, TAdaConv2d


def frame_loop(x, alpha, weight, bias, stride, padding, cal_dim):
    """The released formulation, one frame at a time: frame t of clip b convolved with the kernel
    ``alpha[b, :, t] · weight`` (on the input- or output-channel axis), then the bias added."""
    alpha = alpha.reshape(alpha.shape[0], alpha.shape[1], alpha.shape[2])
    out = []
    for b in range(x.shape[0]):
        frames = []
        for t in range(x.shape[2]):
            a = alpha[b, :, t]
            kernel = weight * (a[None, :, None, None] if cal_dim == "cin" else a[:, None, None, None])
            frames.append(F.conv2d(x[b, :, t][None], kernel, bias, stride, padding)[0])
        out.append(torch.stack(frames, dim=1))
    return torch.stack(out)


def jitter(module, scale=0.5, seed=0):
    """Non-trivial parameters and BatchNorm statistics (expand's zero weight included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g, dtype=m.running_mean.dtype))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g, dtype=m.running_var.dtype) + 0.5)
    return module


# -- TAdaConv2d --------------------------------------------------------------------------------


@pytest.mark.parametrize("cal_dim", ["cin", "cout"])
@pytest.mark.parametrize("bias", [True, False])
def test_tadaconv_with_alpha_one_is_the_plain_conv_on_every_frame(cal_dim, bias):
    torch.manual_seed(0)
    tada = TAdaConv2d(3, 4, 3, stride=2, padding=1, bias=bias, cal_dim=cal_dim).double()
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=bias).double()
    with torch.no_grad():
        conv.weight.copy_(tada.weight)
        if bias:
            conv.bias.copy_(tada.bias)
    x = torch.randn(2, 3, 4, 9, 10, dtype=torch.float64)
    alpha = torch.ones(2, 3 if cal_dim == "cin" else 4, 4, 1, 1, dtype=torch.float64)
    with torch.no_grad():
        out = tada(x, alpha)
        expected = torch.stack([conv(x[:, :, t]) for t in range(4)], dim=2)
    assert out.shape == (2, 4, 4, 5, 5)
    assert (out - expected).abs().max().item() <= 1e-12


def test_tadaconv_input_calibration_by_hand():
    tada = TAdaConv2d(2, 1, 1)  # 1 × 1 kernel: out = w0·x0 + w1·x1 + bias on every pixel
    with torch.no_grad():
        tada.weight.copy_(torch.tensor([1.0, 10.0]).view(1, 2, 1, 1))
        tada.bias.fill_(0.5)
    x = torch.tensor([[[1.0, 2.0], [5.0, 6.0]],  # channel 0: frame 0, frame 1 (H = 1, W = 2)
                      [[3.0, 4.0], [7.0, 8.0]]]).view(1, 2, 2, 1, 2)  # channel 1
    alpha = torch.ones(1, 2, 2, 1, 1)
    alpha[0, 0, 1] = 2.0  # input channel 0, frame 1 only
    # frame 0: 1·[1, 2] + 10·[3, 4] + 0.5 = [31.5, 42.5]; frame 1: 2·[5, 6] + 10·[7, 8] + 0.5 = [80.5, 92.5]
    expected = torch.tensor([[31.5, 42.5], [80.5, 92.5]]).view(1, 1, 2, 1, 2)
    with torch.no_grad():
        assert torch.allclose(tada(x, alpha), expected, rtol=0, atol=1e-5)
        assert torch.allclose(tada(x, alpha[..., 0, 0]), expected, rtol=0, atol=1e-5)  # [B, C, T] too


def test_tadaconv_output_calibration_by_hand_leaves_the_bias_alone():
    tada = TAdaConv2d(1, 2, 1, cal_dim="cout")
    with torch.no_grad():
        tada.weight.copy_(torch.tensor([1.0, 10.0]).view(2, 1, 1, 1))
        tada.bias.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[1.0, 2.0], [5.0, 6.0]]).view(1, 1, 2, 1, 2)  # frame 0, frame 1
    alpha = torch.ones(1, 2, 2, 1, 1)
    alpha[0, 1, 1] = 3.0  # output channel 1, frame 1 only
    # channel 0: x + 0.5 → [1.5, 2.5], [5.5, 6.5]
    # channel 1: 10·x − 1 → [9, 19], then 3·10·[5, 6] − 1 = [149, 179]
    # (a calibrated bias would give 3·(10·x − 1) = [147, 177])
    expected = torch.tensor([[[1.5, 2.5], [5.5, 6.5]], [[9.0, 19.0], [149.0, 179.0]]]).view(1, 2, 2, 1, 2)
    with torch.no_grad():
        assert torch.allclose(tada(x, alpha), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("cal_dim", ["cin", "cout"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 0), ((1, 3), (2, 1), (0, 1))])
def test_tadaconv_matches_a_per_frame_loop_of_calibrated_kernels(cal_dim, bias, kernel, stride, padding):
    torch.manual_seed(1)
    tada = jitter(TAdaConv2d(3, 5, kernel, stride=stride, padding=padding, bias=bias, cal_dim=cal_dim).double())
    x = torch.randn(2, 3, 3, 7, 8, dtype=torch.float64)
    alpha = torch.rand(2, 3 if cal_dim == "cin" else 5, 3, 1, 1, dtype=torch.float64) * 2 - 0.5
    with torch.no_grad():
        out = tada(x, alpha)
        expected = frame_loop(x, alpha, tada.weight, tada.bias, tada.stride, tada.padding, cal_dim)
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() <= 1e-12


def test_tadaconv_takes_the_released_triples_and_is_one_in_time():
    tada = TAdaConv2d(2, 3, [1, 3, 3], stride=[1, 2, 2], padding=[0, 1, 1], bias=False)
    assert (tada.kernel_size, tada.stride, tada.padding, tada.bias) == ((3, 3), (2, 2), (1, 1), None)
    assert tuple(tada.weight.shape) == (3, 2, 3, 3)
    for bad in (dict(kernel_size=[3, 3, 3]), dict(kernel_size=3, stride=[2, 1, 1]),
                dict(kernel_size=3, padding=[1, 0, 0])):
        with pytest.raises(ValueError, match="1 in time"):
            TAdaConv2d(2, 3, **bad)
    with pytest.raises(ValueError, match="cal_dim"):
        TAdaConv2d(2, 3, 3, cal_dim="cmid")


def test_tadaconv_init_counts_the_output_channels_in_the_fan_in():
    torch.manual_seed(0)
    tada = TAdaConv2d(16, 32, 3)
    bound = 1 / math.sqrt(32 * 16 * 3 * 3)  # released fan-in: C_out·C_in·kh·kw (a Conv2d's: C_in·kh·kw)
    assert tada.weight.abs().max().item() <= bound
    assert tada.weight.abs().max().item() > 0.99 * bound  # 4608 uniform draws reach the bound
    assert tada.bias.abs().max().item() <= bound


# -- RouteFuncMLP ------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False])
def test_route_func_starts_at_exactly_one(train):
    torch.manual_seed(0)
    route = RouteFuncMLP(8, 4).train(train)
    with torch.no_grad():
        alpha = route(torch.randn(3, 8, 5, 6, 7))
    assert tuple(alpha.shape) == (3, 8, 5, 1, 1)
    assert torch.equal(alpha, torch.ones_like(alpha))
    assert not route.expand.weight.any() and route.expand.bias is None
    assert route.reduce.out_channels == 2 and route.reduce.kernel_size == (3,) and route.reduce.bias is not None


def test_route_func_by_hand():
    route = RouteFuncMLP(2, 2, kernels=(3, 3), bn_eps=1e-5).eval()  # hidden width 1
    eps = 1e-5
    with torch.no_grad():
        route.context.weight.copy_(torch.tensor([[0.5, 0.0], [0.0, 0.0]]))
        route.context.bias.copy_(torch.tensor([0.0, -1.0]))
        route.reduce.weight.copy_(torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]))  # ch0 at t, ch1 at t+1
        route.reduce.bias.fill_(-2.0)
        route.bn.running_mean.fill_(1.0)
        route.bn.running_var.fill_(4.0)
        route.bn.weight.fill_(2.0)
        route.bn.bias.fill_(0.5)
        # ch0: 0.1·h[t], ch1: −0.2·h[t−1]
        route.expand.weight.copy_(torch.tensor([[[0.0, 0.1, 0.0]], [[-0.2, 0.0, 0.0]]]))
    x = torch.tensor([[[0.0, 2.0], [1.0, 3.0], [2.0, 4.0]],  # channel 0, frames 0..2 (H = 1, W = 2): means 1, 2, 3
                      [[-1.0, 1.0], [0.0, 0.0], [5.0, 7.0]]]).view(1, 2, 3, 1, 2)  # channel 1: means 0, 0, 6
    # clip means: ch0 12/6 = 2, ch1 12/6 = 2 → context: [0.5·2 + 0, −1] = [1, −1]
    # frames + context: ch0 [2, 3, 4], ch1 [−1, −1, 5]
    # reduce: ch0[t] + ch1[t+1] − 2 (zero past the end): [2 − 1 − 2, 3 + 5 − 2, 4 + 0 − 2] = [−1, 6, 2]
    r = torch.tensor([-1.0, 6.0, 2.0])
    h = torch.relu((r - 1) / math.sqrt(4 + eps) * 2 + 0.5)  # ≈ [0, 5.5, 1.5]
    expected = torch.stack([1 + 0.1 * h, 1 - 0.2 * torch.cat([torch.zeros(1), h[:2]])]).view(1, 2, 3, 1, 1)
    # ≈ ch0 [1, 1.55, 1.15], ch1 [1, 1, −0.1]
    with torch.no_grad():
        alpha = route(x)
    assert torch.allclose(alpha, expected, rtol=0, atol=1e-6)
    assert torch.allclose(alpha[0, :, :, 0, 0], torch.tensor([[1.0, 1.55, 1.15], [1.0, 1.0, -0.1]]), atol=1e-4)


def test_route_func_batch_norm_in_training_pools_batch_and_time():
    torch.manual_seed(0)
    route = jitter(RouteFuncMLP(4, 2).double()).train()
    x = torch.randn(3, 4, 5, 3, 4, dtype=torch.float64)
    with torch.no_grad():
        alpha = route(x)
        frames = x.mean(dim=(3, 4))
        clip = x.mean(dim=(2, 3, 4))
        pre = F.conv1d(frames + (clip @ route.context.weight.T + route.context.bias)[..., None],
                       route.reduce.weight, route.reduce.bias, padding=1)
        mean = pre.mean(dim=(0, 2), keepdim=True)
        var = pre.var(dim=(0, 2), unbiased=False, keepdim=True)
        normed = (pre - mean) / torch.sqrt(var + route.bn.eps) * route.bn.weight[:, None] + route.bn.bias[:, None]
        expected = 1 + F.conv1d(torch.relu(normed), route.expand.weight, padding=1)
    assert (alpha[..., 0, 0] - expected).abs().max().item() <= 1e-12


# -- CBAM --------------------------------------------------------------------------------------


def test_channel_attention_by_hand():
    att = ChannelAttention(2, reduction=2)  # MLP 2 → 1 → 2
    with torch.no_grad():
        att.mlp[0].weight.copy_(torch.tensor([[1.0, -1.0]]))
        att.mlp[0].bias.fill_(0.5)
        att.mlp[2].weight.copy_(torch.tensor([[2.0], [-1.0]]))
        att.mlp[2].bias.copy_(torch.tensor([0.5, 0.0]))
    x = torch.tensor([[[1.0, 3.0], [5.0, 11.0]],  # channel 0, frames 0 and 1: mean 5, max 11 (over T, H, W)
                      [[6.0, 2.0], [8.0, 8.0]]]).view(1, 2, 2, 1, 2)  # channel 1: mean 6, max 8
    # avg: 5 − 6 + 0.5 = −0.5 → ReLU 0 → [0.5, 0]; max: 11 − 8 + 0.5 = 3.5 → [7 + 0.5, −3.5]
    expected = torch.sigmoid(torch.tensor([8.0, -3.5])).view(1, 2, 1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(att(x), expected, rtol=0, atol=1e-6)


def test_spatial_attention_by_hand_is_per_frame():
    att = SpatialAttention(kernel_size=3)
    with torch.no_grad():
        att.conv.weight.zero_()
        att.conv.weight[0, 0, 1, 1] = 1.0  # mean map, same pixel
        att.conv.weight[0, 1, 1, 0] = 2.0  # max map, left neighbour
        att.conv.bias.fill_(-1.0)
    x = torch.tensor([[[1.0, 2.0, 3.0], [0.0, -2.0, 4.0]],  # channel 0: frame 0, frame 1 (H = 1, W = 3)
                      [[3.0, 0.0, -1.0], [2.0, -4.0, 0.0]]]).view(1, 2, 2, 1, 3)  # channel 1
    # frame 0: mean [2, 1, 1], max [3, 2, 3] → mean + 2·max[w−1] − 1 = [1, 6, 4]
    # frame 1: mean [1, −3, 2], max [2, −2, 4] → [0, 0, −3]
    expected = torch.sigmoid(torch.tensor([[1.0, 6.0, 4.0], [0.0, 0.0, -3.0]])).view(1, 1, 2, 1, 3)
    with torch.no_grad():
        assert torch.allclose(att(x), expected, rtol=0, atol=1e-6)


def test_spatial_attention_is_the_2d_conv_of_every_frame():
    torch.manual_seed(0)
    att = jitter(SpatialAttention(7).double())
    x = torch.randn(2, 5, 3, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        frames = [torch.cat([x[:, :, t].mean(1, keepdim=True), x[:, :, t].amax(1, keepdim=True)], 1) for t in range(3)]
        expected = torch.stack([torch.sigmoid(att.conv(f)) for f in frames], dim=2)
        assert (att(x) - expected).abs().max().item() <= 1e-12
    with pytest.raises(ValueError, match="odd"):
        SpatialAttention(4)


def test_cbam_is_spatial_after_channel():
    torch.manual_seed(0)
    cbam = jitter(CBAM(8, reduction=4, spatial_kernel=3).double(), scale=1.0)
    x = torch.randn(2, 8, 3, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        refined = x * cbam.channel(x)
        expected = refined * cbam.spatial(refined)
        out = cbam(x)
        both_from_x = x * cbam.channel(x) * cbam.spatial(x)  # eq. 7 read literally
    assert out.shape == x.shape
    assert (out - expected).abs().max().item() <= 1e-12
    assert (out - both_from_x).abs().max().item() > 1e-3


# -- ONNX --------------------------------------------------------------------------------------


class TinyTemporalContext(nn.Module):
    """Two calibrated convs (one per calibration) and CBAM, as in the Temporal Context Module."""

    def __init__(self):
        super().__init__()
        self.route1, self.tada1 = RouteFuncMLP(8, 4), TAdaConv2d(8, 8, 3, padding=1, bias=False)
        self.route2, self.tada2 = RouteFuncMLP(8, 4), TAdaConv2d(8, 8, 3, padding=1, cal_dim="cout")
        self.cbam = CBAM(8, reduction=4, spatial_kernel=7)

    def forward(self, x):
        x = self.tada1(x, self.route1(x))
        x = self.tada2(x, self.route2(x))
        return self.cbam(x)


def test_ventral_head_is_eq_9_then_the_mean_by_hand():
    from qclip_engine.model.dvlta.ventral import VentralHead

    head = jitter(VentralHead(channels=3, hidden=2, dim=4), seed=5)
    x = torch.randn(2, 3, 2, 2, 3, generator=torch.Generator().manual_seed(6))  # [N, C, T, H, W]
    w1, b1 = head.conv1.weight.reshape(2, 3), head.conv1.bias
    w2, b2 = head.conv2.weight.reshape(4, 2), head.conv2.bias
    by_hand = torch.zeros(2, 4)
    for n in range(2):
        positions = [x[n, :, t, i, j] for t in range(2) for i in range(2) for j in range(3)]
        for v in positions:  # a 1×1×1 conv is the same matrix at every position
            hidden = w1 @ v + b1
            gelu = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
            by_hand[n] += (w2 @ gelu + b2) / len(positions)
    torch.testing.assert_close(head(x), by_hand, rtol=1e-5, atol=1e-6)


def test_onnx_export_with_a_dynamic_batch_matches_torch(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = jitter(TinyTemporalContext(), scale=0.15).eval()  # outputs O(1), α in about 0.85 … 1.2
    path = tmp_path / "tcm.onnx"
    example = torch.randn(2, 8, 4, 12, 12)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["x"], output_names=["y"], opset_version=18,
                          dynamo=True, dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}},
                          verbose=False)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # batch is symbolic
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 8, 4, 12, 12)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = sess.run(None, {"x": x.numpy()})
        assert got.shape == expected.shape == (batch, 8, 4, 12, 12)
        assert abs(got - expected).max() <= 1e-5


# -- the released modules, where their source is given -----------------------------------------


@pytest.fixture(scope="module")
def released():
    """The released ``ops/tadaconv.py`` loaded alone: it imports only math and torch, and loading the
    file itself skips the package ``__init__`` chain (datasets, registries, the whole model zoo)."""
    source = os.environ.get("QCLIP_TADACONV_SOURCE")
    if not source:
        pytest.skip("QCLIP_TADACONV_SOURCE is not set (a folder holding the released tadaconv package)")
    path = Path(source) / "tadaconv" / "models" / "module_zoo" / "ops" / "tadaconv.py"
    if not path.is_file():
        pytest.skip(f"no released tadaconv.py at {path}")
    spec = importlib.util.spec_from_file_location("_released_tadaconv_ops", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def released_conv(released, ours):
    kh, kw = ours.kernel_size
    theirs = released.TAdaConv2d(ours.in_channels, ours.out_channels, [1, kh, kw], stride=[1, *ours.stride],
                                 padding=[0, *ours.padding], bias=ours.bias is not None, cal_dim=ours.cal_dim)
    theirs = theirs.to(ours.weight.dtype)
    with torch.no_grad():
        theirs.weight.copy_(ours.weight[None, None])
        if ours.bias is not None:
            theirs.bias.copy_(ours.bias[None, None])
    return theirs


def released_route(released, ours, ratio, kernels):
    theirs = released.RouteFuncMLP(ours.c_in, ratio, list(kernels), bn_eps=ours.bn.eps, bn_mmt=ours.bn.momentum)
    theirs = theirs.to(ours.context.weight.dtype)
    with torch.no_grad():
        theirs.g.weight.copy_(ours.context.weight[..., None, None, None])
        theirs.g.bias.copy_(ours.context.bias)
        theirs.a.weight.copy_(ours.reduce.weight[..., None, None])
        theirs.a.bias.copy_(ours.reduce.bias)
        theirs.b.weight.copy_(ours.expand.weight[..., None, None])
    theirs.bn.load_state_dict(ours.bn.state_dict())
    return theirs


def test_same_seed_draws_the_released_initial_parameters(released):
    for bias in (True, False):
        torch.manual_seed(3)
        theirs = released.TAdaConv2d(6, 10, [1, 3, 3], padding=[0, 1, 1], bias=bias)
        torch.manual_seed(3)
        ours = TAdaConv2d(6, 10, 3, padding=1, bias=bias)
        assert torch.equal(theirs.weight[0, 0], ours.weight)
        assert (theirs.bias is None) == (ours.bias is None)
        if bias:
            assert torch.equal(theirs.bias[0, 0], ours.bias)
    torch.manual_seed(4)
    theirs = released.RouteFuncMLP(8, 4, [3, 3])
    torch.manual_seed(4)
    ours = RouteFuncMLP(8, 4, (3, 3))
    assert torch.equal(theirs.g.weight.flatten(1), ours.context.weight)
    assert torch.equal(theirs.g.bias, ours.context.bias)
    assert torch.equal(theirs.a.weight.flatten(2), ours.reduce.weight) and torch.equal(theirs.a.bias, ours.reduce.bias)
    assert torch.equal(theirs.b.weight.flatten(2), ours.expand.weight)  # both zero


@pytest.mark.parametrize("cal_dim", ["cin", "cout"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), ((3, 1), (1, 2), (1, 0))])
def test_tadaconv_matches_released(released, cal_dim, bias, kernel, stride, padding):
    torch.manual_seed(5)
    for dtype, tolerance in ((torch.float64, 1e-6), (torch.float32, 1e-5)):  # float32: rounding of α·W vs α·x
        ours = TAdaConv2d(6, 4, kernel, stride=stride, padding=padding, bias=bias, cal_dim=cal_dim).to(dtype)
        theirs = released_conv(released, ours)
        x = torch.randn(2, 6, 3, 9, 10, dtype=dtype)
        alpha = torch.rand(2, 6 if cal_dim == "cin" else 4, 3, 1, 1, dtype=dtype) * 2
        with torch.no_grad():
            a, b = ours(x, alpha), theirs(x, alpha)
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= tolerance


@pytest.mark.parametrize("kernels", [(3, 3), (5, 1), (2, 3)])  # (2, 3): an even kernel lengthens T by one
def test_route_func_and_tadaconv_match_released(released, kernels):
    torch.manual_seed(6)
    for dtype, tolerance in ((torch.float64, 1e-6), (torch.float32, 1e-5)):
        route = jitter(RouteFuncMLP(8, 4, kernels).to(dtype), scale=0.3)
        conv = TAdaConv2d(8, 8, 3, padding=1, bias=False).to(dtype)
        their_route, their_conv = released_route(released, route, 4, kernels), released_conv(released, conv)
        x = torch.randn(3, 8, 4, 6, 7, dtype=dtype)
        with torch.no_grad():
            for train in (True, False, True):  # BN over the batch, then running statistics, then again
                route.train(train), their_route.train(train)
                alpha, their_alpha = route(x), their_route(x)
                assert alpha.shape == their_alpha.shape == (3, 8, 4 + (kernels[0] % 2 == 0), 1, 1)
                assert (alpha - their_alpha).abs().max().item() <= tolerance
                assert (route.bn.running_mean - their_route.bn.running_mean).abs().max().item() <= tolerance
                assert (route.bn.running_var - their_route.bn.running_var).abs().max().item() <= tolerance
                if kernels[0] % 2:
                    out, their_out = conv(x, alpha), their_conv(x, their_alpha)
                    assert (out - their_out).abs().max().item() <= tolerance
