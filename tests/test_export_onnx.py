"""ONNX export: the graph contract (docs/architecture.md), parity in ONNX Runtime, no text tower, FP16, the CLI."""

import copy
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from qclip_engine.export.cli import main as export_main
from qclip_engine.model.folded import fold, reduced_precision
from qclip_engine.runtime.onnx_graph import INPUT, OUTPUTS, export_onnx
from qclip_engine.runtime.onnxruntime_backend import session
from qclip_engine import QCLIP, QCLIPConfig, save_artifact
from conftest import trained_like, uint8_frames

ONNX_TOLERANCE = 1e-4  # the graph contract: ONNX Runtime within 1e-4 of the torch module


@pytest.fixture(scope="module")
def exported(_models, tmp_path_factory):
    """Each test backbone, moved off its init, folded and exported once."""
    out = {}
    for name, model in _models.items():
        model = trained_like(copy.deepcopy(model))
        path = export_onnx(fold(model), tmp_path_factory.mktemp("onnx") / "model.onnx")
        out[name] = (model, path)
    return out


def small_model(context_tokens=3, **kw):
    torch.manual_seed(0)
    return trained_like(QCLIP(QCLIPConfig(backbone="PE-Core-T-16-384", pretrained=None, image_size=64,
                                          num_frames=2, context_tokens=context_tokens, **kw)))


@pytest.mark.parametrize("backbone", ["PE-Core-T-16-384", "ViT-B-32"])
@pytest.mark.parametrize("batch,frames", [(1, 1), (1, 8), (3, 1), (3, 8)])
def test_onnxruntime_matches_the_torch_model(exported, backbone, batch, frames):
    model, path = exported[backbone]
    pixels = uint8_frames(model, batch, frames, seed=batch * 10 + frames)
    with torch.no_grad():
        sims_ref = model.level_sims(model.normalize(pixels))
        score_ref = model.score_from_sims(sims_ref)
    sims, score = session(path).run(None, {INPUT: pixels.numpy()})
    assert sims.shape == (batch, 5) and score.shape == (batch,)
    assert np.abs(score - score_ref.numpy()).max() < ONNX_TOLERANCE
    assert np.abs(sims - sims_ref.numpy()).max() < ONNX_TOLERANCE


def test_graph_contract(exported):
    _, path = exported["PE-Core-T-16-384"]
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    (inp,) = graph.graph.input
    assert inp.name == INPUT and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert len(dims) == 5 and dims[0].dim_param and dims[1].dim_param  # B and F dynamic
    assert [d.dim_value for d in dims[2:]] == [384, 384, 3]
    outputs = {o.name: o.type.tensor_type for o in graph.graph.output}
    assert tuple(outputs) == OUTPUTS
    assert all(t.elem_type == onnx.TensorProto.FLOAT for t in outputs.values())
    assert [d.dim_value for d in outputs["level_sims"].shape.dim][1:] == [5]


def _initializer_shapes(path):
    return [tuple(i.dims) for i in onnx.load(str(path)).graph.initializer]


def test_graph_holds_no_text_tower_weights(exported):
    model, path = exported["PE-Core-T-16-384"]
    shapes = _initializer_shapes(path)
    vocab = model.text_tower.token_embedding.num_embeddings
    assert not [s for s in shapes if vocab in s], "token embedding in the graph"
    # Text-block weights: shapes found in the text blocks and nowhere in the visual side.
    visual_shapes = {tuple(p.shape) for p in model.visual_tower.visual.parameters()}
    visual_shapes |= {tuple(p.shape) for p in model.escma.parameters()} | {tuple(p.shape) for p in model.pscma.parameters()}
    text_only = {tuple(p.shape) for b in model.text_tower.blocks for p in b.parameters()} - visual_shapes
    assert text_only, "the test needs text-only shapes to look for"
    assert not [s for s in shapes if s in text_only]
    d = model.embed_dim
    assert (5, d) in shapes or (d, 5) in shapes  # the baked prompt features T (perhaps stored transposed)


def test_what_is_exported_does_not_depend_on_the_prompts():
    # The graph is traced from the folded module: its tensors are the graph's weights and constants
    # (test_graph_holds_no_text_tower_weights checks the graph itself). Two prompt lengths, the same
    # tensors by name and shape: the prompts reach the export as the constant T [5, D] alone.
    tensors = []
    for n in (1, 8):
        folded = fold(small_model(context_tokens=n))
        tensors.append(sorted((name, tuple(t.shape)) for name, t in folded.state_dict().items()))
    assert tensors[0] == tensors[1]
    assert ("text", (5, small_model().embed_dim)) in tensors[0]


def test_fp16_graph_keeps_layernorms_and_head_in_fp32(tmp_path):
    model = small_model()
    path = export_onnx(reduced_precision(fold(model)), tmp_path / "model.fp16.onnx")
    graph = onnx.load(str(path)).graph
    dtypes = {i.name: i.data_type for i in graph.initializer}
    assert sum(t == onnx.TensorProto.FLOAT16 for t in dtypes.values()) > 10  # the tower is FP16
    for node in graph.node:
        if node.op_type == "LayerNormalization":  # scale and bias initializers are FP32
            assert all(dtypes.get(i, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for i in node.input[1:])
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in graph.output)
    pixels = uint8_frames(model, 4, 2, seed=5)
    with torch.no_grad():
        ref = model(model.normalize(pixels)).numpy()
    _, score = session(path).run(None, {INPUT: pixels.numpy()})
    assert score.dtype == np.float32
    assert np.abs(score - ref).max() < 1e-3


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory):
    return save_artifact(small_model(), tmp_path_factory.mktemp("artifact") / "art")


def test_qclip_export_onnx_writes_graph_and_parity_report(small_artifact, tmp_path, capsys):
    assert export_main([str(small_artifact), "--engine", "onnx", "--fp16", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.fp16.onnx").is_file()
    report = json.loads((tmp_path / "parity_onnx.json").read_text())
    fp32 = report["results"]["model.onnx"]
    assert fp32["score"]["max_abs_diff"] < ONNX_TOLERANCE and fp32["srocc_vs_torch"] > 0.99
    assert fp32["frames"]["shape"] == [8, 2, 64, 64, 3] and "bigbuckbunny" in fp32["frames"]["source"]
    assert "model.fp16.onnx" in report["results"]
    assert "parity report" in capsys.readouterr().out


def test_qclip_export_trt_without_tensorrt_exits_2_with_one_line(small_artifact, tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed here")
    except Exception:
        pass
    proc = subprocess.run(
        [sys.executable, "-m", "qclip_engine.export.cli", str(small_artifact), "--engine", "trt", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TensorRT is not available" in lines[0]
    assert not (tmp_path / "model.plan").exists()


def test_the_one_time_cache_export_says_so_once_and_keeps_exporter_chatter_out(tmp_path, monkeypatch, caplog):
    import logging

    from qclip_engine.runtime.onnxruntime_backend import OnnxRuntimeBackend

    monkeypatch.setenv("QCLIP_CACHE", str(tmp_path))
    model = small_model()
    with caplog.at_level(logging.INFO):
        first = OnnxRuntimeBackend(model, "cpu")
        again = OnnxRuntimeBackend(model, "cpu")  # cached: nothing to say
    assert first.path == again.path and first.path.is_relative_to(tmp_path)
    said = [r for r in caplog.records if r.name == "qclip_engine.runtime"]
    assert len(said) == 1 and str(first.path.parent) in said[0].getMessage()
    assert not [r for r in caplog.records if r.name.startswith(("onnxscript", "onnx_ir", "torch.onnx"))]
