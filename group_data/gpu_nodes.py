"""Dual RTX 5090 inference nodes: the hardware every node in group gpu_nodes is expected to have."""

gpu_count = 2
gpu_name = "NVIDIA GeForce RTX 5090"
gpu_memory_gib = 32
gpu_compute_capability = "12.0"
