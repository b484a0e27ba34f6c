"""Production: four dual-RTX-5090 nodes behind two nginx load balancers.

Each GPU node serves one vLLM replica over both GPUs (TP=2) by default; to split a node into
two TP=1 replicas, give it ``vllm_tensor_parallel_size=1`` and ``vllm_replicas``, e.g.
``[{"name": "vllm-0", "gpus": [0], "port": 8000}, {"name": "vllm-1", "gpus": [1], "port": 8001}]``.
SSH host keys are checked (group_data/all.py): add each host's key to ~/.ssh/known_hosts first.
"""

gpu_nodes = [
    ("gpu-node-01", {"ssh_hostname": "10.40.1.11", "private_address": "10.40.1.11"}),
    ("gpu-node-02", {"ssh_hostname": "10.40.1.12", "private_address": "10.40.1.12"}),
    ("gpu-node-03", {"ssh_hostname": "10.40.1.13", "private_address": "10.40.1.13"}),
    ("gpu-node-04", {"ssh_hostname": "10.40.1.14", "private_address": "10.40.1.14"}),
]

lb = [
    ("lb-01", {"ssh_hostname": "10.40.0.21", "private_address": "10.40.0.21"}),
    ("lb-02", {"ssh_hostname": "10.40.0.22", "private_address": "10.40.0.22"}),
]
