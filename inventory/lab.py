"""The built-in lab: stand-in hosts on this machine, reached over SSH on 127.0.0.1 ports.

`gpufleet lab up [--nodes N] [--lbs M] [--data-hosts 1]` starts them and records their ports; this file
lists whatever the running lab has (two GPU nodes and one load balancer by default; Milvus on
gpu-node-2, or on db-1 with --data-hosts 1). Everything that
differs from production is data: here (connection data) and in group_data/lab.py.
"""

from gpufleet.lab.topology import inventory_groups as _inventory_groups

_groups = _inventory_groups()
gpu_nodes = _groups["gpu_nodes"]
lb = _groups["lb"]
vector_db = _groups["vector_db"]  # Milvus, shared by every node's RAG app: gpu-node-2, or db-1
