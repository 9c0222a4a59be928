"""The model's outward contract, torch-free: the quality levels and the graph's names.

Every backend returns ``level_sims [B, len(QUALITY_LEVELS)]`` and ``score [B]`` for uint8
frames ``[B, F, H, W, 3]``; records name the levels in this order.
"""

QUALITY_LEVELS = ("bad", "poor", "fair", "good", "excellent")

# The exported graph (see docs/architecture.md, "The graph contract").
GRAPH_INPUT = "frames"  # uint8 [B, F, H, W, 3], RGB at model size, B and F dynamic
GRAPH_OUTPUTS = ("level_sims", "score")  # float32 [B, 5] and [B]
OPSET = 18
