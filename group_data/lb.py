"""Load-balancer hosts: nginx over every vLLM replica in the inventory. No GPUs."""

gpu_count = 0
