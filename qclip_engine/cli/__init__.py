"""Command-line tools: qclip-score, qclip-serve."""
