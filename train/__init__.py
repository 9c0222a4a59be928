"""Training of the Q-CLIP adapters and the embedded demo data."""
