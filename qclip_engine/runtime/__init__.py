"""Backends behind one interface: ``run(frames_u8 [B, F, H, W, 3]) -> (level_sims [B, L], score [B])``.

* ``torch`` — the folded module (CPU FP32; CUDA FP16 or BF16);
* ``onnxruntime`` — the exported graph on the CPU, CUDA or TensorRT execution provider;
* ``tensorrt`` — a ``model.plan`` built by ``qclip-export --engine trt``.

Backend code lives here only: the ONNX graph (``onnx_graph``: writing it), the ONNX Runtime
session and the TensorRT runner. Each backend module is imported by ``create_backend`` when
chosen, so a CPU machine never imports TensorRT.
"""

from .base import Backend, create_backend, resolve_device

__all__ = ["Backend", "create_backend", "resolve_device"]
