"""Catalog of bad inputs (issue 10): each is refused by `gpufleet validate` and by the deploy, before any host is contacted.

Every case writes an inventory (and, where the case needs them, group_data files or secret files)
under tmp_path, then runs

- the real `gpufleet validate INVENTORY --json` CLI: exit 1, and an error naming the host, the
  key, the value and what was expected;
- the real `pyinfra -y INVENTORY deploy.py` CLI, in-process from the repository root, with every
  pyinfra execution connector replaced by a recorder: exit 1, the same host/key/expectation in
  its output, no traceback, and **no call at the connector** (no connect, no command, no file).

`test_the_recorder_sees_a_deploy_that_goes_ahead` is the control: a valid inventory reaches the
connector, so an empty recording means something.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gpufleet import PROJECT_ROOT
from gpufleet.cli import main

HF = "hf_" + "Qx7" * 12  # a secret-looking token: it must never be printed
KEY = "sk-" + "Zq9" * 10


def node(i: int, **data: Any) -> tuple[str, dict]:
    return (f"gpu-node-0{i}", {"ssh_hostname": f"10.40.1.1{i}", "private_address": f"10.40.1.1{i}", **data})


def lb(i: int, **data: Any) -> tuple[str, dict]:
    return (f"lb-0{i}", {"ssh_hostname": f"10.40.0.2{i}", "private_address": f"10.40.0.2{i}", **data})


def inventory(nodes: list | None = None, lbs: list | None = None, extra: str = "") -> str:
    nodes = [node(1), node(2)] if nodes is None else nodes
    lbs = [lb(1)] if lbs is None else lbs
    text = (f"gpu_nodes = {nodes!r}\n" if nodes else "") + (f"lb = {lbs!r}\n" if lbs else "")
    return text + extra


@dataclass
class Case:
    id: str
    host: str
    key: str
    value: str  # a fragment of the value as shown
    expected: str  # a fragment of what was expected
    data: dict | Callable[[Path], dict] = field(default_factory=dict)  # gpu-node-01's data
    text: Callable[[Path], str] | None = None  # the whole inventory instead
    files: dict[str, str | bytes] = field(default_factory=dict)  # more files under tmp_path
    secret: str | None = None  # must appear in no output

    def write(self, tmp: Path) -> Path:
        for name, content in self.files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        data = self.data(tmp) if callable(self.data) else self.data
        text = self.text(tmp) if self.text else inventory([node(1, **data), node(2)])
        inv = tmp / "fleet.py"
        inv.write_text(text)
        return inv


def secret_file(name: str, content: str | bytes | None, key: str = "vllm_hf_token_file"):
    """Data naming a control-side secret file under tmp_path (None: the file does not exist)."""
    def data(tmp: Path) -> dict:
        path = tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif content == "<dir>":
            path.mkdir()
        elif content is not None:
            path.write_text(content)
        return {key: str(path)}
    return data


def tls_files(tmp: Path, matching: bool = True) -> dict:
    """lb data naming a real certificate and key under tmp_path (``matching=False``: another key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lb-01")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    (tmp / "lb.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "lb.key").write_bytes((key if matching else other).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {"lb_tls_cert_file": str(tmp / "lb.crt"), "lb_tls_key_file": str(tmp / "lb.key")}


BIG_CONFIG = json.dumps({"model_type": "qwen3", "hidden_size": 5120, "intermediate_size": 25600,
                         "num_hidden_layers": 64, "num_attention_heads": 64, "num_key_value_heads": 8,
                         "head_dim": 128, "vocab_size": 151936, "max_position_embeddings": 40960})
APP = {"app_image": "registry.example/rag-app:1"}

CASES = [
    # --- the inventory's shape -----------------------------------------------------------------
    Case("host-listed-twice", "gpu-node-01", "groups", "gpu_nodes x2", "listed once in gpu_nodes",
         text=lambda t: inventory([node(1), node(2), node(1, vllm_port=8001)])),
    Case("two-nodes-one-private-address", "gpu-node-02", "private_address", "10.40.1.11", "no other host has",
         text=lambda t: inventory([node(1), node(2, private_address="10.40.1.11")])),
    Case("misspelt-group-gpu_node", "gpu-node-02", "groups", "gpu_node", "did you mean gpu_nodes",
         text=lambda t: inventory([node(1)]) + f"gpu_node = {[node(2)]!r}\n"),
    Case("misspelt-group-lbs", "lb-02", "groups", "lbs", "did you mean lb",
         text=lambda t: inventory() + f"lbs = {[lb(2)]!r}\n"),
    Case("host-in-no-role-group", "mon-01", "groups", "monitoring", "a role group: gpu_nodes, lb or vector_db",
         text=lambda t: inventory() + "monitoring = [('mon-01', {'private_address': '10.40.2.1'})]\n"),
    Case("app-with-no-milvus-host", "gpu-node-01", "app_image", "registry.internal/rag-app:1.4.2",
         "a host in inventory group vector_db",
         text=lambda t: inventory([node(1, app_image="registry.internal/rag-app:1.4.2")])),
    Case("two-milvus-hosts", "gpu-node-02", "groups", "vector_db", "one host in vector_db (also gpu-node-01)",
         text=lambda t: inventory(extra="vector_db = ['gpu-node-01', 'gpu-node-02']\n")),
    Case("milvus-on-a-load-balancer", "lb-01", "groups", "vector_db", "not on a load balancer",
         text=lambda t: inventory(extra="vector_db = ['lb-01']\n")),
    Case("host-in-gpu_nodes-and-lb", "gpu-node-01", "groups", "lb", "one role: gpu_nodes or lb, not both",
         text=lambda t: inventory(lbs=[lb(1), node(1)])),
    Case("misspelt-group_data-file", "(group_data)", "group_data/gpu_node.py", "gpu_node", "did you mean gpu_nodes",
         files={"group_data/gpu_node.py": "gpu_count = 2\n"}),
    Case("lbs-but-no-gpu-node", "lb-01", "groups", "lb", "a host in gpu_nodes", text=lambda t: inventory(nodes=[])),
    Case("host-name-underscores", "gpu_node_01", "inventory name", "gpu_node_01", "lower-case DNS name",
         text=lambda t: inventory([("gpu_node_01", node(1)[1]), node(2)])),
    Case("host-name-upper-case-dot-dash", "GPU-01.-x", "inventory name", "GPU-01.-x", "lower-case DNS name",
         text=lambda t: inventory([("GPU-01.-x", node(1)[1]), node(2)])),
    # --- addresses ---------------------------------------------------------------------------------
    Case("private-address-300", "gpu-node-01", "private_address", "10.40.1.300", "IP address literal",
         data={"private_address": "10.40.1.300"}),
    Case("private-address-empty", "gpu-node-01", "private_address", '""', "IP address literal",
         data={"private_address": ""}),
    Case("private-address-a-name", "gpu-node-01", "private_address", "gpu-node-01.internal", "IP address literal",
         data={"private_address": "gpu-node-01.internal"}),
    Case("private-address-ipv6", "gpu-node-01", "private_address", "fd00::11", "IPv4 only for now",
         data={"private_address": "fd00::11"}),
    Case("private-address-missing-on-node", "gpu-node-01", "private_address", "None", "the host's private IP",
         text=lambda t: inventory([("gpu-node-01", {"ssh_hostname": "10.40.1.11"}), node(2)])),
    Case("private-address-missing-on-lb", "lb-01", "private_address", "None", "the host's private IP",
         text=lambda t: inventory(lbs=[("lb-01", {"ssh_hostname": "10.40.0.21"})])),
    Case("metrics-listen-address-not-ip", "gpu-node-01", "metrics_listen_address", "eth0", "IP address literal",
         data={"metrics_listen_address": "eth0"}),
    # --- the model ---------------------------------------------------------------------------------
    Case("vllm-model-empty", "gpu-node-01", "vllm_model", '""', "non-empty name", data={"vllm_model": ""}),
    Case("served-model-name-empty", "gpu-node-01", "vllm_served_model_name", '""', "non-empty name",
         data={"vllm_served_model_name": ""}),
    Case("served-model-name-spaces", "gpu-node-01", "vllm_served_model_name", "my model", "without spaces",
         data={"vllm_served_model_name": "my model"}),
    Case("served-model-name-shell", "gpu-node-01", "vllm_served_model_name", "qwen$(reboot)", "letters, digits",
         data={"vllm_served_model_name": "qwen$(reboot)"}),
    Case("model-planner-does-not-know", "gpu-node-01", "vllm_model", "Qwen/Qwen3-70B", "vllm_model_config",
         data={"vllm_model": "Qwen/Qwen3-70B"}),
    Case("model-local-path-without-config", "gpu-node-01", "vllm_model", "/models/my-finetune", "vllm_model_config",
         data={"vllm_model": "/models/my-finetune"}),
    Case("model-config-file-missing", "gpu-node-01", "vllm_model_config", "nowhere/config.json", "readable config.json",
         data=lambda t: {"vllm_model": "/models/x", "vllm_model_config": str(t / "nowhere" / "config.json")}),
    Case("model-config-fields-incomplete", "gpu-node-01", "vllm_model_config", "num_hidden_layers",
         "fields including hidden_size", data={"vllm_model": "/models/x", "vllm_model_config": {
             "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 1024}}),
    Case("model-config-does-not-fit", "gpu-node-01", "vllm_model", "/models/big-bf16", "weights need",
         data=lambda t: {"vllm_model": "/models/big-bf16", "vllm_quantization": None,
                         "vllm_model_config": str(t / "big" / "config.json")},
         files={"big/config.json": BIG_CONFIG}),
    Case("model-url-without-sha256", "gpu-node-01", "vllm_model_sha256", "None", "the archive's sha256",
         data={"vllm_model_source": "url", "vllm_model_url": "http://models.internal/qwen3.tar"}),
    Case("model-sha256-not-hex", "gpu-node-01", "vllm_model_sha256", "9f86d08", "64 lowercase hex digits",
         data={"vllm_model_source": "url", "vllm_model_url": "http://models.internal/qwen3.tar",
               "vllm_model_sha256": "9f86d08"}),
    Case("model-url-with-credentials", "gpu-node-01", "vllm_model_url", "***", "without credentials",
         data={"vllm_model_source": "url", "vllm_model_url": "http://svc:Hunter2Pw@models.internal/qwen3.tar",
               "vllm_model_sha256": "a" * 64}, secret="Hunter2Pw"),
    Case("model-path-from-the-hub", "gpu-node-01", "vllm_model_source", "hub", "is a path, not a hub repository",
         data={"vllm_model": "/models/x", "vllm_model_config": {"model_type": "qwen3", "vocab_size": 1024,
               "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 32}}),
    # --- secrets and flags on the command line --------------------------------------------------
    Case("extra-args-api-key", "gpu-node-01", "vllm_extra_args", "--api-key", "use vllm_api_key_file",
         data={"vllm_extra_args": ["--api-key", KEY]}, secret=KEY),
    Case("extra-args-hf-token-inline", "gpu-node-01", "vllm_extra_args", "--hf-token=***", "use vllm_hf_token_file",
         data={"vllm_extra_args": [f"--hf-token={HF}"]}, secret=HF),
    Case("extra-args-api-key-underscore", "gpu-node-01", "vllm_extra_args", "--api_key", "use vllm_api_key_file",
         data={"vllm_extra_args": ["--api_key", "TopSecretValue123"]}, secret="TopSecretValue123"),
    Case("extra-args-hf-token-underscore-inline", "gpu-node-01", "vllm_extra_args", "--hf_token=***",
         "use vllm_hf_token_file", data={"vllm_extra_args": ["--hf_token=TopSecretValue123"]},
         secret="TopSecretValue123"),
    Case("extra-args-port", "gpu-node-01", "vllm_extra_args", "--port", "set by the deploy from vllm_port",
         data={"vllm_extra_args": ["--port", "9000"]}),
    Case("extra-args-host", "gpu-node-01", "vllm_extra_args", "--host=0.0.0.0", "no --host",
         data={"vllm_extra_args": ["--host=0.0.0.0"]}),
    Case("extra-args-tp-twice", "gpu-node-01", "vllm_extra_args", "--tensor-parallel-size",
         "set by the deploy from vllm_tensor_parallel_size", data={"vllm_extra_args": ["--tensor-parallel-size", "1"]}),
    Case("extra-args-secret-value", "gpu-node-01", "vllm_extra_args", "***", "secret-looking value",
         data={"vllm_extra_args": ["--lora-modules", HF]}, secret=HF),
    Case("vllm-env-hf-token", "gpu-node-01", "vllm_env", "HF_TOKEN", "no secrets (HF_TOKEN)",
         data={"vllm_env": {"HF_TOKEN": HF}}, secret=HF),
    Case("vllm-env-api-key", "gpu-node-01", "vllm_env", "VLLM_API_KEY", "no secrets (VLLM_API_KEY)",
         data={"vllm_env": {"VLLM_API_KEY": KEY}}, secret=KEY),
    Case("vllm-env-pgpassword", "gpu-node-01", "vllm_env", "PGPASSWORD", "no secrets (PGPASSWORD)",
         data={"vllm_env": {"PGPASSWORD": "TopSecretValue123"}}, secret="TopSecretValue123"),
    Case("app-env-mysql-pwd", "gpu-node-01", "app_env", "MYSQL_PWD", "no secrets (MYSQL_PWD)",
         data={**APP, "app_env": {"MYSQL_PWD": "TopSecretValue123"}}, secret="TopSecretValue123"),
    Case("app-env-secret", "gpu-node-01", "app_env", "OPENAI_API_KEY", "no secrets (OPENAI_API_KEY)",
         data={**APP, "app_env": {"OPENAI_API_KEY": KEY}}, secret=KEY),
    # --- debugging settings in production -------------------------------------------------------
    Case("env-nccl-p2p-level", "gpu-node-01", "vllm_env", "NCCL_P2P_LEVEL=SYS", "topology detection",
         data={"vllm_env": {"NCCL_P2P_LEVEL": "SYS"}}),
    Case("env-vllm-test", "gpu-node-01", "vllm_env", "VLLM_TEST_FORCE_FP8_MARLIN=1", "test-suite switch",
         data={"vllm_env": {"VLLM_TEST_FORCE_FP8_MARLIN": "1"}}),
    Case("env-cuda-launch-blocking", "gpu-node-01", "vllm_env", "CUDA_LAUNCH_BLOCKING=1", "serialises every",
         data={"vllm_env": {"CUDA_LAUNCH_BLOCKING": "1"}}),
    Case("env-nccl-debug-info", "gpu-node-01", "vllm_env", "NCCL_DEBUG=INFO", "allow_debug_settings",
         data={"vllm_env": {"NCCL_DEBUG": "INFO"}}),
    # --- lists and replicas --------------------------------------------------------------------------
    Case("vllm-replicas-empty", "gpu-node-01", "vllm_replicas", "[]", "at least one replica",
         data={"vllm_replicas": []}),
    Case("supported-os-empty", "gpu-node-01", "supported_os", "[]", "at least one", data={"supported_os": []}),
    Case("supported-os-loose", "gpu-node-01", "supported_os", "debian", "like 'Debian 12'",
         data={"supported_os": ["debian"]}),
    Case("app-target-lb-without-lb", "gpu-node-01", "app_vllm_target", "lb", "a host in group lb",
         text=lambda t: inventory([node(1, **APP, app_vllm_target="lb"), node(2)], lbs=[])),
    Case("app-target-lb-with-tls-lb", "gpu-node-01", "app_vllm_target", "lb", "serves TLS only",
         text=lambda t: inventory([node(1, **APP, app_vllm_target="lb"), node(2)], lbs=[lb(1, **tls_files(t))])),
    # --- TLS and the API key at the lb ------------------------------------------------------------
    Case("tls-cert-without-key", "lb-01", "lb_tls_key_file", "None", "set together with lb_tls_cert_file",
         text=lambda t: inventory(lbs=[lb(1, lb_tls_cert_file=tls_files(t)["lb_tls_cert_file"])])),
    Case("tls-key-not-the-certificates", "lb-01", "lb_tls_key_file", "lb.key", "they do not match",
         text=lambda t: inventory(lbs=[lb(1, **tls_files(t, matching=False))])),
    Case("tls-cert-not-pem", "lb-01", "lb_tls_cert_file", "lb.crt", "a PEM file with a CERTIFICATE block",
         files={"lb.crt": "not a certificate\n"},
         text=lambda t: inventory(lbs=[lb(1, lb_tls_cert_file=str(t / "lb.crt"), lb_tls_key_file=str(t / "lb.crt"))])),
    Case("api-key-at-lb-without-vllm-key", "lb-01", "lb_require_api_key", "True", "vllm_api_key_file set",
         text=lambda t: inventory(lbs=[lb(1, lb_require_api_key=True)])),
    # --- control-side secret files ----------------------------------------------------------------
    Case("token-file-missing", "gpu-node-01", "vllm_hf_token_file", "hf-token", "not found",
         data=secret_file("hf-token", None)),
    Case("token-file-empty", "gpu-node-01", "vllm_hf_token_file", "hf-token", "it is empty",
         data=secret_file("hf-token", "\n")),
    Case("token-file-is-a-directory", "gpu-node-01", "vllm_hf_token_file", "hf-token", "not a directory",
         data=secret_file("hf-token", "<dir>")),
    Case("api-key-file-not-text", "gpu-node-01", "vllm_api_key_file", "api-key", "readable UTF-8",
         data=secret_file("api-key", b"\xff\xfe\x00secret", key="vllm_api_key_file")),
    Case("api-key-file-two-lines", "gpu-node-01", "vllm_api_key_file", "api-key", "it has 2",
         data=secret_file("api-key", f"{KEY}\n{KEY}\n", key="vllm_api_key_file"), secret=KEY),
    Case("token-file-relative-path", "gpu-node-01", "vllm_hf_token_file", "secrets/hf-token", "absolute or ~/ path",
         data={"vllm_hf_token_file": "secrets/hf-token"}),
    # --- Milvus authentication (gpufleet/settings_data.py, fleet_checks.py) -----------------------
    Case("milvus-without-authentication-by-omission", "gpu-node-02", "milvus_root_password_file", "None",
         "milvus_authentication = False",
         text=lambda t: inventory([node(1), node(2, milvus_root_password_file=None)], extra="vector_db = ['gpu-node-02']\n")),
    Case("milvus-app-without-app-password-file", "gpu-node-02", "milvus_app_password_file", "None",
         "the RAG app's Milvus password",
         text=lambda t: inventory([node(1, **APP), node(2, milvus_app_password_file=None)],
                                  extra="vector_db = ['gpu-node-02']\n")),
    Case("milvus-app-given-roots-password-file", "gpu-node-02", "milvus_app_password_file", "milvus-root-password",
         "other than milvus_root_password_file",
         text=lambda t: inventory([node(1, **APP), node(2, milvus_app_password_file="~/.config/gpufleet/milvus-root-password")],
                                  extra="vector_db = ['gpu-node-02']\n")),
    Case("milvus-root-password-too-short", "gpu-node-02", "milvus_root_password_file", "milvus-root",
         "6 to 256 characters", files={"milvus-root": "Zq9Zq\n"}, secret="Zq9Zq",
         text=lambda t: inventory([node(1), node(2, milvus_root_password_file=str(t / "milvus-root"))],
                                  extra="vector_db = ['gpu-node-02']\n")),
    Case("milvus-app-password-file-two-lines", "gpu-node-02", "milvus_app_password_file", "milvus-app", "it has 2",
         files={"milvus-app": f"{KEY}\n{KEY}\n"}, secret=KEY,
         text=lambda t: inventory([node(1, **APP), node(2, milvus_app_password_file=str(t / "milvus-app"))],
                                  extra="vector_db = ['gpu-node-02']\n")),
    Case("milvus-root-password-file-missing", "gpu-node-02", "milvus_root_password_file", "nowhere", "not found",
         text=lambda t: inventory([node(1), node(2, milvus_root_password_file="/nowhere/milvus-root-password")],
                                  extra="vector_db = ['gpu-node-02']\n")),
    Case("milvus-password-file-relative-path", "gpu-node-01", "milvus_app_password_file", "secrets/milvus-app",
         "absolute or ~/ path", data={"milvus_app_password_file": "secrets/milvus-app"}),
    # --- the NVIDIA repository and the pins -----------------------------------------------------------
    Case("apt-mirror-shell", "gpu-node-01", "apt_mirror", "http://mirror.internal/$(id)", "http:// or https:// URL",
         data={"apt_mirror": "http://mirror.internal/$(id)"}),
    Case("apt-mirror-newline", "gpu-node-01", "apt_mirror", "http://mirror.internal", "http:// or https:// URL",
         data={"apt_mirror": "http://mirror.internal\nTypes: deb"}),
    Case("apt-mirror-with-credentials", "gpu-node-01", "apt_mirror", "***", "without credentials",
         data={"apt_mirror": "http://svc:Hunter2Pw@mirror.internal/"}, secret="Hunter2Pw"),
    Case("repo-key-name-a-path", "gpu-node-01", "nvidia_repo_key_name", "../keys/x.pub", "a file name",
         data={"nvidia_repo_key_name": "../keys/x.pub"}),
    Case("nccl-version-trailing-newline", "gpu-node-01", "nccl_version", "2.27.7", "exact NCCL version",
         data={"nccl_version": "2.27.7\n"}),
    Case("image-pin-trailing-newline", "gpu-node-01", "vllm_image", "vllm/vllm-openai:v0.20.1", "explicit tag",
         data={"vllm_image": "vllm/vllm-openai:v0.20.1\n"}),
    # --- docker daemon.json ----------------------------------------------------------------------
    Case("daemon-json-unknown-key", "gpu-node-01", "docker_daemon_config", "log-drvier", "a daemon.json key dockerd",
         data={"docker_daemon_config": {"log-drvier": "json-file"}}),
    Case("daemon-json-log-opts-number", "gpu-node-01", "docker_daemon_config", "max-file",
         "an object of strings", data={"docker_daemon_config": {"log-opts": {"max-file": 3}}}),
    Case("daemon-json-bool-as-string", "gpu-node-01", "docker_daemon_config", "live-restore", "true or false",
         data={"docker_daemon_config": {"live-restore": "yes"}}),
    Case("daemon-json-runtimes", "gpu-node-01", "docker_daemon_config", "runtimes", "the deploy sets itself",
         data={"docker_daemon_config": {"runtimes": {"crun": {"path": "/usr/bin/crun"}}}}),
    Case("daemon-json-hosts", "gpu-node-01", "docker_daemon_config", "tcp://", "-H fd://",
         data={"docker_daemon_config": {"hosts": ["tcp://0.0.0.0:2375"]}}),
    # --- Python errors in the inventory or group_data ------------------------------------------------
    Case("inventory-syntax-error", "(file)", "fleet.py:2", "SyntaxError", "valid Python",
         text=lambda t: "gpu_nodes = [\n  ('gpu-node-01', {'private_address': '10.40.1.11'}\n"),
    Case("inventory-name-error", "(file)", "fleet.py:3", "NameError", "valid Python",
         text=lambda t: inventory() + "extra = undefined_name\n"),
    Case("group-data-syntax-error", "(file)", "group_data/gpu_nodes.py:1", "SyntaxError", "valid Python",
         files={"group_data/gpu_nodes.py": "gpu_count = = 2\n"}),
]


# ------------------------------------------------------------------------------------- harness ----
class Recorder(list):
    """(host, call) for every call that reached a connector; ``connect_ok`` lets connecting succeed."""

    connect_ok = False


@pytest.fixture
def recorder(monkeypatch):
    """Every pyinfra execution connector replaced: calls are recorded, nothing reaches a host."""
    from pyinfra.api.connectors import get_execution_connectors
    from pyinfra.api.exceptions import ConnectError

    calls = Recorder()

    def record(what):
        def method(self, *args, **kwargs):
            calls.append((self.host.name, what))
            if what == "connect" and not calls.connect_ok:
                raise ConnectError("recording connector: not connecting")
            if what == "run_shell_command":
                raise ConnectError("recording connector: no commands")
            return None if what == "connect" else False
        return method

    for cls in set(get_execution_connectors().values()):
        for what in ("connect", "run_shell_command", "put_file", "get_file", "rsync"):
            monkeypatch.setattr(cls, what, record(what))
    return calls


@contextmanager
def _pyinfra_cli_sandbox():
    """pyinfra's CLI sets process-wide state (log handlers, contexts, warning filters): put it back."""
    import logging

    import pyinfra
    from pyinfra.context import ctx_config, ctx_host, ctx_inventory, ctx_state

    log = logging.getLogger("pyinfra")
    saved = (list(log.handlers), log.level, log.propagate, pyinfra.is_cli)
    contexts = [(c, c.get()) for c in (ctx_state, ctx_config, ctx_host, ctx_inventory)]
    try:
        with warnings.catch_warnings():
            pyinfra.is_cli = True
            yield
    finally:
        log.handlers[:], log.level, log.propagate, pyinfra.is_cli = saved
        for ctx, value in contexts:
            ctx.set(value)


def deploy(inventory_path: Path, cwd: Path = PROJECT_ROOT, deploy_file: str = "deploy.py"):
    """`pyinfra -y INVENTORY deploy.py`, in-process, as `make deploy` runs it."""
    from pyinfra_cli.cli import cli

    here = os.getcwd()
    os.chdir(cwd)
    try:
        with _pyinfra_cli_sandbox():
            return CliRunner().invoke(cli, ["-y", str(inventory_path), deploy_file])
    finally:
        os.chdir(here)


def validate(inventory_path: Path, *args: str):
    return CliRunner().invoke(main, ["validate", str(inventory_path), *args], catch_exceptions=False)


def matching(errors: list[dict], case: Case) -> list[dict]:
    return [e for e in errors if e["host"] == case.host and (e["key"] == case.key or e["key"].endswith("/" + case.key))
            and case.value in json.dumps(e["value"]) + str(e["value"]) and case.expected in e["expected"]]


# --------------------------------------------------------------------------------------- tests ----
def test_the_catalog_has_at_least_40_distinct_cases():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_by_validate_and_by_the_deploy_before_any_host(case, tmp_path, monkeypatch, recorder):
    monkeypatch.chdir(PROJECT_ROOT)
    inv = case.write(tmp_path)

    checked = validate(inv, "--json")
    assert checked.exit_code == 1, checked.output
    report = json.loads(checked.stdout)
    assert report["ok"] is False
    assert matching(report["errors"], case), json.dumps(report["errors"], indent=1)

    table = validate(inv)
    assert table.exit_code == 1 and case.host in table.stderr and case.expected in table.stderr

    deployed = deploy(inv)
    out = deployed.output
    assert deployed.exit_code == 1, out
    assert "no host was" in out, out  # gpufleet's refusal, not some later failure
    for fragment in (case.host, case.key, case.expected):
        assert fragment in out, (fragment, out)
    shown_in_full = all(len(repr(e["value"])) <= 60 for e in matching(report["errors"], case))  # else cut: "..."
    assert case.value.replace('"', "'") in out or not shown_in_full, (case.value, out)
    assert "Traceback" not in out
    assert recorder == [], f"hosts contacted: {recorder}"

    if case.secret:
        for text in (checked.output, table.output, out):
            assert case.secret not in text


def test_the_recorder_sees_a_deploy_that_goes_ahead(tmp_path, monkeypatch, recorder):
    """The control: a valid inventory passes validate and the deploy reaches every host's connector."""
    monkeypatch.chdir(PROJECT_ROOT)
    inv = tmp_path / "fleet.py"
    inv.write_text(inventory())
    assert validate(inv).exit_code == 0
    result = deploy(inv)
    assert result.exit_code == 1  # the recorder refuses to connect: "No hosts remaining"
    assert sorted(recorder) == [("gpu-node-01", "connect"), ("gpu-node-02", "connect"), ("lb-01", "connect")]


def test_every_error_of_an_inventory_is_reported_at_once(tmp_path, monkeypatch, recorder):
    monkeypatch.chdir(PROJECT_ROOT)
    inv = tmp_path / "fleet.py"
    inv.write_text(inventory([node(1, private_address="10.40.1.300", vllm_env={"HF_TOKEN": HF}),
                              node(2, vllm_replicas=[], docker_daemon_config={"bogus": 1})])
                   + f"gpu_node = {[node(3)]!r}\n")
    report = json.loads(validate(inv, "--json").stdout)
    found = {(e["host"], e["key"]) for e in report["errors"]}
    assert {("gpu-node-01", "private_address"), ("gpu-node-01", "vllm_env"), ("gpu-node-02", "vllm_replicas"),
            ("gpu-node-02", "docker_daemon_config"), ("gpu-node-03", "groups")} <= found
    out = deploy(inv).output
    assert all(host in out for host in ("gpu-node-01", "gpu-node-02", "gpu-node-03")) and HF not in out
    assert recorder == []


def test_a_debugging_session_is_allowed_out_loud(tmp_path, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    inv = tmp_path / "fleet.py"
    inv.write_text(inventory([node(1, vllm_env={"NCCL_DEBUG": "INFO"}), node(2)]))
    assert validate(inv).exit_code == 1
    allowed = validate(inv, "--data", "allow_debug_settings=true", "--json")
    assert allowed.exit_code == 0
    assert [w["value"] for w in json.loads(allowed.stdout)["warnings"] if w["key"] == "vllm_env"] == ["NCCL_DEBUG=INFO"]


def test_the_lab_and_production_inventories_stay_valid(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    for name in ("prod.py", "staging.py", "lab.py"):
        result = validate(PROJECT_ROOT / "inventory" / name)
        assert result.exit_code == 0, result.output


def test_a_model_described_by_its_fields_is_planned_not_skipped(monkeypatch):
    """The lab's local model path passes because its config is given, and that config is checked."""
    monkeypatch.chdir(PROJECT_ROOT)
    too_long = validate(PROJECT_ROOT / "inventory" / "lab.py", "--data", "vllm_max_model_len=4096", "--json")
    assert too_long.exit_code == 1
    assert any("max_position_embeddings 2048" in e["expected"] for e in json.loads(too_long.stdout)["errors"])


def test_validate_from_another_directory_finds_the_repository_group_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = validate(PROJECT_ROOT / "inventory" / "prod.py")
    assert found.exit_code == 0, found.output
    assert "7 hosts valid" in found.output
    stray = tmp_path / "fleet.py"
    stray.write_text(inventory())
    refused = validate(stray, "--json")
    assert refused.exit_code == 1
    [error] = json.loads(refused.stdout)["errors"]
    assert (error["key"], error["value"]) == ("group_data", str(tmp_path))
    assert "run gpufleet from the repository root" in error["expected"]


def test_deploy_run_from_another_directory_refuses_before_any_command(tmp_path, recorder):
    """Without the repository's config.py (another cwd), pyinfra connects first; deploy.py still refuses
    before a single command, instead of deploying every host without its group data."""
    recorder.connect_ok = True
    inv = tmp_path / "fleet.py"
    inv.write_text(inventory())
    result = deploy(inv, cwd=tmp_path, deploy_file=str(PROJECT_ROOT / "deploy.py"))
    assert result.exit_code == 1
    assert "run pyinfra from the repository root" in result.output
    assert {what for _, what in recorder} == {"connect"}  # connected, but no command and no file


@pytest.mark.parametrize("command", ["drift", "verify"])
def test_limit_to_an_unknown_host_is_an_error_naming_the_hosts(command, monkeypatch, recorder):
    monkeypatch.chdir(PROJECT_ROOT)
    result = CliRunner().invoke(main, [command, "inventory/prod.py", "--limit", "nosuchhost", "--json"])
    assert result.exit_code == 1
    assert '"ok": true' not in result.stdout
    assert "nosuchhost" in result.stderr and "gpu-node-01" in result.stderr and "lb-02" in result.stderr
    assert recorder == []


def test_an_inventory_file_named_like_a_role_is_not_a_misspelt_group(tmp_path, monkeypatch):
    """pyinfra puts every host in a group named after the file: `gpu.py` must not read as a typo."""
    monkeypatch.chdir(PROJECT_ROOT)
    inv = tmp_path / "gpu.py"
    inv.write_text(inventory())
    assert validate(inv).exit_code == 0
    inv = tmp_path / "gpu_node.py"  # ... but a misspelt group inside it still is one
    inv.write_text(inventory([node(1)]) + f"gpu_node = {[node(2)]!r}\n")
    report = json.loads(validate(inv, "--json").stdout)
    assert [(e["host"], e["value"]) for e in report["errors"]] == [("gpu-node-02", "gpu_node")]
