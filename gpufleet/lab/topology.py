"""Names, ports and paths of the lab: one place, read by `gpufleet lab` and inventory/lab.py."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from gpufleet import PROJECT_ROOT

LAB_DIR = PROJECT_ROOT / "lab"
STATE_DIR = LAB_DIR / ".state"  # git-ignored: keys, known_hosts, connection data, apt repo
HOSTS_FILE = STATE_DIR / "hosts.json"
SSH_KEY = STATE_DIR / "id_ed25519"
KNOWN_HOSTS = STATE_DIR / "known_hosts"
REPO_DIR = STATE_DIR / "repo"
REPO_KEY_FINGERPRINT = STATE_DIR / "repo-key.fingerprint"  # of the lab's apt repository signing key

NETWORK = "gpufleet-lab"
LABEL = "gpufleet.lab"  # every container, volume and network the lab creates carries it
REPO_CONTAINER, REPO_ALIAS = "gpufleet-lab-repo", "lab-repo"
REGISTRY_CONTAINER, REGISTRY_ALIAS, REGISTRY_PORT = "gpufleet-lab-registry", "lab-registry", 5000
REGISTRY_LOCAL_PORT = 5100  # published on 127.0.0.1 so the lab can push images into it

NODE_SSH_PORT_BASE = 2200  # gpu-node-N -> 2200+N
LB_SSH_PORT_BASE = 2250  # lb-N -> 2250+N
DB_SSH_PORT_BASE = 2290  # db-N -> 2290+N (a Milvus host of its own: `gpufleet lab up --data-hosts 1`)
# Services a newcomer can try from this machine, published on 127.0.0.1 only:
# lb-N's nginx (:80) on 18079+N, its Prometheus (:9090) on 19089+N; gpu-node-N's RAG app (:8080) on 18179+N.
LB_HTTP_PORT_BASE, LB_PROMETHEUS_PORT_BASE, NODE_APP_PORT_BASE = 18079, 19089, 18179
DEFAULT_NODES, DEFAULT_LBS, DEFAULT_DATA_HOSTS = 2, 1, 0


@dataclass(frozen=True)
class LabHost:
    name: str
    group: str  # "gpu_nodes", "lb" or "vector_db" (a Milvus host of its own)
    ssh_port: int

    @property
    def number(self) -> int:
        return int(self.name.rsplit("-", 1)[1])

    def service_ports(self) -> dict[int, int]:
        """{port inside the host: port on 127.0.0.1} for the services published to this machine."""
        if self.group == "lb":
            return {80: LB_HTTP_PORT_BASE + self.number, 9090: LB_PROMETHEUS_PORT_BASE + self.number}
        if self.group == "gpu_nodes":
            return {8080: NODE_APP_PORT_BASE + self.number}
        return {}  # db-1's Milvus is for the lab network only; the scale bench's hosts publish nothing

    def connection_data(self) -> dict:
        return {
            "ssh_hostname": "127.0.0.1",
            "ssh_port": self.ssh_port,
            "ssh_user": "root",
            "ssh_key": str(SSH_KEY),
            "ssh_known_hosts_file": str(KNOWN_HOSTS),
            "ssh_allow_agent": False,
            "ssh_look_for_keys": False,
        }


def lab_hosts(nodes: int = DEFAULT_NODES, lbs: int = DEFAULT_LBS, data_hosts: int = DEFAULT_DATA_HOSTS) -> list[LabHost]:
    """The lab's hosts: GPU nodes, load balancers, and at most one Milvus host of its own (db-1:
    the fleet has one Milvus, gpufleet/fleet_checks.py)."""
    if not 1 <= nodes <= 40 or not 0 <= lbs <= 9 or not 0 <= data_hosts <= 1:
        raise ValueError(f"lab size out of range: nodes={nodes} (1..40), load balancers={lbs} (0..9), "
                         f"data hosts={data_hosts} (0..1)")
    return [LabHost(f"gpu-node-{i}", "gpu_nodes", NODE_SSH_PORT_BASE + i) for i in range(1, nodes + 1)] + [
        LabHost(f"lb-{i}", "lb", LB_SSH_PORT_BASE + i) for i in range(1, lbs + 1)
    ] + [LabHost(f"db-{i}", "vector_db", DB_SSH_PORT_BASE + i) for i in range(1, data_hosts + 1)]


def write_hosts_file(hosts: list[LabHost]) -> None:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    HOSTS_FILE.write_text(json.dumps([asdict(h) for h in hosts], indent=2) + "\n")


def read_hosts_file() -> list[LabHost] | None:
    """The hosts of the running lab, or None when no lab has been started."""
    try:
        return [LabHost(**h) for h in json.loads(HOSTS_FILE.read_text())]
    except FileNotFoundError:
        return None


VECTOR_DB_NODE = "gpu-node-2"


def current_or_default_hosts() -> list[LabHost]:
    return read_hosts_file() or lab_hosts()


def inventory_groups() -> dict[str, list[tuple[str, dict]]]:
    """{group: [(host, connection data)]} for inventory/lab.py."""
    groups: dict[str, list[tuple[str, dict]]] = {"gpu_nodes": [], "lb": [], "vector_db": []}
    # The lab's repository key is made per checkout (lab/.state), so its pin is host data here.
    pin = {"nvidia_repo_key_fingerprint": REPO_KEY_FINGERPRINT.read_text().strip()} \
        if REPO_KEY_FINGERPRINT.exists() else {}
    for host in current_or_default_hosts():
        groups[host.group].append((host.name, {**host.connection_data(), **pin}))
    if groups["vector_db"]:  # a Milvus host of its own, as production runs it
        return groups
    # Else Milvus on a GPU node, as a small fleet runs it: gpu-node-2 (the node the drift cases
    # change), or the only one.
    names = [name for name, _ in groups["gpu_nodes"]]
    groups["vector_db"] = [VECTOR_DB_NODE if VECTOR_DB_NODE in names else names[0]] if names else []
    return groups


def lab_group_data() -> dict:
    """group_data/lab.py's values, as pyinfra reads them (the file is plain Python assignments)."""
    import runpy

    values = runpy.run_path(str(PROJECT_ROOT / "group_data" / "lab.py"))
    return {k: v for k, v in values.items() if not k.startswith("_")}
