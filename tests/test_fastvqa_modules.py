"""FAST-VQA's backbone and head (qclip_engine/model/fastvqa/swin3d.py, head.py) against values derived
by hand and against loop references written here: the fragment gate and the gated bias, shifted
window attention, patch merging, the head, the adapted windows and the parameter count. Where
QCLIP_FASTVQA_SOURCE names a folder holding the released ``fastvqa/models/*.py``, the whole
backbone and head are also compared with the released modules (read from there at run time)."""

import importlib.util
import itertools
import math
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qclip_engine.model.fastvqa.head import VQAHead
from qclip_engine.model.fastvqa.swin3d import (
    PatchMerging,
    SwinBlock3D,
    SwinTransformer3D,
    WindowAttention3D,
    adaptive_window_size,
    clamp_window,
    fragment_gate,
    nearest_source_index,
    relative_position_index,
    shift_mask,
)

TINY = dict(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def jitter(module, scale=0.05, seed=0):
    """Move every parameter off its init (the fragment tables start at zero) so all paths count."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


# -- 1. the fragment gate and the gated bias ----------------------------------------------------

# A 1×4×4 map, windows 1×2×2 shifted by (0, 1, 1), 2×2 fragments (the used window's h, w): the
# fragment of position (h, w) is (h // 2, w // 2); rolled by −1 the rows/columns read fragments
# 0, 1, 1, 0, so every window holds one token of each fragment: (0,0), (0,1), (1,0), (1,1) in
# window 0 and a permutation of them elsewhere, giving the same L1 matrix.
SHIFTED_GATE = [[0, 1, 1, 2],
                [1, 0, 2, 1],
                [1, 2, 0, 1],
                [2, 1, 1, 0]]

# One 1×4×4 window over 2×2 fragments: token (h, w) (row-major) is in fragment (h // 2, w // 2).
ONE_WINDOW_GATE = [[int(c) for c in row] for row in (
    "0011001111221122", "0011001111221122", "1100110022112211", "1100110022112211",
    "0011001111221122", "0011001111221122", "1100110022112211", "1100110022112211",
    "1122112200110011", "1122112200110011", "2211221111001100", "2211221111001100",
    "1122112200110011", "1122112200110011", "2211221111001100", "2211221111001100")]

# Table rows of window (1, 2, 2), tokens (0,0), (0,1), (1,0), (1,1): (Δh + 1)·3 + (Δw + 1), Δ = i − j.
INDEX_1x2x2 = [[4, 3, 1, 0],
               [5, 4, 2, 1],
               [7, 6, 4, 3],
               [8, 7, 5, 4]]


def test_fragment_gate_by_hand():
    gate = fragment_gate((1, 4, 4), (1, 2, 2), (0, 1, 1))
    assert gate.shape == (4, 4, 4)
    assert torch.equal(gate, torch.tensor([SHIFTED_GATE] * 4, dtype=torch.float32))
    # unshifted, each 2×2 window is one fragment: distance 0 everywhere
    assert torch.equal(fragment_gate((1, 4, 4), (1, 2, 2), (0, 0, 0)), torch.zeros(4, 4, 4))
    one = fragment_gate((1, 4, 4), (1, 4, 4), (0, 0, 0), fragments=(1, 2, 2))
    assert torch.equal(one, torch.tensor([ONE_WINDOW_GATE], dtype=torch.float32))


def test_nearest_index_rounds_as_interpolate():
    """The fragment coordinates follow F.interpolate's float32 rounding, not exact division."""
    differs_from_division = 0
    for n_in in range(1, 13):
        for n_out in range(1, 121):
            grid = torch.arange(n_in, dtype=torch.float32).view(1, 1, 1, 1, n_in)
            expected = F.interpolate(grid, size=(1, 1, n_out)).flatten().long().tolist()
            assert list(nearest_source_index(n_in, n_out)) == expected, (n_in, n_out)
            differs_from_division += expected != [i * n_in // n_out for i in range(n_out)]
    assert differs_from_division > 0  # the rounding matters for some sizes


def test_gated_bias_by_hand():
    assert relative_position_index((1, 2, 2)).tolist() == INDEX_1x2x2
    attn = WindowAttention3D(dim=4, window_size=(1, 2, 2), num_heads=2, frag_bias=True)
    rel = torch.arange(9.0)[:, None] + torch.tensor([[0.0, 100.0]])  # row r, head h: r + 100h
    frag = -10 * (torch.arange(9.0)[:, None] + 1) + torch.tensor([[0.0, 1000.0]])
    with torch.no_grad():
        attn.relative_position_bias_table.copy_(rel)
        attn.fragment_position_bias_table.copy_(frag)
    gate = fragment_gate((1, 4, 4), (1, 2, 2), (0, 1, 1))
    bias = attn.position_bias((1, 2, 2), gate)
    assert bias.shape == (4, 2, 4, 4)  # [nW, nH, N, N]
    for w, h, i, j in itertools.product(range(4), range(2), range(4), range(4)):
        r, g = INDEX_1x2x2[i][j], SHIFTED_GATE[i][j]
        assert bias[w, h, i, j].item() == rel[r, h].item() * g + frag[r, h].item() * (1 - g)
        if g == 0:  # same fragment: the fragment table alone
            assert bias[w, h, i, j].item() == frag[r, h].item()
        if g == 2:  # two fragments apart: 2·rel − frag
            assert bias[w, h, i, j].item() == 2 * rel[r, h].item() - frag[r, h].item()
    # no fragment table (the last stage): the plain relative bias, whatever the gate
    plain = WindowAttention3D(dim=4, window_size=(1, 2, 2), num_heads=2, frag_bias=False)
    assert "fragment_position_bias_table" not in dict(plain.named_parameters())
    with torch.no_grad():
        plain.relative_position_bias_table.copy_(rel)
    expected = rel[torch.tensor(INDEX_1x2x2)].permute(2, 0, 1)
    assert torch.equal(plain.position_bias((1, 2, 2), gate), expected)


def test_init_as_released():
    model = SwinTransformer3D(**TINY)
    attn = model.layers[0].blocks[0].attn
    assert torch.count_nonzero(attn.fragment_position_bias_table) == 0
    assert 0 < attn.relative_position_bias_table.std().item() < 0.04
    assert attn.relative_position_bias_table.abs().max().item() <= 2
    assert torch.count_nonzero(attn.qkv.bias) == 0 and torch.count_nonzero(attn.proj.bias) == 0
    assert model.layers[0].downsample.norm.weight.eq(1).all() and model.norm.bias.eq(0).all()
    # the index is a buffer (moves with the model) but not saved: released checkpoints carry it, we rebuild it
    assert "layers.0.blocks.0.attn.relative_position_index" in dict(model.named_buffers())
    assert not any(k.endswith("relative_position_index") for k in model.state_dict())


# -- 2. shifted-window attention against a per-window loop ----------------------------------------

def reference_attention_branch(block, x, window, shift):
    """The block's attention branch, one window, one head, one token pair at a time. Windows are
    taken on the map rolled by −shift; a token's source is (p + shift) mod padded. Two tokens may
    attend freely iff neither or both wrapped around, per axis (else −100); the bias row is
    computed from the offset with the configured window's strides; fragment coordinates come
    from interpolating a (1, wh, ww) grid of ids to the padded size."""
    attn = block.attn
    b_, size, c = x.shape[0], x.shape[1:4], x.shape[-1]
    padded = [-(-s // w) * w for s, w in zip(size, window)]
    y = block.norm1(x)
    frag_ids = []
    for axis, n in enumerate((1, window[1], window[2])):
        grid = torch.arange(n, dtype=torch.float32).view(1, 1, 1, 1, n)
        frag_ids.append(F.interpolate(grid, size=(1, 1, padded[axis])).flatten().long().tolist())
    cd, ch, cw = attn.window_size
    heads, hd = attn.num_heads, c // attn.num_heads
    rel, frag = attn.relative_position_bias_table, attn.fragment_position_bias_table
    out = torch.zeros(b_, *padded, c)
    for b in range(b_):
        for block_pos in itertools.product(*(range(p // w) for p, w in zip(padded, window))):
            local = list(itertools.product(*(range(w) for w in window)))
            rolled = [[bp * w + t for bp, w, t in zip(block_pos, window, tok)] for tok in local]
            src = [tuple((p + s) % n for p, s, n in zip(pos, shift, padded)) for pos in rolled]
            wrapped = [tuple(p + s >= n for p, s, n in zip(pos, shift, padded)) for pos in rolled]
            feats = torch.stack([y[(b, *s)] if all(v < n for v, n in zip(s, size)) else torch.zeros(c) for s in src])
            q, k, v = (feats @ attn.qkv.weight.T + attn.qkv.bias).split(c, dim=-1)
            heads_out = []
            for h in range(heads):
                sl = slice(h * hd, (h + 1) * hd)
                logits = torch.empty(len(local), len(local))
                for i, j in itertools.product(range(len(local)), repeat=2):
                    dd, dh, dw = (a - b2 for a, b2 in zip(local[i], local[j]))
                    row = (dd + cd - 1) * (2 * ch - 1) * (2 * cw - 1) + (dh + ch - 1) * (2 * cw - 1) + (dw + cw - 1)
                    bias = rel[row, h]
                    if frag is not None:
                        g = sum(abs(frag_ids[a][src[i][a]] - frag_ids[a][src[j][a]]) for a in range(3))
                        bias = bias * g + frag[row, h] * (1 - g)
                    mask = 0.0 if wrapped[i] == wrapped[j] else -100.0
                    logits[i, j] = (q[i, sl] * hd ** -0.5) @ k[j, sl] + bias + mask
                heads_out.append(logits.softmax(-1) @ v[:, sl])
            res = torch.cat(heads_out, -1) @ attn.proj.weight.T + attn.proj.bias
            for s, r in zip(src, res):
                out[(b, *s)] = r
    return out[:, :size[0], :size[1], :size[2]]


@pytest.mark.parametrize("config_window, window, shift, size, frag", [
    ((2, 3, 3), (2, 2, 3), (1, 1, 1), (3, 5, 4), True),  # a used window smaller than the tables' (sliced index)
    ((8, 7, 7), (1, 2, 2), (4, 3, 3), (2, 5, 6), True),  # shift ≥ window, as a small input makes it
    ((2, 3, 3), (2, 3, 3), (1, 1, 0), (4, 4, 3), False),  # no fragment table, shift on two axes
])
def test_block_matches_window_loop(config_window, window, shift, size, frag):
    torch.manual_seed(0)
    block = jitter(SwinBlock3D(dim=8, num_heads=2, window_size=config_window, frag_bias=frag), 0.3).eval()
    x = torch.randn(2, *size, 8)
    with torch.no_grad():
        expected = reference_attention_branch(block, x, window, shift)
        got = block.attention_branch(x, window, shift)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        # the whole block: attention residual, then the MLP residual
        mid = x + expected
        mlp = block.mlp
        ln2 = layer_norm(mid, block.norm2.weight, block.norm2.bias)
        full = mid + gelu(ln2 @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias
        torch.testing.assert_close(block(x, window, shift), full, atol=1e-5, rtol=1e-5)


def test_shift_mask_regions():
    # Hp = 4, window 2, shift 1: rolled rows 0..3 come from 1, 2, 3, 0; the last window mixes
    # row 3 (unwrapped) and row 0 (wrapped): −100 between them, nothing elsewhere.
    mask = shift_mask((1, 4, 1), (1, 2, 1), (0, 1, 0))
    assert mask.tolist() == [[[0, 0], [0, 0]], [[0, -100], [-100, 0]]]
    # no shift anywhere: one region
    assert torch.count_nonzero(shift_mask((2, 4, 4), (1, 2, 2), (0, 0, 0))) == 0


# -- 3. patch merging ------------------------------------------------------------------------------

def merging_input():
    """[1, D=2, H=3, W=3, C=2]: channel 0 is 100d + 10h + w + 1, channel 1 its negative."""
    d, h, w = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(3), indexing="ij")
    v = (100 * d + 10 * h + w + 1).float()
    return torch.stack([v, -v], -1)[None]


# Per output (h, w) of frame 0: channel 0 of the slices (0,0), (1,0), (0,1), (1,1) of the 2×2
# neighbourhood, with the odd row/column padded by zeros.
MERGED_FRAME0 = [[[1, 11, 2, 12], [3, 13, 0, 0]],
                 [[21, 0, 22, 0], [23, 0, 0, 0]]]


def test_patch_merging_by_hand():
    x = merging_input()
    merge = PatchMerging(dim=2)
    merge.norm = nn.Identity()
    with torch.no_grad():
        merge.reduction.weight.zero_()
        for out, cat_pos in enumerate((0, 2, 4, 6)):  # channel 0 of each slice
            merge.reduction.weight[out, cat_pos] = 1
        got = merge(x)
    assert got.shape == (1, 2, 2, 2, 4)  # time kept, H and W halved (rounded up)
    frame0 = torch.tensor(MERGED_FRAME0, dtype=torch.float32)
    assert torch.equal(got[0, 0], frame0)
    assert torch.equal(got[0, 1], torch.where(frame0 != 0, frame0 + 100, frame0))

    torch.manual_seed(0)
    merge = jitter(PatchMerging(dim=2), 0.5)
    cat = torch.zeros(2, 2, 2, 8)  # the 4C vector, channel pairs (v, −v) per slice
    for d in range(2):
        vals = torch.tensor(MERGED_FRAME0, dtype=torch.float32)
        vals = torch.where(vals != 0, vals + 100 * d, vals)
        cat[d, ..., 0::2], cat[d, ..., 1::2] = vals, -vals
    expected = layer_norm(cat, merge.norm.weight, merge.norm.bias) @ merge.reduction.weight.T
    with torch.no_grad():
        torch.testing.assert_close(merge(x)[0], expected, atol=1e-5, rtol=1e-5)


# -- 4. the head ---------------------------------------------------------------------------------

def test_head_by_hand():
    torch.manual_seed(0)
    head = jitter(VQAHead(in_channels=5, hidden_channels=3, dropout=0.5), 0.5)
    x = torch.randn(2, 5, 2, 3, 4)
    w1, b1 = head.fc_hid.weight.flatten(1), head.fc_hid.bias
    w2, b2 = head.fc_last.weight.flatten(1), head.fc_last.bias
    hidden = gelu(torch.einsum("oc,bcdhw->bodhw", w1, x) + b1[:, None, None, None])
    expected = torch.einsum("oc,bcdhw->bodhw", w2, hidden) + b2[:, None, None, None]
    head.eval()
    with torch.no_grad():
        got = head(x)
        assert got.shape == (2, 1, 2, 3, 4)  # a map, not pooled
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(head(x), got)  # eval: no dropout
        head.train()
        assert not torch.allclose(head(x), got)  # training: dropout on
    assert sorted(head.state_dict()) == ["fc_hid.bias", "fc_hid.weight", "fc_last.bias", "fc_last.weight"]


# -- 5. adapted windows --------------------------------------------------------------------------

@pytest.mark.parametrize("input_size, windows, shifts", [
    ((32, 224, 224), [(8, 7, 7)] * 4, [(4, 3, 3)] * 3 + [(4, 0, 0)]),
    ((16, 224, 224), [(4, 7, 7)] * 4, [(4, 3, 3)] * 3 + [(4, 0, 0)]),  # shift from the configured (8, 7, 7)
    ((32, 160, 160), [(8, 5, 5)] * 4, [(4, 3, 3)] * 3 + [(4, 0, 0)]),
    ((4, 64, 64), [(1, 2, 2)] * 4, [(4, 3, 3)] * 3 + [(4, 0, 0)]),
])
def test_adaptive_windows(input_size, windows, shifts):
    model = SwinTransformer3D(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1)).eval()
    geometry = model.stage_geometry(input_size)
    assert [g["window"] for g in geometry] == windows
    assert [g["shift"] for g in geometry] == shifts
    if input_size[1] <= 64:  # and forward uses them: record the window every attention gets
        seen = []
        for block in (b for layer in model.layers for b in layer.blocks):
            block.attn.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[1])))
        with torch.no_grad():
            out = model(torch.randn(1, 3, *input_size))
        assert seen == [w for w in windows for _ in range(2)]
        assert out.shape == (1, 64, input_size[0] // 2, input_size[1] // 32, input_size[2] // 32)


def test_window_helpers():
    assert adaptive_window_size((8, 7, 7), (32, 224, 224)) == (8, 7, 7)
    assert adaptive_window_size((8, 7, 7), (16, 160, 100)) == (4, 5, 3)  # floored
    assert clamp_window((16, 7, 9), (8, 7, 7), (4, 3, 3)) == ((8, 7, 7), (4, 0, 3))
    assert clamp_window((3, 2, 9), (8, 7, 7), (4, 3, 3)) == ((3, 2, 7), (0, 0, 3))
    with pytest.raises(ValueError):
        SwinTransformer3D(**TINY).input_window((2, 64, 64))  # 8·2/32 floors to 0


# -- 7. parameter count --------------------------------------------------------------------------

def expected_parameters(embed_dim=96, depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=(8, 7, 7),
                        frag=(True, True, True, False), patch=(2, 4, 4), mlp_ratio=4):
    table_rows = math.prod(2 * w - 1 for w in window)
    total = 3 * embed_dim * math.prod(patch) + embed_dim + 2 * embed_dim  # conv + its norm
    for i, depth in enumerate(depths):
        c = embed_dim * 2 ** i
        block = (2 * c  # norm1
                 + 3 * c * c + 3 * c + c * c + c  # qkv, proj
                 + table_rows * heads[i] * (2 if frag[i] else 1)  # relative (+ fragment) table
                 + 2 * c  # norm2
                 + c * mlp_ratio * c + mlp_ratio * c + mlp_ratio * c * c + c)  # fc1, fc2
        total += depth * block
        if i < len(depths) - 1:
            total += 2 * 4 * c + 4 * c * 2 * c  # merging norm + reduction
    return total + 2 * embed_dim * 2 ** (len(depths) - 1)  # final norm


def test_parameter_count():
    model = SwinTransformer3D()
    assert sum(p.numel() for p in model.parameters()) == expected_parameters()
    variant = SwinTransformer3D(window_size=(4, 4, 4), frag_biases=(False,) * 4)
    assert sum(p.numel() for p in variant.parameters()) == expected_parameters(window=(4, 4, 4), frag=(False,) * 4)


# -- 6. the released modules, where their source is given -----------------------------------------

def _einops_stub():
    """``rearrange`` for the pure permutations the released backbone uses."""
    def rearrange(x, pattern):
        lhs, rhs = (side.split() for side in pattern.split("->"))
        return x.permute(*[lhs.index(name) for name in rhs])
    return types.SimpleNamespace(rearrange=rearrange)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    source = os.environ.get("QCLIP_FASTVQA_SOURCE")
    if not source:
        pytest.skip("QCLIP_FASTVQA_SOURCE is not set (a folder holding the released fastvqa/models/*.py)")
    models = Path(source) / "fastvqa" / "models"
    if not (models / "swin_backbone.py").is_file() or not (models / "head.py").is_file():
        pytest.skip(f"no released swin_backbone.py/head.py under {models}")
    pytest.importorskip("timm")
    pytest.importorskip("torchvision")
    work = tmp_path_factory.mktemp("fastvqa_released")
    loaded = {}
    stubbed = "einops" not in sys.modules and importlib.util.find_spec("einops") is None
    if stubbed:
        sys.modules["einops"] = _einops_stub()
    try:
        for name in ("swin_backbone", "head"):
            shutil.copy(models / f"{name}.py", work / f"{name}.py")
            spec = importlib.util.spec_from_file_location(f"_released_fastvqa_{name}", work / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[name] = module
    finally:
        if stubbed:
            del sys.modules["einops"]
    return loaded


def load_into_released(released, ours, head, kwargs):
    theirs = released["swin_backbone"].SwinTransformer3D(use_checkpoint=False, **kwargs)
    theirs.eval()  # its train() returns None
    result = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.endswith("attn.relative_position_index") for k in result.missing_keys)
    for name, buffer in theirs.named_buffers():  # what a converter checks before dropping them
        attn = ours.get_submodule(name.rsplit(".", 1)[0])
        assert torch.equal(buffer, relative_position_index(attn.window_size))
    their_head = released["head"].VQAHead(in_channels=ours.num_features, hidden_channels=head.hidden_channels)
    their_head.load_state_dict(head.state_dict(), strict=True)
    return theirs, their_head.eval()


@pytest.mark.parametrize("variant, shape", [
    ("grpb", (2, 3, 4, 64, 64)),  # window (1, 2, 2)
    ("grpb", (1, 3, 8, 96, 80)),  # (2, 3, 2): shifts ≥ windows, odd merges, padded windows
    ("grpb", (1, 3, 5, 70, 90)),  # sizes that are not multiples of the patch
    ("m", (1, 3, 16, 128, 128)),  # FAST-VQA-M: window (4, 4, 4), no fragment tables
])
def test_matches_released(released, variant, shape):
    kwargs = dict(TINY) if variant == "grpb" else dict(TINY, window_size=(4, 4, 4), frag_biases=(False,) * 4)
    torch.manual_seed(0)
    ours = jitter(SwinTransformer3D(**kwargs)).eval()
    head = jitter(VQAHead(ours.num_features, 16), 0.2).eval()
    # the released constructor wants lists per stage and a tuple window
    their_kwargs = {k: list(v) if k != "window_size" and isinstance(v, tuple) else v for k, v in kwargs.items()}
    theirs, their_head = load_into_released(released, ours, head, their_kwargs)
    x = torch.randn(shape)
    with torch.no_grad():
        ours_feat, theirs_feat = ours(x), theirs(x)
        assert ours_feat.shape == theirs_feat.shape
        assert (ours_feat - theirs_feat).abs().max().item() <= 1e-5
        assert (head(ours_feat) - their_head(theirs_feat)).abs().max().item() <= 1e-5


def test_parameter_count_matches_released(released):
    theirs = released["swin_backbone"].SwinTransformer3D(use_checkpoint=False)
    assert sum(p.numel() for p in theirs.parameters()) == expected_parameters()
    assert sorted(theirs.state_dict()) == sorted(
        list(SwinTransformer3D().state_dict()) + [n for n, _ in theirs.named_buffers()])
