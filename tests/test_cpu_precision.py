"""Reduced precision on the CPU: BF16 (torch) and INT8 (ONNX Runtime) backends, their drift against
FP32, the INT8 graph's contract, and ``auto`` choosing by measurement among what the CPU allows."""

import json

import numpy as np
import onnx
import pytest
from conftest import tiny_model, uint8_frames

from qclip_engine import defaults, save_artifact
from qclip_engine.engine import QualityEngine
from qclip_engine.export.cli import main as export_main
from qclip_engine.runtime import create_backend
from qclip_engine.runtime import cpu_choice
from qclip_engine.runtime.cpu_choice import Candidate, candidates, choose_cpu_backend
from qclip_engine.runtime.cpu_features import CpuIdentity, parse_cpuinfo
from qclip_engine.runtime.onnx_graph import INPUT, OUTPUTS
from qclip_engine.runtime.onnxruntime_backend import OnnxRuntimeBackend
from qclip_engine.runtime.quantize import head_nodes
from qclip_engine.runtime.torch_backend import TorchBackend

# Stated tolerances on the score (cosine-similarity scale) against FP32 on fixed frames: BF16
# keeps 8 bits of mantissa in the tower (LayerNorms and head in FP32); INT8 quantizes the
# tower's weights per channel and its activations per call.
BF16_SCORE_ATOL = 1e-3
INT8_SCORE_ATOL = 2e-3

AMX = CpuIdentity("Intel Xeon (AMX)", frozenset({"amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni"}))
ZEN4 = CpuIdentity("AMD EPYC (Zen 4)", frozenset({"avx512_bf16", "avx512_vnni", "avx512f"}))
PLAIN = CpuIdentity("old x86", frozenset({"avx2"}))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """The tiny artifact exported with --int8: model.onnx, model.int8.onnx, precision.json."""
    artifact = save_artifact(model, tmp_path_factory.mktemp("int8") / "artifact")
    assert export_main([str(artifact), "--engine", "onnx", "--int8"]) == 0
    return artifact


def test_each_precision_runs_and_agrees_with_fp32_within_its_tolerance(model, exported):
    frames = uint8_frames(model, 3, model.config.num_frames).numpy()
    _, fp32 = TorchBackend(model, "cpu").run(frames)
    _, bf16 = TorchBackend(model, "cpu", precision="bf16").run(frames)
    _, ort32 = OnnxRuntimeBackend(None, "cpu", graph=exported / "model.onnx").run(frames)
    int8_backend = OnnxRuntimeBackend(model, "cpu", artifact_dir=exported, precision="int8")
    assert int8_backend.path == exported / "model.int8.onnx" and int8_backend.label == "onnxruntime-int8"
    _, int8 = int8_backend.run(frames)
    np.testing.assert_allclose(ort32, fp32, atol=1e-4)
    assert np.abs(bf16 - fp32).max() <= BF16_SCORE_ATOL
    assert np.abs(int8 - fp32).max() <= INT8_SCORE_ATOL
    assert not np.array_equal(bf16, fp32) and not np.array_equal(int8, ort32)  # really reduced


def test_the_int8_graph_keeps_the_contract_and_the_head_in_fp32(model, exported):
    graph = onnx.load(str(exported / "model.int8.onnx"))
    [inp] = graph.graph.input
    assert inp.name == INPUT and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_param  # B and F dynamic
    assert [o.name for o in graph.graph.output] == list(OUTPUTS)
    ops = [n.op_type for n in graph.graph.node]
    assert "MatMulInteger" in ops and "LayerNormalization" in ops and "Softmax" in ops
    by_name = {n.name: n for n in graph.graph.node}
    fp32 = onnx.load(str(exported / "model.onnx")).graph
    head = head_nodes(fp32)
    assert head and all(by_name[name].op_type not in ("MatMulInteger", "DynamicQuantizeLinear") for name in head)
    assert by_name[head[0]].op_type == "ReduceMean" and any(by_name[name].op_type == "MatMul" for name in head)
    # Every other product with a constant weight is INT8 (the tower, the adapters, the projection).
    weights = {i.name for i in fp32.initializer}
    products = [n for n in fp32.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights and n.name not in head]
    assert ops.count("MatMulInteger") >= len(products) > 10
    backend = OnnxRuntimeBackend(None, "cpu", graph=exported / "model.int8.onnx")
    for batch, count in ((1, 2), (3, 5)):  # any batch, any frame count
        sims, score = backend.run(uint8_frames(model, batch, count).numpy())
        assert sims.shape == (batch, 5) and score.shape == (batch,)


def test_export_records_the_drift_of_each_precision(exported):
    drift = json.loads((exported / "precision.json").read_text())
    assert drift["videos"] >= 20
    for precision, engine in (("bf16", "torch"), ("int8", "onnxruntime")):
        d = drift["precisions"][precision]
        assert d["engine"] == engine and -1 <= d["srocc"] <= 1 and d["max_abs_score_diff"] >= 0
        assert d["within_limit"] == (d["srocc"] >= defaults.PRECISION_MIN_SROCC[precision])


def test_cpu_flags_decide_the_candidates():
    labels = lambda cpu, **kw: [c.label for c in candidates(cpu, **kw)[0]]  # noqa: E731
    everything = ["torch-fp32", "onnxruntime-fp32", "torch-bf16", "onnxruntime-int8"]
    assert labels(AMX) == everything and labels(ZEN4) == everything
    assert labels(PLAIN) == ["torch-fp32", "onnxruntime-fp32"]
    assert labels(CpuIdentity("bf16 only", frozenset({"avx512_bf16"}))) == ["torch-fp32", "onnxruntime-fp32", "torch-bf16"]
    assert labels(AMX, engine="torch") == ["torch-fp32", "torch-bf16"]
    assert labels(AMX, onnxruntime=False) == ["torch-fp32", "torch-bf16"]
    assert labels(PLAIN, precision="bf16") == ["torch-bf16"]  # asked for by name: allowed, emulated
    _, why = candidates(PLAIN)
    assert "AVX-512-BF16" in why["torch-bf16"] and "VNNI" in why["onnxruntime-int8"]
    text = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 amx_bf16 amx_int8 avx512_vnni\n"
    cpu = parse_cpuinfo(text)
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+" and cpu.bf16 and cpu.int8 and "fpu" not in cpu.flags


class Built:
    """A stand-in backend: ``choose_cpu_backend`` only builds, times and returns it."""

    def __init__(self, candidate: Candidate):
        self.label = candidate.label

    def run(self, frames):
        return None


def _drift(path, bf16, int8, fingerprint=None):
    """An artifact directory whose precision.json records these SROCCs (for ``fingerprint``'s model)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / cpu_choice.DRIFT_FILE).write_text(json.dumps({"model_fingerprint": fingerprint, "precisions": {
        "bf16": {"srocc": bf16}, "int8": {"srocc": int8}}}))
    return path


def _choose(model, artifact, cpu, speeds, build=Built):
    """The label ``auto`` picks with these frames/s per candidate, and which were timed."""
    timed = []

    def timer(run, frames):
        timed.append(run.__self__.label)
        return speeds[run.__self__.label]

    chosen = choose_cpu_backend(model, build, artifact_dir=artifact, cpu=cpu, timer=timer)
    return chosen.label, timed


def test_auto_takes_the_fastest_eligible_candidate_and_caches_the_choice(model, tmp_path, monkeypatch):
    monkeypatch.setenv("QCLIP_CACHE", str(tmp_path / "cache"))
    speeds = {"torch-fp32": 5.0, "onnxruntime-fp32": 10.0, "torch-bf16": 30.0, "onnxruntime-int8": 40.0}
    mine = cpu_choice.model_fingerprint(model)
    both = _drift(tmp_path / "both", bf16=0.999, int8=0.995, fingerprint=mine)
    label, timed = _choose(model, both, AMX, speeds)
    assert label == "onnxruntime-int8" and sorted(set(timed)) == sorted(speeds)
    label, timed = _choose(model, both, AMX, speeds)  # measured once per machine and model
    assert label == "onnxruntime-int8" and timed == []
    # INT8 outside its drift limit is never chosen, however fast.
    label, timed = _choose(model, _drift(tmp_path / "int8_drifts", bf16=0.999, int8=0.95, fingerprint=mine), AMX, speeds)
    assert label == "torch-bf16" and "onnxruntime-int8" not in timed
    # Unmeasured drift, drift measured for another model, an unmeasurable (NaN) SROCC: FP32 only.
    assert _choose(model, None, AMX, speeds)[0] == "onnxruntime-fp32"
    assert _choose(model, _drift(tmp_path / "other", bf16=1.0, int8=1.0, fingerprint="another"), AMX, speeds)[0] \
        == "onnxruntime-fp32"
    assert _choose(model, _drift(tmp_path / "nan", bf16=float("nan"), int8=None, fingerprint=mine), AMX, speeds)[0] \
        == "onnxruntime-fp32"
    # A CPU without the instructions: FP32 only.
    assert _choose(model, _drift(tmp_path / "plain", bf16=1.0, int8=1.0, fingerprint=mine), PLAIN, speeds)[0] \
        == "onnxruntime-fp32"
    # Where ONNX Runtime is slower than torch on this CPU, torch wins.
    slow_ort = speeds | {"onnxruntime-fp32": 4.0, "onnxruntime-int8": 4.5}
    assert _choose(model, both, ZEN4, slow_ort)[0] == "torch-bf16"


def test_a_candidate_that_fails_and_an_unwritable_cache_do_not_stop_the_choice(model, tmp_path, monkeypatch):
    blocked = tmp_path / "cache_is_a_file"
    blocked.write_text("")
    monkeypatch.setenv("QCLIP_CACHE", str(blocked))  # mkdir under it fails: nothing can be cached
    speeds = {"torch-fp32": 5.0, "onnxruntime-fp32": 10.0, "torch-bf16": 30.0, "onnxruntime-int8": 40.0}
    artifact = _drift(tmp_path / "a", bf16=0.999, int8=0.999, fingerprint=cpu_choice.model_fingerprint(model))

    def build(candidate):
        if candidate.label == "onnxruntime-int8":
            raise RuntimeError("quantization failed")
        return Built(candidate)

    label, timed = _choose(model, artifact, AMX, speeds, build=build)
    assert label == "torch-bf16" and "onnxruntime-int8" not in timed


def test_gpu_auto_is_unchanged(model, tmp_path, monkeypatch):
    from qclip_engine.runtime import base

    built = []
    monkeypatch.setattr(base, "resolve_device", lambda device: "cuda")
    monkeypatch.setattr(base, "_build", lambda model, engine, device, artifact, precision, **kw: built.append(
        (engine, device, precision, kw["torch_mode"])) or Built(Candidate(engine, precision or "fp16")))
    create_backend(model, "auto", "cuda", artifact_dir=tmp_path, precision="auto")
    create_backend(model, "onnxruntime", "cuda")
    create_backend(model, "torch", "cuda", torch_mode="cuda_graphs", batch=8)
    assert built == [("torch", "cuda", None, "eager"), ("onnxruntime", "cuda", None, "eager"),
                     ("torch", "cuda", None, "cuda_graphs")]  # None: the GPU backends' FP16


def test_engine_results_and_create_backend_report_the_backend(model, tmp_path, monkeypatch):
    monkeypatch.setenv("QCLIP_CACHE", str(tmp_path / "cache"))
    assert create_backend(model, "torch", "cpu").label == "torch-fp32"  # no drift record: FP32
    assert create_backend(model, "torch", "cpu", precision="bf16").label == "torch-bf16"
    with pytest.raises(ValueError, match="BF16 on the CPU runs in the torch backend"):
        create_backend(model, "onnxruntime", "cpu", precision="bf16")
    with pytest.raises(ValueError, match="the CPU backends are"):
        create_backend(model, "auto", "cpu", precision="fp16")
    engine = QualityEngine(model=model, engine="torch", device="cpu", precision="bf16", batch=2)
    result = engine.run_batch([engine.sample_frames(uint8_frames(model, 1, 6)[0].numpy())])[0]
    assert result.backend == "torch-bf16" and result.to_record()["backend"] == "torch-bf16"


def test_a_plain_export_removes_an_earlier_int8_graph_and_drift_record(tmp_path, capsys):
    from qclip_engine.export.cli import _remove_stale_int8

    for name in ("model.int8.onnx", cpu_choice.DRIFT_FILE, "model.onnx"):
        (tmp_path / name).write_text("x")
    _remove_stale_int8(tmp_path)  # what qclip-export without --int8 does before writing model.onnx
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert "removed" in capsys.readouterr().out


def test_candidates_are_timed_beside_the_engines_decoding_threads(model, tmp_path, monkeypatch):
    import threading

    monkeypatch.setenv("QCLIP_CACHE", str(tmp_path / "cache"))
    seen = []

    def timer(run, frames):  # what runs while a candidate is timed
        seen.append(sum(t.name == "qclip-load" and t.is_alive() for t in threading.enumerate()))
        return {"torch-fp32": 1.0, "onnxruntime-fp32": 2.0}[run.__self__.label]

    chosen = choose_cpu_backend(model, Built, artifact_dir=None, cpu=PLAIN, timer=timer, decode_workers=2)
    assert chosen.label == "onnxruntime-fp32"
    assert max(seen) == 2 and seen[:2] == [0, 0]  # warm-ups alone; the timed rounds beside 2 decoders
    assert not any(t.name == "qclip-load" for t in threading.enumerate())  # stopped afterwards
