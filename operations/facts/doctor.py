"""What `gpufleet doctor` reads on a GPU node, in two shell round trips, and the parsers of it.

A node is read in few commands because each is an SSH round trip (pyinfra 3.10 runs every fact
as one): :class:`DoctorSnapshot` is one script of named sections (GPUs, driver, kernel,
PCIe, Docker, the toolkit, the vLLM containers and their logs), :class:`DoctorProbes` a second
one that looks inside each vLLM container (the NCCL vLLM loads, torch's architectures, the GPUs
and /dev/shm the container sees). Each section prints its tool's own output, then
``__gpufleet_rc=N`` (or ``__gpufleet_missing``), so a failing tool is an answer, not a failed
host; every tool that can hang (nvidia-smi on a wedged GPU, docker) runs under ``timeout``.

gpufleet.doctor.evidence runs them with a timeout per round trip through gpufleet.remote.shell
rather than ``host.get_fact``, which would turn a timeout into an empty default; the facts are
still usable as facts (``host.get_fact(DoctorSnapshot)``).

Formats (the parsers are tested on these, tests/fixtures/doctor/README says where each came from):

- ``nvidia-smi --query-gpu=... --format=csv,noheader[,nounits]`` rows, fields in the order asked;
- ``nvidia-smi --query-compute-apps=gpu_uuid,pid,process_name,used_memory``;
- ``docker inspect`` (a JSON array of container objects: State, RestartCount, Config, HostConfig);
- ``systemctl show -p Id -p NeedDaemonReload -p ActiveState UNIT`` (``Key=value`` lines);
- ``df -Pk /dev/shm`` (POSIX format: size in 1024-blocks in the second column);
- files/vllm_nccl_check.py's JSON report;
- and the existing facts' parsers for nvidia-smi, ``topo -m``, /proc/driver/nvidia/version,
  /proc/modules, Secure Boot, ``lspci -Dnnvvv`` (ACS), daemon.json and dpkg-query.
"""

from __future__ import annotations

import csv
import json
import re
import shlex

from pyinfra.api import FactBase

from operations.containers import PREVIOUS_SUFFIX

from .apt import PackageStates
from .docker import CHECK_IN_IMAGE, DAEMON_JSON, DockerDaemonConfig
from .gpu import QUERY_FIELDS, NvidiaDriver, NvidiaGpus, NvidiaTopology
from .gpu_health import throttle_causes
from .kernel import GpuKernelModules, SecureBoot
from .pci import PcieAcs
from .util import MISSING, RC, envelope, wrap_file

def wrap(tool: str, command: str) -> str:
    """Like operations.facts.util's envelope (missing marker, output, rc marker), but in *this* shell:
    the sections call the script's own time-limited helpers (``T``, ``H``), which a ``sh -c`` of the
    generic wrapper would not see."""
    return f"command -v {tool} >/dev/null 2>&1 || {{ echo {MISSING}; exit 0; }}; {{ {command}; }} 2>&1; echo \"{RC}$?\""


SECTION = "__gpufleet_doctor="
LOG_MARK = "__gpufleet_log="
PROBE_MARK = "__gpufleet_probe="
PART_MARK = "__gpufleet_part="
LOG_LINES = 80
LOG_LINE_CHARS = 400

PERF_FIELDS = ("index,pstate,utilization.gpu,memory.used,temperature.gpu,power.draw,power.limit,"
               "clocks_throttle_reasons.active")
PCIE_FIELDS = "index,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max"
APPS_FIELDS = "gpu_uuid,pid,process_name,used_memory"
UNITS = ("docker.service", "containerd.service")
TOOLKIT_BINARIES = ("nvidia-container-runtime", "nvidia-ctk", "nvidia-container-runtime-hook")
# Containers doctor looks at: gpufleet's vLLM replicas (label) and any container named like one.
VLLM_IDS = ("{ docker ps -aq --filter label=io.gpufleet.role=vllm; docker ps -aq --filter name=^vllm-; } "
            "| sort -u")
# A helper every section may use: run a command under coreutils' timeout where there is one.
PRELUDE = 'T() { if command -v timeout >/dev/null 2>&1; then timeout -k 2 "$@"; else shift; "$@"; fi; }'
# The snapshot asks nvidia-smi and docker several times. A wedged GPU or a hung dockerd would make
# each ask wait its full timeout, and the round trip would run out before the rest is read: each
# tool is probed once, and a tool that hung is skipped afterwards (its sections say so, rc 124).
PROBE_HUNG = "\n".join([
    'H() { if [ "$1" = no ]; then echo "$2 did not answer within 20 s (skipped)"; return 124; fi; }',
    "smi_up=yes; if command -v nvidia-smi >/dev/null 2>&1; then T 20 nvidia-smi -L >/dev/null 2>&1; "
    "case $? in 124|137) smi_up=no ;; esac; fi",
    "docker_up=yes; if command -v docker >/dev/null 2>&1; then T 20 docker version >/dev/null 2>&1; "
    "case $? in 124|137) docker_up=no ;; esac; fi",
])


# ------------------------------------------------------------------------------- scripts ---------
def _section(name: str, body: str) -> str:
    # Each section in a subshell: wrap() exits 0 when its tool is missing, which must end only it.
    return f"echo '{SECTION}{name}'; ( {body} )"


def snapshot_script(proc_version_path: str = "/proc/driver/nvidia/version", packages: tuple[str, ...] = ()) -> str:
    """The host round trip: every section in order, read-only."""
    smi = 'H "$smi_up" nvidia-smi && T 20 nvidia-smi'
    dock = 'H "$docker_up" docker && '  # a hung dockerd: skip every docker call
    pkgs = PackageStates().command(sorted({"nvidia-container-toolkit", "libnccl2", *packages}))
    sections = [
        ("hostname", 'uname -n; hostname -f 2>/dev/null; echo "' + RC + '0"'),
        ("gpus", wrap("nvidia-smi", f"{smi} --query-gpu={QUERY_FIELDS} --format=csv,noheader")),
        ("gpu_perf", wrap("nvidia-smi", f"{smi} --query-gpu={PERF_FIELDS} --format=csv,noheader,nounits")),
        ("pcie", wrap("nvidia-smi", f"{smi} --query-gpu={PCIE_FIELDS} --format=csv,noheader,nounits")),
        ("apps", wrap("nvidia-smi", f"{smi} --query-compute-apps={APPS_FIELDS} --format=csv,noheader,nounits")),
        ("topology", wrap("nvidia-smi", f"{smi} topo -m")),
        ("driver", wrap_file(shlex.quote(proc_version_path))),
        ("modules", wrap_file("/proc/modules")),
        ("packages", pkgs),
        ("reboot", "if [ -e /var/run/reboot-required ]; then echo required; cat /var/run/reboot-required.pkgs "
                   "2>/dev/null; else echo none; fi"),
        ("secure_boot", SecureBoot.command),
        ("kernel_log", "(dmesg 2>/dev/null || journalctl -k -q --no-pager 2>/dev/null) | grep -iE 'nvrm|nvidia' "
                       "| grep -iE 'xid|key was rejected|verification failed|unsigned module|required key|"
                       "fail|error' | tail -n 20"),
        ("acs", PcieAcs.command),
        ("docker_info", wrap("docker", dock + "T 20 docker info --format '{{json .Runtimes}}|{{.DefaultRuntime}}|"
                                       "{{.ServerVersion}}'")),
        ("daemon_json", wrap_file(DAEMON_JSON)),
        ("units", "for u in " + " ".join(UNITS) + "; do systemctl show -p Id -p NeedDaemonReload -p ActiveState "
                  "\"$u\" 2>/dev/null; echo; done"),
        ("toolkit", "for b in " + " ".join(TOOLKIT_BINARIES) + "; do printf '%s\\t%s\\n' \"$b\" "
                    "\"$(command -v \"$b\" || true)\"; done"),
        ("containers", wrap("docker", f"{dock}{{ ids=$({VLLM_IDS}); [ -z \"$ids\" ] && echo '[]' || T 20 docker inspect "
                                      "$ids; }")),
        ("logs", wrap("docker", f"{dock}for c in $({VLLM_IDS}); do echo \"{LOG_MARK}$(docker inspect --format "
                                "'{{.Name}}' \"$c\" | sed 's,^/,,')\"; T 20 docker logs --tail "
                                f"{LOG_LINES} \"$c\" 2>&1 | cut -c1-{LOG_LINE_CHARS}; done")),
    ]
    return "\n".join([PRELUDE, PROBE_HUNG, *(_section(name, body) for name, body in sections)])


def probes_script(containers: list[dict]) -> str:
    """The in-container round trip for the containers :func:`parse_containers` found.

    A running container is asked from inside (``docker exec``: the NCCL check, ``nvidia-smi -L``,
    ``df /dev/shm``); a stopped or crash-looping one cannot be, so the NCCL check runs in a
    throw-away container of its image (no network, no GPU needed: it reads the library and
    torch's compiled architecture list), with the container's VLLM_NCCL_SO_PATH if it has one.
    """
    parts = [PRELUDE]
    for c in containers:
        q = shlex.quote(c["name"])
        parts.append(f"echo '{PROBE_MARK}{c['name']}'")
        if c["running"]:
            parts.append(f"echo '{PART_MARK}nccl'; T 120 docker exec {q} python3 {CHECK_IN_IMAGE} 2>&1; "
                         f"echo \"{RC}$?\"")
            parts.append(f"echo '{PART_MARK}smi'; T 20 docker exec {q} nvidia-smi -L 2>&1; echo \"{RC}$?\"")
            parts.append(f"echo '{PART_MARK}shm'; T 10 docker exec {q} df -Pk /dev/shm 2>&1; echo \"{RC}$?\"")
        elif c.get("image_id"):
            so_path = c["env"].get("VLLM_NCCL_SO_PATH")
            env = f"-e {shlex.quote('VLLM_NCCL_SO_PATH=' + so_path)} " if so_path else ""
            parts.append(f"echo '{PART_MARK}nccl'; T 180 docker run --rm --network none {env}--entrypoint python3 "
                         f"{shlex.quote(c['image_id'])} {CHECK_IN_IMAGE} 2>&1; echo \"{RC}$?\"")
    return "\n".join(parts)


# ------------------------------------------------------------------------------- parsers ---------
def split_marked(lines: list[str], mark: str) -> dict[str, list[str]]:
    """``{name: lines}`` for output cut by ``<mark><name>`` lines (text before the first is dropped).

    >>> split_marked(["noise", "__gpufleet_doctor=a", "1", "__gpufleet_doctor=b"], SECTION)
    {'a': ['1'], 'b': []}
    """
    found: dict[str, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith(mark):
            current = line[len(mark):].strip()
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return found


def _num(value: str) -> float | None:
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]", "[Unknown Error]"


def _int(value: str) -> int | None:
    number = _num(value)
    return int(number) if number is not None else None


def _rows(lines: list[str], width: int) -> list[list[str]]:
    rows = []
    for row in csv.reader((line for line in lines if line.strip()), skipinitialspace=True):
        if len(row) >= width and row[0].strip().isdigit():
            rows.append([cell.strip() for cell in row])
    return rows


def parse_gpu_perf(lines: list[str]) -> list[dict]:
    """Rows of ``--query-gpu=`` :data:`PERF_FIELDS` ``--format=csv,noheader,nounits``.

    >>> parse_gpu_perf(["0, P2, 97, 29324, 71, 431.20, 575.00, 0x0000000000000004"])[0]["throttle"]
    []
    """
    gpus = []
    for index, pstate, util, used, temp, power, limit, mask in (r[:8] for r in _rows(lines, 8)):
        gpus.append({"index": int(index), "pstate": pstate if pstate.startswith("P") else None,
                     "utilization": _int(util), "memory_used_mib": _int(used), "temperature_c": _int(temp),
                     "power_w": _num(power), "power_limit_w": _num(limit),
                     "throttle_mask": mask if mask.lower().startswith("0x") else None,
                     "throttle": throttle_causes(mask)})
    return gpus


def parse_pcie(lines: list[str]) -> list[dict]:
    """Rows of ``--query-gpu=`` :data:`PCIE_FIELDS` ``--format=csv,noheader,nounits``.

    nvidia-smi's help: "The current PCI-E link generation/width. These may be reduced when the GPU
    is not in use"; the max is "possible with this GPU and system configuration".

    >>> parse_pcie(["1, 1, 5, 16, 16"])[0]
    {'index': 1, 'gen_current': 1, 'gen_max': 5, 'width_current': 16, 'width_max': 16}
    """
    return [{"index": int(r[0]), "gen_current": _int(r[1]), "gen_max": _int(r[2]), "width_current": _int(r[3]),
             "width_max": _int(r[4])} for r in _rows(lines, 5)]


def parse_compute_apps(lines: list[str]) -> list[dict]:
    """Rows of ``--query-compute-apps=gpu_uuid,pid,process_name,used_memory --format=csv,noheader,nounits``.

    >>> parse_compute_apps(["GPU-106a3a29-ddb6-3a1a-d894-5ed25399df2a, 4242, python3, 26000"])[0]["used_mib"]
    26000
    """
    apps = []
    for row in csv.reader((line for line in lines if line.strip()), skipinitialspace=True):
        if len(row) == 4 and row[0].strip().startswith("GPU-"):
            apps.append({"gpu_uuid": row[0].strip(), "pid": _int(row[1]), "name": row[2].strip(),
                         "used_mib": _int(row[3])})
    return apps


def parse_docker_info(lines: list[str]) -> dict:
    """``docker info --format '{{json .Runtimes}}|{{.DefaultRuntime}}|{{.ServerVersion}}'``.

    >>> parse_docker_info(['{"nvidia":{"path":"nvidia-container-runtime"},"runc":{"path":"runc"}}|runc|26.1.5'])
    {'runtimes': ['nvidia', 'runc'], 'default_runtime': 'runc', 'server_version': '26.1.5'}
    """
    line = next((text for text in reversed(lines) if text.count("|") >= 2), "")
    runtimes_json, default, version = (line.rsplit("|", 2) + ["", "", ""])[:3]
    try:
        runtimes = sorted(json.loads(runtimes_json or "{}"))
    except ValueError:
        runtimes = []
    return {"runtimes": runtimes, "default_runtime": default.strip() or None, "server_version": version.strip() or None}


def parse_units(lines: list[str]) -> dict[str, dict[str, str]]:
    """``systemctl show -p Id -p NeedDaemonReload -p ActiveState UNIT`` blocks -> ``{unit: {key: value}}``.

    >>> parse_units(["NeedDaemonReload=yes", "ActiveState=active", "Id=docker.service", ""])
    {'docker.service': {'NeedDaemonReload': 'yes', 'ActiveState': 'active', 'Id': 'docker.service'}}
    """
    units: dict[str, dict[str, str]] = {}
    block: dict[str, str] = {}
    for line in [*lines, ""]:
        if not line.strip():
            if block.get("Id"):
                units[block["Id"]] = block
            block = {}
            continue
        key, sep, value = line.strip().partition("=")
        if sep:
            block[key] = value
    return units


def parse_toolkit(lines: list[str]) -> dict[str, str | None]:
    """``{binary: path or None}`` from the toolkit section's ``name<TAB>path`` lines."""
    found: dict[str, str | None] = {}
    for line in lines:
        name, _, path = line.partition("\t")
        if name.strip() in TOOLKIT_BINARIES:
            found[name.strip()] = path.strip() or None
    return found


def parse_reboot(lines: list[str]) -> dict:
    """/var/run/reboot-required (Debian/Ubuntu's update-notifier flag) and the packages that set it."""
    body = [line.strip() for line in lines if line.strip()]
    required = bool(body) and body[0] == "required"
    return {"required": required, "packages": body[1:] if required else []}


SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def size_bytes(size: str | None) -> int | None:
    """Docker's ``--shm-size`` units (binary): ``16g`` -> 17179869184; None for None or nonsense.

    >>> size_bytes("2g"), size_bytes("512m"), size_bytes("64")
    (2147483648, 536870912, 64)
    """
    match = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([bkmg]?)b?\s*$", size or "", re.IGNORECASE)
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()]) if match else None


def _env(pairs: list[str] | None) -> dict[str, str]:
    """Config.Env as a dict, with the value of every secret-named variable replaced by ``***``.

    The values never leave this function: HF_TOKEN / VLLM_API_KEY reach the container from
    root-only env files, and ``docker inspect`` shows them in plain text.
    """
    from operations.secrets import SECRET_NAME, SECRET_VALUE

    env = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        secret = SECRET_NAME.search(key.upper()) or SECRET_VALUE.search(value)
        env[key] = "***" if secret else value
    return env


def parse_containers(text: str) -> list[dict]:
    """``docker inspect`` JSON (an array of containers) -> the fields doctor judges.

    Secrets in the environment are masked here (see :func:`_env`), so they are never part of
    the evidence, the JSON output or the report.
    """
    start = (text or "").find("[")
    try:  # docker's own warnings may surround the array
        raw, _ = json.JSONDecoder().raw_decode(text[start:]) if start >= 0 else ([], 0)
    except ValueError:
        return []
    containers = []
    for c in raw if isinstance(raw, list) else []:
        if (c.get("Name") or "").endswith(PREVIOUS_SUFFIX):
            continue  # the copy a recreate keeps, stopped on purpose, for a rollback: not a replica
        state, config, hostconfig = c.get("State") or {}, c.get("Config") or {}, c.get("HostConfig") or {}
        requests = []
        for r in hostconfig.get("DeviceRequests") or []:
            requests.append({"driver": r.get("Driver") or "", "count": r.get("Count") or 0,
                             "device_ids": list(r.get("DeviceIDs") or []),
                             "capabilities": [list(cap) for cap in r.get("Capabilities") or []]})
        containers.append({
            "name": (c.get("Name") or "").lstrip("/"),
            "status": state.get("Status"),
            "running": bool(state.get("Running")) and not state.get("Restarting"),
            "restarting": bool(state.get("Restarting")),
            "restart_count": int(c.get("RestartCount") or 0),
            "exit_code": state.get("ExitCode"),
            "oom_killed": bool(state.get("OOMKilled")),
            "error": state.get("Error") or None,
            "started_at": state.get("StartedAt"),
            "finished_at": state.get("FinishedAt"),
            "image": config.get("Image"),
            "image_id": c.get("Image"),
            "entrypoint": list(config.get("Entrypoint") or []),
            "cmd": list(config.get("Cmd") or []),
            "env": _env(config.get("Env")),
            "labels": dict(config.get("Labels") or {}),
            "shm_size_bytes": hostconfig.get("ShmSize"),
            "ipc_mode": hostconfig.get("IpcMode"),
            "runtime": hostconfig.get("Runtime"),
            "device_requests": requests,
            "restart_policy": (hostconfig.get("RestartPolicy") or {}).get("Name"),
        })
    return sorted(containers, key=lambda c: c["name"])


def parse_df_kib(lines: list[str]) -> int | None:
    """Size in KiB of the filesystem in ``df -Pk PATH`` output (the last data line).

    >>> parse_df_kib(["Filesystem     1024-blocks  Used Available Capacity Mounted on",
    ...               "shm               16777216     0  16777216       0% /dev/shm"])
    16777216
    """
    for line in reversed(lines):
        parts = line.split()
        if len(parts) >= 6 and parts[1].isdigit():
            return int(parts[1])
    return None


def parse_check_report(lines: list[str]) -> dict | None:
    """files/vllm_nccl_check.py's JSON report out of ``docker exec``/``run`` output (warnings may precede it)."""
    decoder = json.JSONDecoder()
    for i, line in enumerate(lines):
        if line.startswith("{"):
            try:
                report, _ = decoder.raw_decode("\n".join(lines[i:]))
            except ValueError:
                continue
            if isinstance(report, dict) and "nccl_version" in report:
                keep = ("nccl_version", "method", "library", "wheel_version", "vllm_nccl_so_path", "torch",
                        "torch_cuda", "cuda_arch_list", "arch_source", "vllm", "notes")
                return {k: report.get(k) for k in keep}
    return None


def _tail(lines: list[str]) -> str:
    return " | ".join(line.strip() for line in lines if line.strip())[-300:] or "no output"


def parse_probes(lines: list[str]) -> dict[str, dict]:
    """``{container: {"nccl": report|None, "nccl_error", "smi": {...}|None, "shm_kib"}}`` from :func:`probes_script`."""
    found = {}
    for name, body in split_marked(lines, PROBE_MARK).items():
        parts = split_marked(body, PART_MARK)
        result: dict = {"nccl": None, "nccl_error": None, "smi": None, "shm_kib": None}
        if "nccl" in parts:
            status, out = envelope(parts["nccl"])
            report = parse_check_report(out)
            result["nccl"] = report
            if report is None:
                result["nccl_error"] = f"exit {status['exit_code']}: {_tail(out)}"
        if "smi" in parts:
            status, out = envelope(parts["smi"])
            gpus = [line.strip() for line in out if line.startswith("GPU ")]
            result["smi"] = {"ok": status["status"] == "ok", "exit_code": status["exit_code"], "gpus": gpus,
                             "output": [line.strip() for line in out if line.strip()][-5:]}
        if "shm" in parts:
            status, out = envelope(parts["shm"])
            result["shm_kib"] = parse_df_kib(out) if status["status"] == "ok" else None
        found[name] = result
    return found


def _status(lines: list[str]) -> tuple[dict, list[str]]:
    return envelope(lines)


def parse_snapshot(lines: list[str]) -> dict:
    """The host round trip's output -> the evidence dict's host parts (see gpufleet.doctor.evidence)."""
    s = split_marked(lines, SECTION)
    ev: dict = {"sections_read": sorted(s)}
    host_lines = [line.strip() for line in s.get("hostname", []) if line.strip() and not line.startswith(RC)]
    ev["hostnames"] = sorted(set(host_lines))
    ev["gpus"] = NvidiaGpus().process(s["gpus"]) if "gpus" in s else NvidiaGpus.default()
    for key, parser in (("gpu_perf", parse_gpu_perf), ("pcie", parse_pcie), ("apps", parse_compute_apps)):
        status, body = _status(s.get(key, [MISSING]))
        ev[key] = {**status, "gpus" if key != "apps" else "apps": parser(body) if status["status"] == "ok" else []}
    ev["topology"] = NvidiaTopology().process(s["topology"]) if "topology" in s else NvidiaTopology.default()
    ev["driver"] = NvidiaDriver().process(s["driver"]) if "driver" in s else NvidiaDriver.default()
    ev["modules"] = GpuKernelModules().process(s["modules"]) if "modules" in s else GpuKernelModules.default()
    ev["packages"] = PackageStates().process(s.get("packages", []))
    ev["reboot"] = parse_reboot(s.get("reboot", []))
    ev["secure_boot"] = SecureBoot().process(s["secure_boot"]) if "secure_boot" in s else SecureBoot.default()
    ev["kernel_log"] = [line.strip() for line in s.get("kernel_log", []) if line.strip()]
    ev["acs"] = PcieAcs().process(s["acs"]) if "acs" in s else PcieAcs.default()
    status, body = _status(s.get("docker_info", [MISSING]))
    ev["docker"] = {**status, **(parse_docker_info(body) if status["status"] == "ok" else
                                 {"runtimes": [], "default_runtime": None, "server_version": None})}
    ev["daemon_json"] = DockerDaemonConfig().process(s["daemon_json"]) if "daemon_json" in s else \
        DockerDaemonConfig.default()
    ev["units"] = parse_units(s.get("units", []))
    ev["toolkit"] = parse_toolkit(s.get("toolkit", []))
    status, body = _status(s.get("containers", [MISSING]))
    ev["containers_status"] = status
    ev["containers"] = parse_containers("\n".join(body)) if status["status"] == "ok" else []
    _, body = _status(s.get("logs", [MISSING]))
    ev["logs"] = {name: [line for line in text if line.strip()] for name, text in split_marked(body, LOG_MARK).items()}
    return ev


class DoctorSnapshot(FactBase):
    """Everything doctor reads on the host itself, in one command (see :func:`parse_snapshot`).

    .. code:: python

        host.get_fact(DoctorSnapshot, _sudo=True)
        {"gpus": {"status": "ok", "gpus": [...]}, "gpu_perf": {...}, "pcie": {...}, "driver": {...},
         "acs": {...}, "docker": {...}, "containers": [...], "logs": {"vllm-gpu-node-01-vllm-0": [...]}, ...}
    """

    def command(self, proc_version_path: str = "/proc/driver/nvidia/version", packages: tuple[str, ...] = ()):
        return snapshot_script(proc_version_path, tuple(packages))

    @staticmethod
    def default():
        return {}

    def process(self, output):
        return parse_snapshot(output)


class DoctorProbes(FactBase):
    """Inside each vLLM container: the NCCL check, ``nvidia-smi -L``, /dev/shm (see :func:`probes_script`).

    .. code:: python

        host.get_fact(DoctorProbes, containers=snapshot["containers"], _sudo=True)
        {"vllm-gpu-node-01-vllm-0": {"nccl": {"nccl_version": "2.27.7", "cuda_arch_list": [..., "sm_120"], ...},
                                     "smi": {"ok": True, "gpus": ["GPU 0: ...", "GPU 1: ..."]}, "shm_kib": 16777216}}
    """

    def command(self, containers: list[dict]):
        return probes_script(containers)

    @staticmethod
    def default():
        return {}

    def process(self, output):
        return parse_probes(output)
