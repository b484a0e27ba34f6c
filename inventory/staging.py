"""Staging: one dual-RTX-5090 node and one load balancer, the same roles as production; Milvus on the node."""

gpu_nodes = [
    ("gpu-stg-01", {"ssh_hostname": "10.40.9.11", "private_address": "10.40.9.11"}),
]

lb = [
    ("lb-stg-01", {"ssh_hostname": "10.40.9.21", "private_address": "10.40.9.21"}),
]

vector_db = ["gpu-stg-01"]
