"""The folds (qclip_engine.model.folded): each one equals what it replaces, and so does the whole folded model."""

import pytest
import torch
import torch.nn.functional as F
from conftest import trained_like, uint8_frames
from torch import nn

from qclip_engine.model.folded import FoldedQCLIP, fold, fold_scale_into_layernorm, merge_linears, scale_linear, text_constants

TOLERANCE = 1e-5  # fp32, max |Δscore| of the folds (docs/architecture.md, the graph contract)


def test_scale_folds_into_layernorm():
    torch.manual_seed(0)
    ln = nn.LayerNorm(24)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    x = torch.randn(7, 24) * 3 + 1
    before = {k: v.clone() for k, v in ln.state_dict().items()}
    folded = fold_scale_into_layernorm(ln, torch.tensor(-0.37))
    assert (folded(x) - (-0.37) * ln(x)).abs().max() < TOLERANCE
    assert all(torch.equal(before[k], v) for k, v in ln.state_dict().items())  # the original is untouched


def test_two_linears_merge_into_one():
    torch.manual_seed(0)
    first, second = nn.Linear(40, 16), nn.Linear(16, 16)
    x = torch.randn(9, 40)
    merged = merge_linears(first, second)
    assert (merged.in_features, merged.out_features) == (40, 16)
    assert (merged(x) - second(first(x))).abs().max() < TOLERANCE


def test_scale_folds_into_linear():
    torch.manual_seed(0)
    lin = nn.Linear(16, 12)
    x = torch.randn(5, 16)
    assert (scale_linear(lin, 2.5)(x) - 2.5 * lin(x)).abs().max() < TOLERANCE


def test_text_constants_are_the_normalised_prompt_features(model):
    model = trained_like(model)
    with torch.no_grad():
        expected = F.normalize(model.forward_text(), dim=-1)
    t = text_constants(model)
    assert t.shape == (5, model.embed_dim)
    assert torch.allclose(t.norm(dim=-1), torch.ones(5), atol=1e-6)
    assert (t - expected).abs().max() < TOLERANCE


@pytest.mark.parametrize("batch,frames", [(1, 1), (2, 3)])
def test_folded_model_equals_the_model(model, batch, frames):
    model = trained_like(model)
    folded = fold(model)
    pixels = uint8_frames(model, batch, frames)
    with torch.no_grad():
        expected_sims = model.level_sims(model.normalize(pixels))
        expected_score = model.score_from_sims(expected_sims)
        sims, score = folded(pixels)
    assert sims.shape == (batch, 5) and score.shape == (batch,)
    assert sims.dtype == score.dtype == torch.float32
    assert (score - expected_score).abs().max() < TOLERANCE
    assert (sims - expected_sims).abs().max() < TOLERANCE
    # the fold did not change the model it came from
    with torch.no_grad():
        assert torch.equal(model.score_from_sims(model.level_sims(model.normalize(pixels))), expected_score)


def test_folded_zero_shot_model_equals_the_zero_shot_model(model):
    model = trained_like(model)
    model.zero_shot = True
    folded = fold(model)
    assert folded.adapters is None and folded.pscma is None
    pixels = uint8_frames(model, 2, 2, seed=3)
    with torch.no_grad():
        expected = model(model.normalize(pixels))
        _, score = folded(pixels)
    assert (score - expected).abs().max() < TOLERANCE


def test_folded_model_holds_no_text_tower(pe_model):
    folded = FoldedQCLIP(trained_like(pe_model))
    text_params = {id(p) for p in pe_model.text_tower.source.parameters()} if hasattr(pe_model.text_tower.source, "parameters") else set()
    text_params |= {id(p) for block in pe_model.text_tower.blocks for p in block.parameters()}
    text_params.add(id(pe_model.text_tower.token_embedding.weight))
    held = {id(t) for t in list(folded.parameters()) + list(folded.buffers())}
    assert not held & text_params
    assert folded.text.shape == (5, pe_model.embed_dim)
