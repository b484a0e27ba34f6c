"""The --report file holds no secret, host name or address the fleet knows, and still says what is wrong.

A real inventory (loaded by pyinfra's loader, the repository's group_data) with secret files on the
"control host" (tmp_path); evidence for its two GPU nodes into which the secrets, the inventory's
host names, their ssh_hostnames and addresses, and other addresses are planted wherever a node could
echo them (logs, the container's environment and command line, the kernel log, the names the node
reports for itself). The report is written by the real command (`gpufleet doctor --report`), with
only the SSH read replaced.
"""

from __future__ import annotations

import doctest
import importlib
import shutil

import pytest
from click.testing import CliRunner

from gpufleet.cli import main
from gpufleet.doctor import runner
from gpufleet.doctor.redact import Redactor
from gpufleet.fleet import load_fleet
from tests.unit.doctor_node import CONTAINER, LOGS, REPO, healthy_evidence, text

HF_TOKEN = "hf_Zq8vT3mK9pL2xW7nR4bY6cJ1dF5gH0sAeUo"
API_KEY = "correct-horse-7Qz9-battery-staple"  # no pattern could know this is a secret
WEBHOOK = "https://hooks.example.org/services/T0F4K3/B9Q2W1/pQ7rS2tU4vW6"
NODES = {"gpu-node-a": ("gpu-a.dc7.corp.example", "10.40.1.11"), "gpu-node-b": ("10.40.1.12", "10.40.1.12")}
LB = ("lb-main", "lb.dc7.corp.example", "10.40.0.21")
OTHER_ADDRESSES = ["172.17.0.2", "fd00:40::11", "192.0.2.77"]


@pytest.fixture
def fleet(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "hf-token").write_text(HF_TOKEN + "\n")
    (secrets / "api-key").write_text(API_KEY + "\n")
    (secrets / "webhook").write_text(WEBHOOK + "\n")
    repo = tmp_path / "repo"
    (repo / "inventory").mkdir(parents=True)
    shutil.copytree(REPO / "group_data", repo / "group_data", ignore=shutil.ignore_patterns("lab.py"))
    nodes = ",\n".join(f'    ("{name}", {{"ssh_hostname": "{ssh}", "private_address": "{ip}"}})'
                       for name, (ssh, ip) in NODES.items())
    (repo / "inventory/prod.py").write_text(
        f"gpu_nodes = [\n{nodes},\n]\n"
        f'lb = [("{LB[0]}", {{"ssh_hostname": "{LB[1]}", "private_address": "{LB[2]}", '
        f'"alertmanager_webhook_url_file": "{secrets / "webhook"}"}})]\n')
    overrides = {"vllm_hf_token_file": str(secrets / "hf-token"), "vllm_api_key_file": str(secrets / "api-key")}
    return load_fleet(repo / "inventory/prod.py", overrides, cwd=str(repo))


def planted(name: str, ssh: str, address: str) -> dict:
    """A crash-looping node whose evidence carries every sensitive value it could echo."""
    ev = healthy_evidence()
    ev["host"] = name
    c = ev["containers"][0]
    c["name"] = CONTAINER.replace("gpu-node-01", name)
    c.update(status="restarting", running=False, restarting=True, restart_count=5, exit_code=1)
    c["env"].update(HF_TOKEN=HF_TOKEN, VLLM_API_KEY=API_KEY, NODE_NAME=name)  # as if a reader forgot to mask
    c["cmd"] += ["--host", address]
    ev["hostnames"] = [name.replace("-node", "")]  # what `uname -n` says: not an inventory name
    ev["logs"] = {c["name"]: [
        *text(LOGS / "nccl-unhandled-cuda.log"),
        f"(APIServer pid=1) args: Namespace(host='{address}', api_key='{API_KEY}', hf_token={HF_TOKEN})",
        f"(APIServer pid=1) INFO:     {OTHER_ADDRESSES[0]}:51512 - \"POST /v1/completions HTTP/1.1\" 401 Unauthorized",
        f"connecting to [{OTHER_ADDRESSES[1]}]:8000 from {ssh} ({name}), alerts to {WEBHOOK}",
        f"Authorization: Bearer {API_KEY}",
        f"loaded {API_KEY} from /etc/gpufleet/vllm-api-key.env; health checks from {LB[1]} ({LB[0]})",
        f"{name.replace('-node', '')} systemd[1]: Started docker.service.",
    ]}
    ev["kernel_log"] = [f"[ 12.3] {name} kernel: NVRM: loading NVIDIA UNIX Open Kernel Module 580.95.05 on {ssh} "
                        f"via {OTHER_ADDRESSES[2]}"]
    ev["probes"] = {c["name"]: {**ev["probes"][CONTAINER], "nccl": {**ev["probes"][CONTAINER]["nccl"],
                                                                     "nccl_version": "2.26.2"}}}
    ev["declared"]["replicas"][0]["container"] = c["name"]
    return ev


def test_the_report_holds_no_known_secret_host_name_or_address(fleet, monkeypatch, tmp_path):
    evidences = {name: planted(name, ssh, ip) for name, (ssh, ip) in NODES.items()}
    monkeypatch.setattr(runner, "read_fleet", lambda *a, **k: (fleet, evidences, []))
    report = tmp_path / "report.md"
    result = CliRunner().invoke(main, ["doctor", "inventory/prod.py", "--report", str(report)])
    assert result.exit_code == 2, result.output
    body = report.read_text()

    sensitive = [HF_TOKEN, API_KEY, WEBHOOK, *NODES, *LB, *OTHER_ADDRESSES,
                 *(v for pair in NODES.values() for v in pair), "gpu-a", "corp.example"]
    leaked = [value for value in sensitive if value in body]
    assert leaked == []

    # ...and it still says what is wrong, on which (aliased) node, with its evidence.
    assert body.count("`replica.crash-loop`") == 2 and body.count("`nccl.version-not-pinned`") == 2
    assert "## <host-1>" in body and "## <host-2>" in body
    assert "vllm-<host-1>-vllm-0" in body
    assert "RuntimeError: NCCL error: unhandled cuda error" in body
    assert "loads NCCL 2.26.2, the pin is 2.27.7" in body
    assert "<secret>" in body and "<address>" in body
    assert "--host 0.0.0.0" in body, "the in-container bind address identifies nothing and stays"

    # The terminal output keeps host names (the operator needs them) but never a secret.
    assert "gpu-node-a" in result.output
    assert HF_TOKEN not in result.output and API_KEY not in result.output and WEBHOOK not in result.output


def test_patterns_alone_would_leak_what_only_the_fleet_knows():
    line = f"key={API_KEY[:4]} {API_KEY} on gpu-node-a"
    assert API_KEY in Redactor().all(line), "no pattern knows this key: the known values are what hide it"
    assert "gpu-node-a" in Redactor().all(line)
    hidden = Redactor(secrets=[API_KEY], hosts=["gpu-node-a"]).all(line)
    assert API_KEY not in hidden and "gpu-node-a" not in hidden


def test_patterns_catch_what_no_list_holds():
    r = Redactor()
    text_ = (f"token {HF_TOKEN} sk-{'a1' * 12} Bearer abc.def-ghi_jkl password=hunter22 "
             "https://bob:pa55w0rd@mirror.example/simple 10.9.8.7 2001:db8::1 "
             "keep: 0000:01:00.0 07:50:26 02:42:ac:11:00:02 580.95.05 127.0.0.1 max_num_batched_tokens=2048")
    out = r.all(text_)
    for gone in (HF_TOKEN, "a1a1a1a1", "abc.def-ghi_jkl", "hunter22", "pa55w0rd", "10.9.8.7", "2001:db8::1"):
        assert gone not in out
    for kept in ("0000:01:00.0", "07:50:26", "02:42:ac:11:00:02", "580.95.05", "127.0.0.1",
                 "max_num_batched_tokens=2048"):
        assert kept in out


@pytest.mark.parametrize("module", ["gpufleet.doctor.redact", "gpufleet.doctor.rules", "gpufleet.doctor.logs",
                                    "gpufleet.doctor.evidence", "operations.facts.doctor"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
