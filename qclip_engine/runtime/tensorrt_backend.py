"""A TensorRT plan (``qclip-export --engine trt``), run on torch's current CUDA stream."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..contract import GRAPH_INPUT as INPUT
from ..contract import GRAPH_OUTPUTS as OUTPUTS


class TensorRTUnavailable(RuntimeError):
    """``tensorrt`` does not import here (not installed, or no CUDA driver)."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a driver/library load failure inside the wheel
        raise TensorRTUnavailable(
            f"TensorRT is not available here ({type(exc).__name__}: {exc}); "
            "install the 'trt' extra (tensorrt, NVIDIA's index) on a machine with a CUDA GPU"
        ) from None
    return trt


class TensorRTRunner:
    """Runs a serialised engine on torch CUDA tensors (used by the runtime's tensorrt backend).

    ``runner(frames)``: uint8 CUDA ``[B, F, H, W, 3]`` with ``1 ≤ B ≤ 2·batch`` →
    ``(level_sims [B, L], score [B])`` float32 CUDA tensors, on torch's current stream.
    """

    def __init__(self, plan_path: str | Path, device: int | None = None):
        trt = import_tensorrt()
        self.device = torch.device("cuda", torch.cuda.current_device() if device is None else device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.device):
            self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
            if self.engine is None:
                raise RuntimeError(f"{plan_path}: TensorRT could not deserialise this plan (built by another version or GPU?)")
            self.context = self.engine.create_execution_context()
        sidecar = Path(f"{plan_path}.json")
        self.sidecar = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        min_shape, _, max_shape = self.engine.get_tensor_profile_shape(INPUT, 0)
        self.max_batch, self.num_frames = int(max_shape[0]), int(min_shape[1])
        self.image_size = (int(min_shape[2]), int(min_shape[3]))

    def __call__(self, frames):
        if frames.dtype != torch.uint8 or frames.device != self.device or frames.ndim != 5:
            raise ValueError(f"expected uint8 [B, F, H, W, 3] on {self.device}, got {frames.dtype} {tuple(frames.shape)} on {frames.device}")
        if not 1 <= frames.shape[0] <= self.max_batch or frames.shape[1] != self.num_frames:
            raise ValueError(
                f"this engine takes 1..{self.max_batch} videos of {self.num_frames} frames, got {tuple(frames.shape[:2])}"
            )
        frames = frames.contiguous()
        self.context.set_input_shape(INPUT, tuple(frames.shape))
        outputs = {
            name: torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=torch.float32, device=self.device)
            for name in OUTPUTS
        }
        self.context.set_tensor_address(INPUT, frames.data_ptr())
        for name, tensor in outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return outputs["level_sims"], outputs["score"]


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, plan: Path, device: str = "cuda"):
        self.runner = TensorRTRunner(plan, torch.device(device).index)
        self.device = device
        sidecar = Path(f"{plan}.json")  # written beside the plan by qclip-export --engine trt
        try:
            built = json.loads(sidecar.read_text()).get("precision", "")
        except (OSError, ValueError):
            built = ""
        self.precision = "fp16" if built.startswith("fp16") else "fp32" if built else "unknown"

    @property
    def label(self) -> str:
        return f"{self.name}-{self.precision}"

    def run(self, frames) -> tuple[np.ndarray, np.ndarray]:
        x = torch.as_tensor(frames).to(self.runner.device, non_blocking=True)
        sims, scores = [], []
        for start in range(0, x.shape[0], self.runner.max_batch):  # the profile's largest batch
            s, sc = self.runner(x[start : start + self.runner.max_batch])
            sims.append(s)
            scores.append(sc)
        return torch.cat(sims).cpu().numpy(), torch.cat(scores).cpu().numpy()
