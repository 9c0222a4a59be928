"""TensorRT engines from the exported ONNX graph (TensorRT 10 Python API).

Precision is set in the graph, not by builder flags: the FP16 engine is built from the
FP16 ONNX export (FP16 tower, FP32 LayerNorms, input scaling and head; see
:func:`qclip_engine.model.folded.reduced_precision`) as a *strongly typed* network, so TensorRT keeps
exactly those types. (Weakly typed ``BuilderFlag.FP16`` with per-layer precision
constraints is deprecated in TensorRT 10 and gone in 11; strong typing works in both.)

One optimisation profile over the batch of videos, frames fixed at the model's count:
min ``1×F``, opt ``batch×F``, max ``2·batch×F``. The timing cache is read
from and written back to ``timing.cache`` beside the plan, so rebuilds are fast. Every
plan gets a JSON sidecar (TensorRT version, GPU, profile, precision, source graph). The plan
runs through :class:`qclip_engine.runtime.tensorrt_backend.TensorRTRunner`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from qclip_engine.contract import GRAPH_INPUT as INPUT
from qclip_engine.contract import GRAPH_OUTPUTS as OUTPUTS
from qclip_engine.runtime.tensorrt_backend import import_tensorrt


@dataclass(frozen=True)
class Profile:
    """Shapes of the ``frames`` input the engine is built for."""

    batch: int
    num_frames: int
    image_size: tuple[int, int]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        h, w = self.image_size
        f = self.num_frames
        return {"min": (1, f, h, w, 3), "opt": (self.batch, f, h, w, 3), "max": (2 * self.batch, f, h, w, 3)}


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    profile: Profile,
    *,
    precision: str,
    workspace_gib: float | None = None,
    timing_cache: str | Path | None = None,
) -> dict:
    """Build and serialise an engine; writes ``plan_path`` and ``plan_path.json``, returns the sidecar."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    if workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    shapes = profile.shapes()
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(opt_profile)

    plan_path = Path(plan_path)
    cache_path = Path(timing_cache) if timing_cache else plan_path.with_name("timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    build_s = time.perf_counter() - started
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(memoryview(serialized))
    cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))

    sidecar = {
        "tensorrt": trt.__version__,
        "gpu": _gpu_name(),
        "precision": precision,
        "strongly_typed": True,
        "onnx": Path(onnx_path).name,
        "input": INPUT,
        "outputs": list(OUTPUTS),
        "profile": {k: list(v) for k, v in shapes.items()},
        "timing_cache": cache_path.name,
        "build_s": round(build_s, 1),
    }
    Path(f"{plan_path}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:
        return None
