"""The folded model in torch: CPU FP32 (default) or BF16 (oneDNN on AMX / AVX-512-BF16), CUDA FP16
(default) or BF16."""

from __future__ import annotations

import numpy as np
import torch

from ..model.folded import fold, reduced_precision
from ..model.qclip import QCLIP

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend:
    name = "torch"

    def __init__(self, model: QCLIP, device: str = "cpu", *, precision: str | None = None):
        precision = precision or ("fp16" if device.startswith("cuda") else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        folded = fold(model)
        if precision != "fp32":
            folded = reduced_precision(folded, PRECISIONS[precision])
        self.module = folded.to(device).eval()
        self.device = device
        self.precision = precision

    @property
    def label(self) -> str:
        return f"{self.name}-{self.precision}"

    @torch.inference_mode()
    def run(self, frames) -> tuple[np.ndarray, np.ndarray]:
        x = torch.as_tensor(frames).to(self.device, non_blocking=True)
        sims, score = self.module(x)
        return sims.float().cpu().numpy(), score.float().cpu().numpy()
