"""Dual RTX 5090 inference nodes: the hardware every node in group gpu_nodes is expected to have."""

gpu_count = 2
gpu_name = "NVIDIA GeForce RTX 5090"
gpu_memory_gib = 31.84  # 32607 MiB, what nvidia-smi reports for a 32 GB card
gpu_compute_capability = "12.0"
