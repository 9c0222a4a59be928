"""The exported graph in ONNX Runtime (CPU, CUDA or TensorRT execution provider)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..contract import GRAPH_INPUT, GRAPH_OUTPUTS
from ..video.frames import to_host
from .cache_files import build_once

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("qclip_engine.runtime")

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def session(path: str | Path, providers: list[str] | None = None, threads: int | None = None, *, spin: bool = True,
            layout_optimizations: bool = True):
    """An ONNX Runtime session with full graph optimisation (``layout_optimizations=False``: all but
    the layout ones, ``ORT_ENABLE_EXTENDED``).

    ``spin=False`` stops idle intra-op threads from busy-waiting: what a pipeline wants when
    decode threads share the cores with the model.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if layout_optimizations
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


GRAPH_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


class OnnxRuntimeBackend:
    """An ONNX graph in ONNX Runtime: ``graph`` when given; else the precision's graph
    (``GRAPH_FILES``: FP32 on the CPU by default, FP16 on a GPU, INT8 on request) from the
    artifact directory when it is there, else written once into the user cache
    (``$QCLIP_CACHE``, ``~/.cache/qclip-engine``; the INT8 graph by quantizing the FP32 one,
    ``runtime/quantize.py``)."""

    name = "onnxruntime"

    def __init__(self, model: nn.Module | None, device: str = "cpu", *, artifact_dir: Path | None = None,
                 precision: str | None = None, provider: str | None = None, graph: Path | None = None):
        on_gpu = device.startswith("cuda")
        precision = precision or ("fp16" if on_gpu else "fp32")
        if graph is None:
            if model is None:
                raise ValueError("OnnxRuntimeBackend needs a model or a graph")
            if precision not in GRAPH_FILES:
                raise ValueError(f"ONNX Runtime runs the graph in {', '.join(GRAPH_FILES)}, not {precision!r} "
                                 "(BF16 on the CPU runs in the torch backend)")
            graph = self._graph(model, artifact_dir, precision)
        provider = provider or ("cuda" if on_gpu else "cpu")
        # No spinning: decode workers share the cores with the model's threads. The CPU arena
        # stays on (turning it off cost ~30 % of model time here); it keeps the activations of
        # the largest batch seen, so resident memory grows to that and stays.
        # ONNX Runtime 1.32's CPU layout optimisations crash (SIGSEGV) building CLIPVQA's FP16
        # graph; FP16 on the CPU only serves qclip-export's parity report, so it goes without them.
        layout = not (precision == "fp16" and provider == "cpu")
        self.session = session(graph, PROVIDERS[provider], spin=False, layout_optimizations=layout)
        self.provider = provider
        self.device = device
        self.path = Path(graph)
        self.precision = precision

    @property
    def label(self) -> str:
        return f"{self.name}-{self.precision}"

    @classmethod
    def _graph(cls, model: nn.Module, artifact_dir: Path | None, precision: str) -> Path:
        filename = GRAPH_FILES[precision]
        if artifact_dir is not None and (artifact_dir / filename).is_file():
            return artifact_dir / filename
        import torch

        from ..model.families import deployable
        from .base import export_cache_dir
        from .onnx_graph import export_onnx

        path = export_cache_dir(model) / filename

        def quantize(tmp: Path) -> None:
            from .quantize import quantize_int8

            fp32 = cls._graph(model, artifact_dir, "fp32")
            log.warning("quantizing the ONNX graph to INT8 once; it is cached in %s", path.parent)
            quantize_int8(fp32, tmp)

        def export(tmp: Path) -> None:
            # Once per model and machine; tens of seconds on a small CPU, so say what is happening.
            log.warning("exporting the model to ONNX once (%s); it is cached in %s", precision, path.parent)
            export_onnx(deployable(model, torch.float16 if precision == "fp16" else torch.float32), tmp)

        # One process builds it, under names of its own, renamed into place whole; others started
        # beside it wait and use its graph (runtime/cache_files.py).
        return build_once(path, quantize if precision == "int8" else export)

    def run(self, frames) -> tuple[np.ndarray, np.ndarray]:
        if self._bindable(frames):
            return self._run_bound(frames)
        # Frames the session cannot read in place are copied to the host, and counted (video/frames.py).
        sims, score = self.session.run(None, {GRAPH_INPUT: np.ascontiguousarray(to_host(frames), dtype=np.uint8)})
        return sims, score

    def _bindable(self, frames) -> bool:
        """A torch uint8 tensor on the provider's own device: read in place through I/O binding."""
        device = getattr(frames, "device", None)
        if device is None or getattr(frames, "dtype", None) is None or str(frames.dtype) != "torch.uint8":
            return False
        # The provider the session really got (ONNX Runtime falls back to the CPU without a GPU build).
        on_gpu = self.session.get_providers()[0] != "CPUExecutionProvider"
        return device.type == ("cuda" if on_gpu else "cpu") and (not on_gpu or (device.index or 0) == 0)

    def _run_bound(self, frames) -> tuple[np.ndarray, np.ndarray]:
        """The session reads the tensor's memory where it is (ONNX Runtime I/O binding); the two
        small outputs come back to the host."""
        x = frames.contiguous()
        if x.is_cuda:  # the frames were written on torch's stream; ONNX Runtime runs on its own
            import torch

            torch.cuda.current_stream(x.device).synchronize()
        binding = self.session.io_binding()
        binding.bind_input(name=GRAPH_INPUT, device_type=x.device.type, device_id=x.device.index or 0,
                           element_type=np.uint8, shape=tuple(x.shape), buffer_ptr=x.data_ptr())
        for name in GRAPH_OUTPUTS:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        sims, score = binding.copy_outputs_to_cpu()
        return sims, score
