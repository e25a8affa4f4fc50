"""alice-gpu's YAML configuration profiles, installed as package data (``alice_gpu.configs``)."""
