"""ONNX export of :class:`~export.fold.FoldedQCLIP` (DESIGN §6 graph contract).

* input ``frames``: uint8 ``[B, F, H, W, 3]``, B and F dynamic;
* outputs ``level_sims`` float32 ``[B, 5]`` and ``score`` float32 ``[B]``.

The graph comes from torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``,
onnxscript), opset 18, and is checked with ``onnx.checker``. The FP16 graph for GPU
runtimes is exported the same way from :func:`export.fold.reduced_precision` (FP16 tower,
FP32 LayerNorms, input scaling and head), so every tensor's type is set in torch and the
graph needs no converter pass: onnxconverter-common's ``float16`` mis-types this graph,
whose ``level_sims`` output also feeds the score.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .fold import FoldedQCLIP

OPSET = 18
INPUT = "frames"
OUTPUTS = ("level_sims", "score")
# Above this many weight bytes the graph goes to external data (protobuf's 2 GiB limit).
EXTERNAL_DATA_BYTES = 1_500_000_000


def example_frames(folded: FoldedQCLIP, batch: int = 2, frames: int | None = None) -> torch.Tensor:
    h, w = folded.image_size
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, frames or folded.num_frames, h, w, 3), generator=g, dtype=torch.uint8)


def export_onnx(folded: FoldedQCLIP, path: str | Path, *, opset: int = OPSET) -> Path:
    """Write the FP32 graph to ``path`` and check it; returns the path."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folded = folded.eval()
    # Example of B=2, F=num_frames (≥ 2 keeps both dims symbolic in the trace).
    example = example_frames(folded, 2, max(2, folded.num_frames))
    batch = torch.export.Dim("batch", min=1, max=4096)
    frames = torch.export.Dim("frames", min=1, max=4096)
    weight_bytes = sum(t.numel() * t.element_size() for t in list(folded.parameters()) + list(folded.buffers()))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations in third-party code) is not the user's business
        torch.onnx.export(
            folded,
            (example,),
            str(path),
            input_names=[INPUT],
            output_names=list(OUTPUTS),
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={"frames": {0: batch, 1: frames}},
            external_data=weight_bytes > EXTERNAL_DATA_BYTES,
            verbose=False,
        )
    onnx.checker.check_model(str(path))
    return path


def session(path: str | Path, providers: list[str] | None = None, threads: int | None = None, *, spin: bool = True):
    """An ONNX Runtime session with full graph optimisation.

    ``spin=False`` stops idle intra-op threads from busy-waiting: what a pipeline wants when
    decode threads share the cores with the model.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
