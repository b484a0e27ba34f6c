"""One typed, validated settings object per host, built from pyinfra's resolved ``host.data``.

Keys are flat, in pyinfra/Ansible style (``vllm_max_model_len``), so they read the same in
group_data/*.py, in inventory tuples and on the command line (``--data vllm_port=8001``).

Everything a host's data may say is a field of :class:`HostSettings`. Unknown keys, wrong
types, out-of-range values and inconsistent combinations are errors; each error names the key,
the value and what was expected, and :func:`validate_host_data` returns all of them at once so
that an operator fixes a bad inventory in one pass.

Keys that belong to pyinfra itself (connector data such as ``ssh_port``, global-argument
defaults such as ``_sudo``) pass through unchecked: pyinfra validates those.

HostSettings is composed of one mixin per component, each key with its one default there:
settings_vllm.py (vLLM), settings_weights.py (model weights), settings_data.py (Milvus, the RAG
app), settings_edge.py (nginx, monitoring), settings_rollout.py (serving interruptions), and
settings_input.py (refusals of bad input across them). This module holds the host itself: its
hardware, the NVIDIA/Docker/NCCL stack and the base system. Defaults follow the seed where the
seed is right and DESIGN.md where it is not (open kernel modules on Blackwell, no debug flags in
production defaults). Every version pin's fleet value lives in group_data/all.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpufleet.settings_data import DataSettings
from gpufleet.settings_edge import EdgeSettings
from gpufleet.settings_input import InputSettings, plain_http_url, redact
from gpufleet.settings_rollout import RolloutSettings
from gpufleet.settings_vllm import VllmSettings
from gpufleet.settings_weights import WeightsSettings
from gpufleet.versions import exact_debian_version

# Keys pyinfra owns (connectors, global arguments). They are not ours to validate.
PYINFRA_KEY_PREFIXES = ("_", "ssh_", "dockerssh_", "podman_", "chroot_", "local_", "fake_", "winrm_")
PYINFRA_KEYS = {"docker_platform", "docker_architecture"}  # @docker connector data; docker_* is ours

DRIVER_VERSION = re.compile(r"\d{3}\.\d{2,3}(\.\d{2,3})?")
NCCL_VERSION = re.compile(r"\d+\.\d+\.\d+")
CUDA_VERSION = re.compile(r"\d+\.\d+")
COMPUTE_CAPABILITY = re.compile(r"^\d+\.\d+$")
REPO_KEY_NAME = re.compile(r"[A-Za-z0-9._-]+")

# First branch with Blackwell (compute capability >= 10) support, open modules only.
BLACKWELL_MIN_DRIVER_BRANCH = 570

class LabGpu(BaseModel):
    """A GPU the lab's stand-in ``nvidia-smi`` reports (lab data only)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "NVIDIA GeForce RTX 5090"
    memory_mib: int = Field(32607, gt=0)
    compute_capability: str = Field("12.0", pattern=COMPUTE_CAPABILITY.pattern)
    pci_bus_id: str | None = None


class HostSettings(VllmSettings, WeightsSettings, DataSettings, EdgeSettings, InputSettings, RolloutSettings):
    """Everything a host's data may say. See group_data/all.py for the fleet's values.

    Keys of the serving roles live in mixins beside this module (settings_vllm.py,
    settings_weights.py, settings_data.py, settings_edge.py, settings_rollout.py), the refusals of
    bad input in settings_input.py; all of them are one flat namespace.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    # --- hardware the node is expected to have -------------------------------------------------
    gpu_count: int = Field(0, ge=0, le=16)
    gpu_name: str = "NVIDIA GeForce RTX 5090"
    gpu_memory_gib: float = Field(32.0, gt=0, le=1024)
    gpu_compute_capability: str = Field("12.0", pattern=COMPUTE_CAPABILITY.pattern)
    # Address the other hosts use to reach this one (LB -> vLLM, app -> Milvus). Default: the
    # inventory name, which must then resolve on the private network.
    private_address: str | None = None

    # --- NVIDIA driver / toolkit / NCCL pins (values live in group_data/all.py) ------------------
    nvidia_driver_branch: int = Field(580, ge=400, le=999)
    nvidia_driver_version: str = "580.95.05"
    nvidia_kernel_modules: Literal["open", "proprietary"] = "open"
    nvidia_driver_packages: list[str] = Field(default_factory=lambda: ["nvidia-open"], min_length=1)
    nvidia_driver_package_revision: str = Field("1", pattern=r"^[0-9A-Za-z.+~]+$")
    nvidia_repo_key_name: str = "3bf863cc.pub"  # the CUDA repository's signing key, beside its index
    # Its fingerprint: the fetched key must be this one, and a keyring holding another is replaced.
    nvidia_repo_key_fingerprint: str = Field(default="EB693B3035CD5710E231E123A4B469963BF863CC",
                                             pattern=r"^[0-9A-F]{40}$")
    nvidia_proc_version_path: str = "/proc/driver/nvidia/version"  # where the loaded module reports
    nvidia_kernel_headers: bool = True  # linux-headers-$(uname -r) for DKMS
    unattended_upgrades_blacklist: list[str] = Field(
        default_factory=lambda: ["nvidia-", "libnvidia-", "cuda-", "libcuda", "libnccl", "nvidia-container-toolkit"])
    container_toolkit_version: str = "1.17.8-1"
    docker_engine_package: str = "docker.io"
    # A security floor, not an exact build (operations/distro_packages.py); None: unpinned, not held.
    docker_engine_min_version: str | None = None
    docker_daemon_config: dict[str, Any] = Field(default_factory=dict)  # merged into daemon.json
    verify_toolkit_image: str = "ubuntu:24.04"  # `docker run --gpus all IMAGE nvidia-smi -L`
    nccl_version: str = "2.27.7"
    nccl_cuda_version: str = "12.9"
    apt_mirror: str | None = None  # base URL that replaces NVIDIA's CUDA repository host

    # --- base system -----------------------------------------------------------------------------
    base_packages: list[str] = Field(default_factory=list)
    supported_os: list[str] = Field(default_factory=lambda: ["Debian 12", "Ubuntu 22.04", "Ubuntu 24.04"])

    # Read the PCI bus from an `lspci -x` dump instead of the bus (offline checks; the lab).
    pci_dump_file: str | None = None

    # --- preflight: what a GPU node must have before anything is installed (operations/preflight.gpu_node)
    gpu_pci_device_id: str = Field("2b85", pattern=r"^[0-9a-f]{4}$")  # of gpu_name: 10de:2b85 is GB202, RTX 5090
    pcie_min_link_width: int = Field(16, ge=1, le=32)  # a 5090 at x4 quarters the bus TP=2 all-reduces over
    # How the DKMS-built nvidia module is signed when Secure Boot is on: "none" (preflight refuses
    # the host) or "mok" (DKMS signs with its MOK key, which an operator enrolled at the console).
    secure_boot_module_signing: Literal["none", "mok"] = "none"
    # Free disk a node keeps for the next image and the next copy of the weights (a rollout needs
    # both before the old ones go). None: one copy of the planner's weights + vllm_image_disk_gib.
    preflight_free_disk_gib: float | None = Field(None, ge=0)

    # --- lab only: what the stand-in nvidia-smi reports (ignored on real hosts) ------------------
    lab_gpus: list[LabGpu] | None = None

    # ---------------------------------------------------------------- field checks ---------------
    @field_validator("gpu_compute_capability", mode="before")
    @classmethod
    def _capability_from_number(cls, v: Any) -> Any:
        # `--data gpu_compute_capability=9.0` arrives as a float (pyinfra parses values as JSON).
        return f"{v:.1f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("nvidia_driver_version")
    @classmethod
    def _driver_version_exact(cls, v: str) -> str:
        if not DRIVER_VERSION.fullmatch(v):
            raise ValueError("an exact driver version such as 580.95.05 (no wildcards or ranges)")
        return v

    @field_validator("container_toolkit_version", "docker_engine_min_version")
    @classmethod
    def _package_version_exact(cls, v: str | None) -> str | None:
        return exact_debian_version(v)

    @field_validator("apt_mirror")
    @classmethod
    def _mirror_url(cls, v: str | None) -> str | None:
        return None if v is None else plain_http_url(v, "that replaces https://developer.download.nvidia.com",
                                                     "it goes into an apt sources file and a shell command")

    @field_validator("nvidia_repo_key_name")
    @classmethod
    def _key_file_name(cls, v: str) -> str:
        if not REPO_KEY_NAME.fullmatch(v):
            raise ValueError("a file name beside the repository's index, such as 3bf863cc.pub (letters, digits, "
                             "'.', '_', '-': it is appended to the repository's URL)")
        return v

    @field_validator("nccl_version")
    @classmethod
    def _nccl_exact(cls, v: str) -> str:
        if not NCCL_VERSION.fullmatch(v):
            raise ValueError("an exact NCCL version such as 2.27.7")
        return v

    @field_validator("nccl_cuda_version")
    @classmethod
    def _cuda_exact(cls, v: str) -> str:
        if not CUDA_VERSION.fullmatch(v):
            raise ValueError("a CUDA major.minor such as 12.9")
        return v

    # ---------------------------------------------------------------- combinations ---------------
    def consistency_problems(self) -> list[tuple[str, Any, str]]:
        """Combinations of individually valid values that cannot work together."""
        problems: list[tuple[str, Any, str]] = []
        cc_major = int(self.gpu_compute_capability.split(".")[0])
        if not self.nvidia_driver_version.startswith(f"{self.nvidia_driver_branch}."):
            problems.append(
                ("nvidia_driver_version", self.nvidia_driver_version,
                 f"a version on nvidia_driver_branch {self.nvidia_driver_branch}")
            )
        if self.gpu_count and cc_major >= 10:
            if self.nvidia_driver_branch < BLACKWELL_MIN_DRIVER_BRANCH:
                problems.append(
                    ("nvidia_driver_branch", self.nvidia_driver_branch,
                     f">= {BLACKWELL_MIN_DRIVER_BRANCH} for compute capability {self.gpu_compute_capability}")
                )
            if self.nvidia_kernel_modules != "open":
                problems.append(
                    ("nvidia_kernel_modules", self.nvidia_kernel_modules,
                     f"'open': compute capability {self.gpu_compute_capability} (Blackwell) has no proprietary modules")
                )
        if self.gpu_count:
            if self.vllm_tensor_parallel_size > self.gpu_count:
                problems.append(
                    ("vllm_tensor_parallel_size", self.vllm_tensor_parallel_size,
                     f"at most gpu_count ({self.gpu_count})")
                )
            problems.extend(self._replica_problems())
            problems.extend(self._fit_problems())
        # The serving roles' own combinations (settings_vllm.py, settings_data.py, settings_edge.py).
        problems.extend(self.vllm_problems())
        # An image too old for --shutdown-timeout crash-loops on start: an error, not a warning.
        problems.extend(self.vllm_warnings())
        problems.extend(self.weights_problems())
        problems.extend(self.data_problems())
        problems.extend(self.edge_consistency_problems())
        problems.extend(self.input_problems())
        return problems

    def _fit_problems(self) -> list[tuple[str, Any, str]]:
        """A replica that cannot hold its model and one max_model_len sequence is refused."""
        from gpufleet.planner import check_fit

        reasons = check_fit(self.planner_model(), self.gpu_count, self.gpu_memory_gib, self.vllm_tensor_parallel_size,
                            self.vllm_max_model_len, self.vllm_gpu_memory_utilization, self.vllm_quantization)
        return [("vllm_model", self.vllm_model, f"a replica that fits (gpufleet plan): {r}") for r in reasons]

    def _replica_problems(self) -> list[tuple[str, Any, str]]:
        problems = []
        used_gpus: dict[int, str] = {}
        used_ports: dict[int, str] = {self.milvus_port: "milvus_port"}
        for replica in self.replicas_declared():
            shown = replica.model_dump(include={"name", "gpus", "port"})
            if len(replica.gpus) != self.vllm_tensor_parallel_size:
                problems.append(("vllm_replicas", shown,
                                 f"{self.vllm_tensor_parallel_size} GPUs (vllm_tensor_parallel_size)"))
            for gpu in replica.gpus:
                if not 0 <= gpu < self.gpu_count:
                    problems.append(("vllm_replicas", shown, f"GPU indices in 0..{self.gpu_count - 1}"))
                elif gpu in used_gpus:
                    problems.append(("vllm_replicas", shown, f"GPU {gpu} free (already used by {used_gpus[gpu]})"))
                else:
                    used_gpus[gpu] = replica.name
            if replica.port in used_ports:
                problems.append(("vllm_replicas", shown,
                                 f"port {replica.port} free (already used by {used_ports[replica.port]})"))
            used_ports[replica.port] = replica.name
        return problems

    # ---------------------------------------------------------------- derived --------------------
    def docker_data_root(self) -> str:
        """Where Docker keeps images: daemon.json's ``data-root``, else Docker's default."""
        return str(self.docker_daemon_config.get("data-root") or "/var/lib/docker")

    def preflight_disk_gib(self) -> float:
        """Free disk preflight asks of a GPU node (see ``preflight_free_disk_gib``)."""
        if self.preflight_free_disk_gib is not None:
            return self.preflight_free_disk_gib
        from gpufleet.planner import PlanError, normalise_quantization, resolve_model, weight_bytes

        try:
            model = self.planner_model()
            arch = model if not isinstance(model, str) else resolve_model(model)
            q = None if self.vllm_quantization == "compressed-tensors" else normalise_quantization(self.vllm_quantization)
            quant = arch.quantization if q is None else (None if q == "none" else q)  # as the planner reads it
            _, total, _ = weight_bytes(arch, self.vllm_tensor_parallel_size, quant)
        except (PlanError, KeyError, ValueError, TypeError):
            total = 0  # a model the planner does not know (validation says so): the image alone
        return round(total / 1024 ** 3 + self.vllm_image_disk_gib, 1)

    def warnings(self) -> list[tuple[str, Any, str]]:
        """Settings that are allowed but do not belong in production; shown, never fatal."""
        return self.input_warnings()


@dataclass(frozen=True)
class SettingsIssue:
    """One problem with one key of one host's data."""

    host: str
    key: str
    value: Any
    expected: str
    severity: Literal["error", "warning"] = "error"

    def __post_init__(self) -> None:
        # Values are printed (validate, the deploy's refusal, JSON): never with a secret in them.
        object.__setattr__(self, "value", redact(self.value))

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "key": self.key, "value": self.value,
                "expected": self.expected, "severity": self.severity}


class SettingsError(Exception):
    """The inventory's data is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[SettingsIssue]):
        self.issues = issues
        super().__init__(format_issues(issues))


def ours(data: dict[str, Any]) -> dict[str, Any]:
    """The part of a host's data that gpufleet owns (pyinfra's own keys removed)."""
    return {k: v for k, v in data.items() if not k.startswith(PYINFRA_KEY_PREFIXES) and k not in PYINFRA_KEYS}


def validate_host_data(host: str, data: dict[str, Any]) -> tuple[HostSettings | None, list[SettingsIssue]]:
    """Build one host's settings; return them (or None) with every error and warning found."""
    connection = _connection_warnings(host, data)
    settings, issues = _validate_ours(host, ours(data))
    return settings, issues + connection


def _connection_warnings(host: str, data: dict[str, Any]) -> list[SettingsIssue]:
    """pyinfra's own connection data that costs every run: a host whose own
    ``ssh_paramiko_connect_kwargs`` replaced group_data/all.py's without its ``transport_factory``
    connects without TCP_NODELAY (operations/ssh_no_delay.py)."""
    from operations.ssh_no_delay import no_delay_transport

    if "ssh_paramiko_connect_kwargs" not in data:  # data that never set it (a test's, pyinfra's default)
        return []
    connect_kwargs = data["ssh_paramiko_connect_kwargs"]
    if isinstance(connect_kwargs, dict) and connect_kwargs.get("transport_factory") is no_delay_transport:
        return []
    if isinstance(connect_kwargs, dict):
        shown = sorted(connect_kwargs)  # its keys only: paramiko's keywords include a password and a passphrase
    elif connect_kwargs is None:
        shown = None
    else:
        shown = f"a {type(connect_kwargs).__name__}"
    return [SettingsIssue(host, "ssh_paramiko_connect_kwargs", shown,
                          "transport_factory = operations.ssh_no_delay.no_delay_transport kept in it (group_data/"
                          "all.py): without it every SSH command waits ~45 ms for the host's delayed ACK", "warning")]


def _validate_ours(host: str, data: dict[str, Any]) -> tuple[HostSettings | None, list[SettingsIssue]]:
    try:
        settings = HostSettings.model_validate(data)
    except ValidationError as exc:
        issues = _issues_from_validation_error(host, data, exc)
        # Check the combinations too, with the bad keys left at their defaults, so that one
        # run reports everything. A combination involving a bad key is not reported twice.
        bad_keys = {i.key for i in issues}
        try:
            partial = HostSettings.model_validate({k: v for k, v in data.items() if k not in bad_keys})
        except ValidationError:
            return None, issues
        issues += [SettingsIssue(host, k, v, e) for k, v, e in partial.consistency_problems() if k not in bad_keys]
        return None, issues
    issues = [SettingsIssue(host, k, v, e) for k, v, e in settings.consistency_problems()]
    issues += [SettingsIssue(host, k, v, e, "warning") for k, v, e in settings.warnings()]
    return (None if any(i.severity == "error" for i in issues) else settings), issues


def _issues_from_validation_error(host: str, data: dict[str, Any], exc: ValidationError) -> list[SettingsIssue]:
    issues = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        key = loc[0] if loc else "(data)"
        value = data.get(key, err.get("input"))
        if err["type"] == "extra_forbidden":
            expected = "a known gpufleet key (see gpufleet/settings*.py); is it misspelt?"
        else:
            expected = _expected_from(err)
            if len(loc) > 1:
                expected = f"{'.'.join(loc[1:])}: {expected}"
        issues.append(SettingsIssue(host, key, value, expected))
    return issues


def _expected_from(err: dict[str, Any]) -> str:
    msg = err["msg"]
    # pydantic prefixes custom messages with "Value error, "; the rest is our "expected" text.
    return msg.removeprefix("Value error, ").removeprefix("Input should be ")


def format_issues(issues: list[SettingsIssue]) -> str:
    """A plain table: host, key, value, expected. One line per issue."""
    if not issues:
        return "no issues"
    rows = [("HOST", "KEY", "VALUE", "EXPECTED")]
    for i in issues:
        prefix = "warning: " if i.severity == "warning" else ""
        rows.append((i.host, i.key, _short(i.value), prefix + i.expected))
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    return "\n".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}" for r in rows
    )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
