"""Custom CUDA kernels and their launchers."""
