"""Backends behind one interface: ``run(frames_u8 [B, F, H, W, 3]) -> (level_sims [B, 5], score [B])``.

* ``torch`` — the folded module (CPU FP32; CUDA FP16 or BF16);
* ``onnxruntime`` — the exported graph on the CPU, CUDA or TensorRT execution provider;
* ``tensorrt`` — a ``model.plan`` built by ``qclip-export --engine trt``.

Backend code lives here only; the folded module and the TensorRT runner are imported
lazily from ``export`` inside the backend that needs them.
"""

from .base import Backend, create_backend, resolve_device

__all__ = ["Backend", "create_backend", "resolve_device"]
