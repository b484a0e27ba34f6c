"""The default `nvidia-smi` table, parsed for tests: the lab's stand-in must print the real format.

No fact reads the table (they use ``--query-gpu``); it lived in operations/facts/gpu.py with no
caller there (issue 14's dead code), so it is kept where it is used.
"""

import re

_TABLE_HEAD = re.compile(
    r"NVIDIA-SMI (?P<smi>\S+)\s+(?:Driver|KMD) Version: (?P<driver>\S+)\s+CUDA (?:UMD )?Version: (?P<cuda>\S+)"
)
_TABLE_GPU = re.compile(r"^\|\s+(?P<index>\d+)\s+(?P<name>.+?)\s+(?:On|Off)\s+\|\s+(?P<bus>[0-9A-Fa-f:.]+)\s")
_TABLE_MEM = re.compile(r"(?P<used>\d+)MiB\s*/\s*(?P<total>\d+)MiB")


def parse_smi_table(lines: list[str]) -> dict:
    """Parse the default `nvidia-smi` table (drivers 5xx "Driver Version" and 6xx "KMD Version").

    >>> parse_smi_table(["| NVIDIA-SMI 580.95.05   Driver Version: 580.95.05   CUDA Version: 13.0  |"])["cuda_version"]
    '13.0'
    """
    result: dict = {"smi_version": None, "driver_version": None, "cuda_version": None, "gpus": []}
    gpu = None
    for line in lines:
        head = _TABLE_HEAD.search(line)
        if head:
            result.update(smi_version=head["smi"], driver_version=head["driver"], cuda_version=head["cuda"])
            continue
        row = _TABLE_GPU.match(line)
        if row:
            gpu = {"index": int(row["index"]), "name": row["name"], "pci_bus_id": row["bus"],
                   "memory_used_mib": None, "memory_total_mib": None}
            result["gpus"].append(gpu)
            continue
        mem = _TABLE_MEM.search(line)
        if gpu is not None and mem and gpu["memory_total_mib"] is None:
            gpu.update(memory_used_mib=int(mem["used"]), memory_total_mib=int(mem["total"]))
    return result
