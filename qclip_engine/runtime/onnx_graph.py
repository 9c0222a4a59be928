"""The ONNX graph of a model's deployable module (``model/families.py:deployable``; Q-CLIP's is
:class:`~qclip_engine.model.folded.FoldedQCLIP`): writing it.

The graph contract (docs/architecture.md):

* input ``frames``: uint8 ``[B, F, H, W, 3]``, B dynamic, F dynamic unless the module's
  ``fixed_frames`` says its frame count is part of the model (CLIPVQA);
* outputs ``level_sims`` float32 ``[B, L]`` (L = 5 for Q-CLIP, 6 for CLIPVQA) and ``score`` float32 ``[B]``.

The graph comes from torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``,
onnxscript), opset 18, and is checked with ``onnx.checker``. The FP16 graph for GPU
runtimes is exported the same way from :func:`qclip_engine.model.folded.reduced_precision` (FP16 tower,
FP32 LayerNorms, input scaling and head), so every tensor's type is set in torch and the
graph needs no converter pass: onnxconverter-common's ``float16`` mis-types this graph,
whose ``level_sims`` output also feeds the score.

The runtime writes a graph on demand (the ONNX Runtime backend, into the user cache) and
``qclip-export`` writes one beside an artifact; both call :func:`export_onnx`.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ..contract import GRAPH_INPUT as INPUT
from ..contract import GRAPH_OUTPUTS as OUTPUTS
from ..contract import OPSET

# Above this many weight bytes the graph goes to external data (protobuf's 2 GiB limit).
EXTERNAL_DATA_BYTES = 1_500_000_000


# Loggers of the exporter stack: dozens of "Skipping constant folding" warnings per export
# that say nothing to a user of the graph.
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Only errors from these loggers while the block runs; their levels are restored after."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def example_frames(folded: nn.Module, batch: int = 2, frames: int | None = None) -> torch.Tensor:
    h, w = folded.image_size
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, frames or folded.num_frames, h, w, 3), generator=g, dtype=torch.uint8)


def export_onnx(folded: nn.Module, path: str | Path, *, opset: int = OPSET) -> Path:
    """Write the graph of the deployable module ``folded`` to ``path`` and check it; returns the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folded = folded.eval()
    fixed = folded.fixed_frames
    # Example of B=2, F=num_frames (≥ 2 keeps a dynamic dim symbolic in the trace).
    example = example_frames(folded, 2, folded.num_frames if fixed else max(2, folded.num_frames))
    batch = torch.export.Dim("batch", min=1, max=4096)
    dims = {0: batch} if fixed else {0: batch, 1: torch.export.Dim("frames", min=1, max=4096)}
    weight_bytes = sum(t.numel() * t.element_size() for t in list(folded.parameters()) + list(folded.buffers()))
    with warnings.catch_warnings(), _quiet_loggers(*EXPORTER_LOGGERS), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations in third-party code) is not the user's business
        torch.onnx.export(
            folded,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={"frames": dims},
            external_data=weight_bytes > EXTERNAL_DATA_BYTES,
            verbose=False,
        )
    onnx.checker.check_model(str(path))
    return path
