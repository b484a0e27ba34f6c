"""Overrides for the built-in lab (inventory/lab.py): only data differs from production.

pyinfra adds every host of inventory/lab.py to group "lab" (the file's stem), so these values
apply to the lab alone and win over group_data/all.py.
"""

# What the lab's stand-in nvidia-smi reports on every node unless a host says otherwise.
lab_gpus = [
    {"name": "NVIDIA GeForce RTX 5090", "memory_mib": 32607, "compute_capability": "12.0",
     "pci_bus_id": "00000000:01:00.0"},
    {"name": "NVIDIA GeForce RTX 5090", "memory_mib": 32607, "compute_capability": "12.0",
     "pci_bus_id": "00000000:02:00.0"},
]
