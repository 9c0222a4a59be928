"""The model's outward contract, torch-free: the quality levels and the graph's names.

Every backend returns ``level_sims [B, L]`` and ``score [B]`` for uint8 frames ``[B, F, H, W, 3]``,
L being the model's levels (``model.levels``): Q-CLIP's are ``QUALITY_LEVELS``, in this order;
another family names its own (CLIPVQA: six). Records name the levels in the model's order.
"""

QUALITY_LEVELS = ("bad", "poor", "fair", "good", "excellent")

# The exported graph (see docs/architecture.md, "The graph contract").
GRAPH_INPUT = "frames"  # uint8 [B, F, H, W, 3], RGB at model size, B dynamic (F too unless the family fixes it)
GRAPH_OUTPUTS = ("level_sims", "score")  # float32 [B, L] and [B]
OPSET = 18
