"""The INT8 graph: ONNX Runtime's dynamic quantization of the exported FP32 graph.

Only matrix products with a constant weight become INT8 — the tower's blocks, the adapters and
the projection (ONNX Runtime's quantizer first rewrites a ``Gemm`` as ``MatMul`` + ``Add``) —
weights per channel, activations quantized per call. Everything else stays FP32, as in the FP16 graph (``model/folded.py``,
``reduced_precision``): the input scaling, the patch convolution, LayerNorms, softmax and the
attention products between activations, and the head — every node from the frame mean on (the
similarities to the level prompts and the score): the last ``ReduceMean`` of the graph and what
follows from it. In a CLIPVQA graph that mean is SAT's, so the head is the cosines, softmax and
score; VAT's and the patch projection's constant-weight products (on the text side, apart from
the mean) are quantized like the tower's — the drift ``qclip-export --int8`` measures covers them.
The graph contract is unchanged: uint8 ``[B, F, H, W, 3]`` in, ``level_sims`` and ``score`` out.
"""

from __future__ import annotations

import logging
from pathlib import Path

QUANTIZED_OPS = ("MatMul",)


def head_nodes(graph) -> list[str]:
    """Names of the nodes downstream of the frame mean (the graph's last ``ReduceMean``: the
    tower's own reductions, if any, come before it): the head."""
    nodes = list(graph.node)
    start = next((n for n in reversed(nodes) if n.op_type == "ReduceMean"), None)
    if start is None:
        raise ValueError("no ReduceMean (frame mean) in the graph: not a Q-CLIP export")
    reached = set(start.output)
    head = [start.name]
    for node in nodes[nodes.index(start) + 1:]:  # ONNX nodes are in topological order
        if reached & set(node.input):
            reached |= set(node.output)
            head.append(node.name)
    return head


def quantize_int8(fp32_graph: str | Path, out: str | Path) -> Path:
    """Write the INT8 graph of ``fp32_graph`` to ``out`` (the head and non-matrix ops in FP32)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = head_nodes(onnx.load(str(fp32_graph), load_external_data=False).graph)
    # The quantizer logs every node it skips at INFO; the user needs none of it.
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(max(quiet, logging.WARNING))
    try:
        quantize_dynamic(
            str(fp32_graph), str(out),
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            extra_options={"MatMulConstBOnly": True},  # attention products (activation × activation) stay FP32
        )
    finally:
        logging.getLogger().setLevel(quiet)
    return Path(out)
