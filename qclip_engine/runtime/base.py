"""Choosing and building a backend."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .. import defaults
from ..defaults import ENGINES


class Backend(Protocol):
    name: str
    device: str
    precision: str

    @property
    def label(self) -> str:
        """``name-precision``, as results and metrics report the backend (``torch-bf16``)."""

    def run(self, frames: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``[B, F, H, W, 3]`` → ``(level_sims [B, L], score [B])`` float32 numpy (L: the
        model's levels, 5 for Q-CLIP)."""


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA GPU")
    return device


def _have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def export_cache_dir(model: torch.nn.Module) -> Path:
    """Where exported graphs of this exact model are kept: keyed by config (each family's has its
    own fields), mode (Q-CLIP's zero-shot), the tensors an artifact stores and the fingerprint of
    those it rebuilds. The key is also what ``precision.json`` ties a drift to."""
    from ..artifact import backbone_fingerprint

    h = hashlib.sha256()
    h.update(repr(sorted(model.config.to_dict().items())).encode())
    h.update(b"zero_shot" if getattr(model, "zero_shot", False) else b"trained")
    h.update(backbone_fingerprint(model).encode())
    for name, tensor in sorted(model.artifact_tensors().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().float().numpy().tobytes())
    return cache_root() / "exports" / h.hexdigest()[:16]


def cache_root() -> Path:
    """The user cache of exported graphs and CPU choices: ``$QCLIP_CACHE`` or ``~/.cache/qclip-engine``."""
    return Path(os.environ.get("QCLIP_CACHE", Path.home() / ".cache" / "qclip-engine"))


def create_backend(
    model: torch.nn.Module,
    engine: str = "auto",
    device: str = "auto",
    *,
    artifact_dir: str | Path | None = None,
    precision: str | None = None,
    batch: int = 1,
    decode_workers: int = 0,
    torch_mode: str = defaults.TORCH_MODE,
) -> Backend:
    """The backend for ``model``.

    On a GPU, ``engine="auto"`` is TensorRT when the artifact has a ``model.plan`` and
    ``tensorrt`` imports, else torch; ``precision="auto"`` (or None) is FP16. On the CPU, any
    ``auto`` is settled by measurement among what the CPU and the artifact's measured drift
    allow (``runtime/cpu_choice.py``), timed at the engine's ``batch`` (capped) beside its
    ``decode_workers``; an explicit engine and precision are built as asked. ``torch_mode``
    (``eager`` | ``cuda_graphs`` | ``compile``, CUDA only) is how the torch backend runs
    (``runtime/torch_backend.py``), prepared for batches up to ``batch``.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    precision = precision or defaults.PRECISION
    if precision not in defaults.PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {defaults.PRECISIONS}")
    device = resolve_device(device)
    artifact_dir = Path(artifact_dir) if artifact_dir else None
    plan = artifact_dir / "model.plan" if artifact_dir else None
    if device == "cpu" and engine != "tensorrt":
        if torch_mode != "eager":
            raise ValueError(f"torch_mode {torch_mode!r} is for a CUDA device; on the CPU the torch backend runs eager")
        from .cpu_choice import choose_cpu_backend

        return choose_cpu_backend(
            model, lambda c: _build(model, c.engine, device, artifact_dir, c.precision), artifact_dir=artifact_dir,
            engine=engine, precision=precision, onnxruntime=_have("onnxruntime", "onnx", "onnxscript"), batch=batch,
            decode_workers=decode_workers)
    if precision == "auto":
        precision = None  # the GPU backends' default: FP16
    if engine == "auto":
        engine = "tensorrt" if plan is not None and plan.is_file() and _have("tensorrt") else "torch"
    if torch_mode != defaults.TORCH_MODE and engine != "torch":
        raise ValueError(f"torch_mode {torch_mode!r} is how the torch backend runs; the engine here is {engine!r}")
    if engine in ("torch", "onnxruntime"):
        return _build(model, engine, device, artifact_dir, precision, torch_mode=torch_mode, batch=batch)
    from .tensorrt_backend import TensorRTBackend

    if plan is None or not plan.is_file():
        raise FileNotFoundError(
            f"engine 'tensorrt' needs {plan or 'ARTIFACT/model.plan'}: build it with qclip-export ARTIFACT --engine trt"
        )
    return TensorRTBackend(plan, device)


def _build(model: torch.nn.Module, engine: str, device: str, artifact_dir: Path | None, precision: str | None, *,
           torch_mode: str = defaults.TORCH_MODE, batch: int = 1) -> Backend:
    if engine == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend(model, device, precision=precision, mode=torch_mode, max_batch=batch)
    from .onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(model, device, artifact_dir=artifact_dir, precision=precision)
