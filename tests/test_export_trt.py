"""TensorRT engines: build from the exported graph, run through the runner, match torch.

These run only where ``tensorrt`` imports and a CUDA GPU is present; elsewhere they skip.
"""

import json

import numpy as np
import pytest
import torch

from qclip_engine.model.folded import fold, reduced_precision
from qclip_engine.runtime.onnx_graph import export_onnx

try:
    import tensorrt  # noqa: F401

    HAVE_TRT = torch.cuda.is_available()
except Exception:
    HAVE_TRT = False

pytestmark = pytest.mark.skipif(not HAVE_TRT, reason="needs tensorrt and a CUDA GPU")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from test_export_onnx import small_model

    return small_model(), tmp_path_factory.mktemp("trt")


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-3), ("fp16", 1e-2)])
def test_engine_matches_torch_across_the_profile(small, precision, tolerance):
    from qclip_engine.export.tensorrt import Profile, build_engine
    from qclip_engine.runtime.tensorrt_backend import TensorRTRunner

    model, out = small
    folded = fold(model)
    graph = export_onnx(reduced_precision(folded) if precision == "fp16" else folded, out / f"{precision}.onnx")
    plan = out / f"{precision}.plan"
    sidecar = build_engine(graph, plan, Profile(batch=2, num_frames=2, image_size=(64, 64)), precision=precision)
    assert json.loads(plan.with_name(plan.name + ".json").read_text()) == sidecar
    assert sidecar["profile"]["max"][0] == 4 and (out / "timing.cache").is_file()
    runner = TensorRTRunner(plan)
    for batch in (1, 2, 4):  # min, opt, max of the profile
        g = torch.Generator().manual_seed(batch)
        pixels = torch.randint(0, 256, (batch, 2, 64, 64, 3), generator=g, dtype=torch.uint8)
        with torch.no_grad():
            ref = model(model.normalize(pixels)).numpy()
        sims, score = runner(pixels.cuda())
        torch.cuda.synchronize()
        assert sims.shape == (batch, 5) and score.dtype == torch.float32
        assert np.abs(score.cpu().numpy() - ref).max() < tolerance
    with pytest.raises(ValueError, match="1..4 videos"):
        runner(torch.zeros(5, 2, 64, 64, 3, dtype=torch.uint8, device="cuda"))


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-3), ("fp16", 1e-2)])
def test_a_fastvqa_engine_matches_torch(tmp_path, precision, tolerance):
    """The FAST-VQA graph (no levels: ``level_sims`` is ``[B, 0]``) builds and runs through the same module."""
    from qclip_engine.export.tensorrt import Profile, build_engine
    from qclip_engine.model.families import create_model, deployable
    from qclip_engine.runtime.tensorrt_backend import TensorRTRunner

    model = create_model("fastvqa", embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2), head_hidden=8,
                         image_size=64, num_frames=8, views=2, aligned=4, sampler="temporal_fragments:2").eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    graph = export_onnx(deployable(model, dtype), tmp_path / f"{precision}.onnx")
    plan = tmp_path / f"{precision}.plan"
    build_engine(graph, plan, Profile(batch=2, num_frames=8, image_size=(64, 64)), precision=precision)
    runner = TensorRTRunner(plan)
    pixels = torch.randint(0, 256, (2, 8, 64, 64, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        ref = model(model.normalize(pixels)).numpy()
    sims, score = runner(pixels.cuda())
    torch.cuda.synchronize()
    assert sims.shape == (2, 0) and np.abs(score.cpu().numpy() - ref).max() < tolerance


@pytest.mark.parametrize("precision,tolerance", [("fp32", 1e-3), ("fp16", 1e-2)])
def test_a_dvlta_engine_matches_torch(tmp_path, clipvqa_backbone, precision, tolerance):
    """The DVLTA graph (one [B, F, S, 2S, 3] input split inside, two levels) builds and runs through the same module."""
    from test_dvlta_end_to_end import FRAMES, SIDE, tiny

    from qclip_engine.export.tensorrt import Profile, build_engine
    from qclip_engine.model.families import create_model, deployable
    from qclip_engine.runtime.tensorrt_backend import TensorRTRunner

    model = create_model(**tiny(clipvqa_backbone)).eval()
    dtype = torch.float16 if precision == "fp16" else torch.float32
    graph = export_onnx(deployable(model, dtype), tmp_path / f"{precision}.onnx")
    plan = tmp_path / f"{precision}.plan"
    build_engine(graph, plan, Profile(batch=2, num_frames=FRAMES, image_size=(SIDE, 2 * SIDE)), precision=precision)
    runner = TensorRTRunner(plan)
    pixels = torch.randint(0, 256, (2, FRAMES, SIDE, 2 * SIDE, 3), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    with torch.no_grad():
        ref_sims = model(model.normalize(pixels), output="sims").numpy()
        ref = model.score_from_sims(torch.from_numpy(ref_sims)).numpy()
    sims, score = runner(pixels.cuda())
    torch.cuda.synchronize()
    assert sims.shape == (2, 2) and np.abs(score.cpu().numpy() - ref).max() < tolerance
    assert np.abs(sims.cpu().numpy() - ref_sims).max() < tolerance
