"""The folded model in torch: CPU FP32 (default) or BF16 (oneDNN on AMX / AVX-512-BF16), CUDA FP16
(default) or BF16.

On CUDA the model has a fixed shape per batch size, which two modes exploit (``mode``; eager
is the default, as neither has run on a GPU in this project's CI yet):

* ``cuda_graphs`` — one CUDA graph captured per batch size in ``padded_sizes(max_batch)``
  (powers of two and the batch itself); a partial batch is padded to the nearest captured
  size (the last video repeated; its rows are dropped) and replayed: no per-kernel launch cost.
* ``compile`` — ``torch.compile(mode="max-autotune-no-cudagraphs", dynamic=False)`` with the
  same padding: one static compile per prepared size (its own CUDA graphs are left out: they
  are recorded per thread, and the model runs on another thread than the warm-up).

Both pay their capture/compile in ``warm_up`` (called at start-up by ``QualityEngine``), not
on the first request. Attention is the towers' own (timm/open_clip call PyTorch's SDPA).
Frames that arrive as numpy on a CUDA backend go through a pinned host buffer and an
asynchronous copy.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from .. import defaults
from ..model.families import deployable

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = defaults.TORCH_MODES


def padded_sizes(max_batch: int) -> tuple[int, ...]:
    """The batch sizes a fixed-shape mode prepares: powers of two below ``max_batch``, and it."""
    return tuple(sorted({2**k for k in range(max_batch.bit_length()) if 2**k < max_batch} | {max_batch}))


def run_padded(call: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor,
               sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """``call`` over ``x`` [B, …] in pieces of a prepared size: chunks of the largest, the rest
    padded up to the nearest size by repeating its last video; the padding rows are dropped."""
    sims, scores = [], []
    for start in range(0, x.shape[0], sizes[-1]):
        piece = x[start : start + sizes[-1]]
        n = piece.shape[0]
        size = next(s for s in sizes if s >= n)
        if size > n:
            piece = torch.cat([piece, piece[-1:].expand(size - n, *piece.shape[1:])])
        s, sc = call(piece)
        sims.append(s[:n])
        scores.append(sc[:n])
    return torch.cat(sims), torch.cat(scores)


class TorchBackend:
    name = "torch"

    def __init__(self, model: torch.nn.Module, device: str = "cpu", *, precision: str | None = None,
                 mode: str = defaults.TORCH_MODE, max_batch: int = defaults.BATCH):
        precision = precision or ("fp16" if device.startswith("cuda") else "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "eager" and not device.startswith("cuda"):
            raise ValueError(f"mode {mode!r} is for a CUDA device (the model's shapes are fixed there); "
                             "on the CPU the backend runs eager")
        self.module = deployable(model, PRECISIONS[precision]).to(device).eval()  # the family's graph module
        self.device = device
        self.precision = precision
        self.mode = mode
        self.sizes = padded_sizes(max_batch) if mode != "eager" else ()
        self.frame_shape = (model.config.num_frames, *model.image_size, 3)  # the shape the modes fix
        self._call = self.module
        if mode == "compile":
            import torch._dynamo

            # one compile per prepared size; past the limit torch would fall back to eager silently
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, len(self.sizes) + 2)
            self._call = torch.compile(self.module, mode="max-autotune-no-cudagraphs", dynamic=False)
        self._graphs: dict[int, tuple[torch.Tensor, Callable[[], None], tuple[torch.Tensor, torch.Tensor]]] = {}
        self._pinned: torch.Tensor | None = None
        self._pinned_free = None  # CUDA event: the last copy out of the pinned buffer is done

    @property
    def label(self) -> str:
        return f"{self.name}-{self.precision}"

    def _on_device(self):
        """Make the backend's GPU the current one (graphs capture on the current device's streams)."""
        return torch.cuda.device(torch.device(self.device)) if self.device.startswith("cuda") else contextlib.nullcontext()

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Capture or compile every prepared batch size now, so no request pays for it."""
        with self._on_device():
            for size in self.sizes:
                x = torch.zeros((size, *self.frame_shape), dtype=torch.uint8, device=self.device)
                for _ in range(2 if self.mode == "compile" else 1):  # compile, then a run of the compiled code
                    self._fixed(x)

    @torch.inference_mode()
    def run(self, frames) -> tuple[np.ndarray, np.ndarray]:
        with self._on_device():
            x = self._to_device(frames)
            if self.sizes and tuple(x.shape[1:]) == self.frame_shape:
                sims, score = run_padded(self._fixed, x, self.sizes)
            else:  # eager, or a shape the fixed modes were not prepared for
                sims, score = self.module(x)
            return sims.float().cpu().numpy(), score.float().cpu().numpy()

    def _to_device(self, frames) -> torch.Tensor:
        if isinstance(frames, np.ndarray) and self.device.startswith("cuda"):
            # Through pinned memory, so the copy is a DMA that overlaps other work. Before the
            # buffer is refilled, the previous copy out of it must be done (a failed run may not
            # have waited for it).
            if self._pinned_free is not None:
                self._pinned_free.synchronize()
            n = frames.size
            if self._pinned is None or self._pinned.numel() < n:
                self._pinned = torch.empty(n, dtype=torch.uint8, pin_memory=True)
            staged = self._pinned[:n].view(frames.shape)
            np.copyto(staged.numpy(), frames, casting="no")
            x = staged.to(self.device, non_blocking=True)
            self._pinned_free = torch.cuda.Event()
            self._pinned_free.record()
            return x
        return torch.as_tensor(frames).to(self.device, non_blocking=True)

    def _fixed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One call at a prepared size: a graph replay, or the compiled module."""
        if self.mode != "cuda_graphs":
            return self._call(x)
        size = x.shape[0]
        if size not in self._graphs:
            self._graphs[size] = self._capture(x)
        static_x, replay, static_out = self._graphs[size]
        static_x.copy_(x)
        replay()
        return tuple(t.clone() for t in static_out)  # the next replay overwrites static_out

    def _capture(self, x: torch.Tensor):
        static_x = x.clone()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):  # warm-up iterations off the capture (allocator, kernel choice)
            for _ in range(3):
                self.module(static_x)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.module(static_x)
        return static_x, graph.replay, static_out
