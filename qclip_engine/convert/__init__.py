"""Checkpoints of other code bases → artifacts of this engine (``qclip-convert``)."""
