"""A TensorRT plan (``qclip-export --engine trt``), run on torch's current CUDA stream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, plan: Path, device: str = "cuda"):
        from export.tensorrt import TensorRTRunner

        self.runner = TensorRTRunner(plan, torch.device(device).index)
        self.device = device

    def run(self, frames) -> tuple[np.ndarray, np.ndarray]:
        x = torch.as_tensor(frames).to(self.runner.device, non_blocking=True)
        sims, scores = [], []
        for start in range(0, x.shape[0], self.runner.max_batch):  # the profile's largest batch
            s, sc = self.runner(x[start : start + self.runner.max_batch])
            sims.append(s)
            scores.append(sc)
        return torch.cat(sims).cpu().numpy(), torch.cat(scores).cpu().numpy()
