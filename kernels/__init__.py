"""alice-gpu's CUDA kernel sources, installed as package data (``alice_gpu.kernels``)."""
