"""Production: four dual-RTX-5090 nodes behind two nginx load balancers, and one Milvus host.

Each GPU node serves one vLLM replica over both GPUs (TP=2) by default; to split a node into
two TP=1 replicas, give it ``vllm_tensor_parallel_size=1`` and ``vllm_replicas``, e.g.
``[{"name": "vllm-0", "gpus": [0], "port": 8000}, {"name": "vllm-1", "gpus": [1], "port": 8001}]``.
Milvus (etcd + MinIO + Milvus standalone) runs on the ``vector_db`` host, a host of its own: a
node's rollout (a Docker restart, a reboot for a driver) then never stops the store every RAG app
replica shares. A GPU node may hold that role in a small fleet (the lab does).
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

vector_db = [
    ("db-01", {"ssh_hostname": "10.40.0.31", "private_address": "10.40.0.31"}),
]
