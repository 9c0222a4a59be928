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
