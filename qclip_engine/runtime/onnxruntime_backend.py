"""The exported graph in ONNX Runtime (CPU, CUDA or TensorRT execution provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..model import QCLIP

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeBackend:
    """``model.onnx`` (``model.fp16.onnx`` on a GPU) from the artifact directory when it is
    there, else exported once into the user cache (``$QCLIP_CACHE``, ``~/.cache/qclip-engine``)."""

    name = "onnxruntime"

    def __init__(self, model: QCLIP, device: str = "cpu", *, artifact_dir: Path | None = None,
                 precision: str | None = None, provider: str | None = None):
        from export.onnx import INPUT, session

        on_gpu = device.startswith("cuda")
        precision = precision or ("fp16" if on_gpu else "fp32")
        filename = "model.fp16.onnx" if precision == "fp16" else "model.onnx"
        path = self._graph(model, artifact_dir, filename, precision)
        provider = provider or ("cuda" if on_gpu else "cpu")
        # No spinning: decode workers share the cores with the model's threads. The CPU arena
        # stays on (turning it off cost ~30 % of model time here); it keeps the activations of
        # the largest batch seen, so resident memory grows to that and stays.
        self.session = session(path, PROVIDERS[provider], spin=False)
        self.input = INPUT
        self.device = device
        self.path = path
        self.precision = precision

    @staticmethod
    def _graph(model: QCLIP, artifact_dir: Path | None, filename: str, precision: str) -> Path:
        if artifact_dir is not None and (artifact_dir / filename).is_file():
            return artifact_dir / filename
        from export.fold import fold, reduced_precision
        from export.onnx import export_onnx

        from .base import export_cache_dir

        path = export_cache_dir(model) / filename
        if not path.is_file():
            folded = fold(model)
            if precision == "fp16":
                folded = reduced_precision(folded)
            tmp = path.with_suffix(".partial.onnx")
            export_onnx(folded, tmp)
            tmp.replace(path)  # atomic: a crashed export never leaves a half graph behind
        return path

    def run(self, frames) -> tuple[np.ndarray, np.ndarray]:
        sims, score = self.session.run(None, {self.input: np.ascontiguousarray(np.asarray(frames, dtype=np.uint8))})
        return sims, score
