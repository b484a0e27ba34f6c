"""The troubleshooting tree: an evidence dict (gpufleet.doctor.evidence) in, findings out. Pure.

Every rule is a function of the evidence alone, so it is tested on dicts. A finding has a stable
id (``area.what``: scripts and runbooks may key on it), a severity (``error``: it breaks or will
break serving; ``warning``: it costs speed or is a trap), the evidence it rests on (what was read,
where, the value) and the fix. What a rule could not judge (a tool missing, a GPU idle, ACS
unreadable without root) is a note, never a finding: notes do not change the exit code.

The tree, by symptom:

===========================================  ==========================================================
symptom                                      rules
===========================================  ==========================================================
NCCL "unhandled cuda error"                  nccl.version-not-pinned, nccl.acs-redirect, nccl.shm-too-small
"no kernel image is available"               cuda.arch-missing
CUDA OOM at start                            memory.plan-does-not-fit, memory.gpu-busy
low throughput                               throughput.tp1-idle-gpu, throughput.pcie-link,
                                             throughput.throttling, throughput.enforce-eager
GPUs not visible in containers               toolkit.missing, toolkit.runtime-not-configured,
                                             toolkit.docker-restart-pending, toolkit.daemon-reload-pending,
                                             toolkit.gpus-lost-in-container, docker.down
driver installed but not loaded              driver.reboot-pending, driver.secure-boot, driver.not-loaded,
                                             gpu.missing, gpu.nvidia-smi-failed
a plan that is not this node's               gpu.model-mismatch
debug flags left in production               config.debug-env, config.deprecated-env
a replica crash-looping                      replica.crash-loop, replica.exited, replica.missing
===========================================  ==========================================================

Example::

    >>> from gpufleet.doctor.rules import judge
    >>> judge({"host": "n1", "declared": {"gpu_count": 0, "replicas": []}}).findings
    []
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from operations.nvidia import upstream_version

from gpufleet.doctor.logs import classify

SEVERITIES = ("error", "warning")
RESTARTS_ALARM = 3  # restarts since creation that mean a crash loop (gpufleet.runtime_checks uses the same)
# ... but only while the replica is down or has run at most this long since its last start. A
# crash-looping one starts again within Docker's back-off (a minute at most between tries), and a
# vLLM start (weights, torch.compile, CUDA graphs) takes minutes: one that has run longer got past
# its start, and its restarts since creation are history.
RECENT_START_S = 15 * 60
MIN_SHM_BYTES = 1024**3  # below this, TP>1 NCCL SHM transport and vLLM's shm broadcast run short
ACTIVE_PSTATES = ("P0", "P1", "P2")
ACTIVE_UTILIZATION = 10  # % GPU utilisation above which a PCIe link must be at full speed
VLLM_DEFAULT_GMU = 0.9  # vLLM's --gpu-memory-utilization default
# The PCIe link each GPU model is built for (generation, lanes): NVIDIA's RTX 5090 specification
# ("PCI Express Gen 5", x16 card). A lower pcie.link.*.max means the slot, riser or BIOS caps it.
EXPECTED_LINK = {"NVIDIA GeForce RTX 5090": (5, 16)}
# Flags that take no value in `vllm serve` (so the next word is not theirs).
BOOLEAN_FLAGS = {"--enforce-eager", "--trust-remote-code", "--disable-custom-all-reduce", "--enable-prefix-caching",
                 "--enable-chunked-prefill", "--disable-log-requests", "--disable-log-stats",
                 "--enable-auto-tool-choice", "--no-enable-prefix-caching", "--enable-expert-parallel"}
EXCERPT_LINES = 15


@dataclass
class Evidence:
    what: str
    where: str
    value: str


@dataclass
class Finding:
    id: str
    severity: str  # "error" | "warning"
    title: str
    evidence: list[Evidence]
    fix: str
    subject: str | None = None  # the container or GPU it is about, when not the whole node

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Diagnosis:
    host: str
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "findings": [f.as_dict() for f in self.findings], "notes": list(self.notes)}


class _Out:
    """What rules add to: findings and notes."""

    def __init__(self):
        self.findings: list[Finding] = []
        self.notes: list[str] = []

    def find(self, id: str, severity: str, title: str, evidence: list[tuple[str, str, Any]], fix: str,
             subject: str | None = None) -> None:
        assert severity in SEVERITIES, severity
        self.findings.append(Finding(id, severity, title, [Evidence(w, where, str(v)) for w, where, v in evidence],
                                     fix, subject))

    def note(self, text: str) -> None:
        self.notes.append(text)


# ------------------------------------------------------------------------------- helpers ---------
def argv(container: dict) -> list[str]:
    """The container's command line: Config.Entrypoint then Config.Cmd."""
    return list(container.get("entrypoint") or []) + list(container.get("cmd") or [])


def vllm_args(container: dict) -> tuple[str | None, dict[str, str | bool]]:
    """(model, {flag: value or True}) from a container's Entrypoint + Cmd, as ``vllm serve`` reads them.

    >>> vllm_args({"entrypoint": ["vllm", "serve"], "cmd": ["Qwen/Qwen3-32B-AWQ", "--tensor-parallel-size", "2",
    ...                                                      "--enforce-eager", "--max-model-len=32768"]})
    ('Qwen/Qwen3-32B-AWQ', {'--tensor-parallel-size': '2', '--enforce-eager': True, '--max-model-len': '32768'})
    """
    words = argv(container)
    if "serve" in words:
        words = words[words.index("serve") + 1:]
    model, flags, i = None, {}, 0
    while i < len(words):
        word = words[i]
        if word.startswith("-"):
            name, eq, value = word.partition("=")
            name = "--" + name.lstrip("-").replace("_", "-") if name.startswith("--") else name
            if eq:
                flags[name] = value
            elif name not in BOOLEAN_FLAGS and i + 1 < len(words) and not words[i + 1].startswith("-"):
                flags[name] = words[i + 1]
                i += 1
            else:
                flags[name] = True
        elif model is None and not words[:i]:
            model = word
        i += 1
    model = flags.get("--model") if isinstance(flags.get("--model"), str) else model
    return model, flags


def tp_of(container: dict) -> int:
    _, flags = vllm_args(container)
    value = flags.get("--tensor-parallel-size", flags.get("-tp", 1))
    try:
        return int(value)
    except (TypeError, ValueError):
        return 1


def container_gpus(container: dict, gpus: list[dict]) -> list[int] | None:
    """GPU indices a container was given (``--gpus``'s DeviceRequests), None when unknown."""
    indices = [g["index"] for g in gpus]
    by_uuid = {g.get("uuid"): g["index"] for g in gpus}
    for request in container.get("device_requests") or []:
        if not any("gpu" in caps for caps in request.get("capabilities") or []) and request.get("driver") != "nvidia":
            continue
        if request.get("device_ids"):
            found = []
            for device in request["device_ids"]:
                for part in str(device).split(","):
                    part = part.strip()
                    if part.isdigit():
                        found.append(int(part))
                    elif part in by_uuid:
                        found.append(by_uuid[part])
            return found
        count = request.get("count") or 0
        if count == -1:
            return indices or None
        if count > 0:
            return indices[:count] or None
    visible = (container.get("env") or {}).get("NVIDIA_VISIBLE_DEVICES")
    if container.get("runtime") == "nvidia" and visible:
        if visible == "all":
            return indices or None
        return [int(p) for p in visible.split(",") if p.strip().isdigit()]
    return None


def _vllm_containers(ev: dict) -> list[dict]:
    return list(ev.get("containers") or [])


def _probe(ev: dict, name: str) -> dict:
    return (ev.get("probes") or {}).get(name) or {}


def _gpus(ev: dict) -> list[dict]:
    gpus = ev.get("gpus") or {}
    return (gpus.get("gpus") or []) if gpus.get("status") == "ok" else []


def _started_s_ago(c: dict, ev: dict) -> float | None:
    """Seconds from the container's last start (Docker's State.StartedAt) to the read, or None."""
    read_at = ev.get("read_at")
    try:
        started = datetime.fromisoformat(c.get("started_at") or "").timestamp()
    except ValueError:
        return None
    if read_at is None or started <= 0:  # never started: Docker says 0001-01-01T00:00:00Z
        return None
    return max(0.0, read_at - started)


def _crashing(c: dict, ev: dict) -> bool:
    """Docker restarts it now; or it restarted RESTARTS_ALARM times (since its creation) and is down,
    or runs since a start less than RECENT_START_S ago. One that has run longer is not crash-looping,
    whatever its restarts since creation (a start time unknown: not judged, :func:`replicas` notes it)."""
    if c.get("restarting"):
        return True
    if int(c.get("restart_count") or 0) < RESTARTS_ALARM:
        return False
    if not c.get("running"):
        return True
    age = _started_s_ago(c, ev)
    return age is not None and age < RECENT_START_S


def _duration(seconds: float) -> str:
    """``12 min``, ``5.2 hours``, ``21 days``."""
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} hours" if seconds < 2 * 86400 else f"{seconds / 86400:.0f} days"


def _cmdline(c: dict) -> str:
    return " ".join(argv(c))


def _gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"


# ------------------------------------------------------------------------------- node ------------
def docker_down(ev: dict, out: _Out) -> None:
    docker = ev.get("docker") or {}
    if docker.get("status") == "failed":
        out.find("docker.down", "error", "Docker does not answer: no replica can run",
                 [("docker info", "the node", docker.get("error"))],
                 "systemctl status docker; journalctl -u docker (a daemon.json dockerd refuses keeps it down)")
    elif docker.get("status") == "missing":
        out.find("docker.down", "error", "Docker is not installed", [("docker", "PATH on the node", "not found")],
                 "run the deploy (operations/docker_daemon.py installs the engine)")


def gpu_missing(ev: dict, out: _Out) -> None:
    want = (ev.get("declared") or {}).get("gpu_count") or 0
    gpus = ev.get("gpus") or {}
    loaded = (ev.get("driver") or {}).get("loaded")
    package = ((ev.get("packages") or {}).get((ev.get("declared") or {}).get("driver_package")) or {}).get("version")
    mismatch = loaded and upstream_version(package) and upstream_version(package) != (ev.get("driver") or {}).get("version")
    if want and gpus.get("status") == "failed" and loaded and not mismatch:
        hung = gpus.get("exit_code") in (124, 137)
        out.find("gpu.nvidia-smi-failed", "error",
                 "nvidia-smi does not answer: a GPU is wedged" if hung else
                 f"nvidia-smi fails with the driver loaded (exit {gpus.get('exit_code')})",
                 [("nvidia-smi --query-gpu", "the node", gpus.get("error")),
                  ("kernel log", "dmesg | grep -i nvidia", " | ".join((ev.get("kernel_log") or [])[-3:]) or "nothing")],
                 "look for Xid errors in `dmesg` (79: fallen off the bus, 48/63/64: memory); a wedged GPU needs "
                 "the node drained and rebooted (`gpufleet rollout`); persistent Xids mean a hardware ticket")
        return
    if want and gpus.get("status") == "ok" and len(gpus.get("gpus") or []) < want:
        seen = ", ".join(f"{g['index']}:{g['pci_bus_id']}" for g in gpus["gpus"]) or "none"
        out.find("gpu.missing", "error", f"{len(gpus['gpus'])} of {want} GPUs visible to the driver",
                 [("GPUs (index:bus)", "nvidia-smi --query-gpu", seen), ("expected", "settings gpu_count", want)],
                 "a GPU fell off the bus (look for Xid 79 in `dmesg`) or is not seated/powered: reboot; if it "
                 "stays missing, reseat the card and check its power cables")


def gpu_model(ev: dict, out: _Out) -> None:
    """The GPUs are not the model the settings declare: the planner sized every replica of the node
    (memory, max_model_len, TP) for the declared card, so the plan is not this node's."""
    want = (ev.get("declared") or {}).get("gpu_name")
    gpus = ev.get("gpus") or {}
    if not want or gpus.get("status") != "ok":
        return
    other = sorted({g["name"] for g in gpus.get("gpus") or [] if g.get("name") and g["name"] != want})
    if other:
        out.find("gpu.model-mismatch", "error", f"the GPUs are {', '.join(other)}, the settings declare {want}",
                 [("GPU names", "nvidia-smi --query-gpu=name", ", ".join(g["name"] for g in gpus["gpus"])),
                  ("declared", "settings gpu_name", want)],
                 "set gpu_name, gpu_count, gpu_memory_gib, gpu_compute_capability and gpu_pci_device_id "
                 "(the preflight matches GPUs by it) for this host in the inventory (or its group_data), then "
                 "`gpufleet validate`: the planner then checks the replica's flags against the card it runs on")


# ------------------------------------------------------------------------------- driver ----------
def driver(ev: dict, out: _Out) -> None:
    d = ev.get("declared") or {}
    if not d.get("gpu_count") or "driver" not in ev:
        return
    loaded = ev["driver"]
    package = d.get("driver_package")
    installed_full = ((ev.get("packages") or {}).get(package) or {}).get("version")
    installed = upstream_version(installed_full)
    sb = ev.get("secure_boot") or {}
    log = ev.get("kernel_log") or []
    rejected = [line for line in log if re.search(r"key was rejected|verification failed|unsigned module|"
                                                  r"required key not available", line, re.IGNORECASE)]
    reboot = ev.get("reboot") or {}
    modules = ev.get("modules") or {}
    base = [("loaded module", "/proc/driver/nvidia/version", loaded.get("version") or "none"),
            ("installed package", f"dpkg-query -W {package}", installed_full or "not installed")]
    if loaded.get("loaded") and installed and loaded.get("version") != installed:
        out.find("driver.reboot-pending", "error",
                 f"driver {installed} installed, {loaded.get('version')} loaded: a reboot is pending",
                 base + [("reboot-required", "/var/run/reboot-required", ", ".join(reboot.get("packages") or [])
                          or ("yes" if reboot.get("required") else "no"))],
                 "until the node reboots, nvidia-smi and new containers fail (\"Driver/library version mismatch\"): "
                 "drain it and reboot through `gpufleet rollout` (the deploy reboots only outside serving)")
        return
    if loaded.get("loaded") or not installed:
        if not loaded.get("loaded") and not installed:
            out.note("no NVIDIA driver installed or loaded (a fresh node: run the deploy)")
        return
    # Installed, not loaded.
    if sb.get("state") == "enabled" or rejected:
        out.find("driver.secure-boot", "error", "Secure Boot refuses the NVIDIA kernel module",
                 base + [("Secure Boot", f"{sb.get('source') or 'mokutil --sb-state'}", sb.get("detail") or sb.get("state")),
                         ("kernel log", "dmesg | grep -i nvidia", " | ".join(rejected[-3:]) or "no rejection logged")],
                 "sign the DKMS-built module with an enrolled MOK (`mokutil --import` the DKMS key, confirm at the "
                 "next boot) or disable Secure Boot in the firmware; then reboot")
    elif reboot.get("required") or modules.get("nouveau"):
        why = "nouveau holds the GPUs" if modules.get("nouveau") else "the driver was installed since the last boot"
        out.find("driver.reboot-pending", "error", f"driver {installed} installed, none loaded: {why}",
                 base + [("nouveau loaded", "/proc/modules", bool(modules.get("nouveau"))),
                         ("reboot-required", "/var/run/reboot-required", ", ".join(reboot.get("packages") or [])
                          or ("yes" if reboot.get("required") else "no"))],
                 "reboot the node (drained, through `gpufleet rollout`); nouveau is blacklisted by the deploy and "
                 "leaves at the reboot")
    else:
        out.find("driver.not-loaded", "error", f"driver {installed} installed but not loaded",
                 base + [("kernel log", "dmesg | grep -i nvidia", " | ".join(log[-3:]) or "nothing")],
                 "`modprobe nvidia` and read its error; a module built for another kernel needs `dkms autoinstall` "
                 "(kernel headers) and a reboot")


# ------------------------------------------------------------------------------- toolkit ---------
def toolkit(ev: dict, out: _Out) -> None:
    if not (ev.get("declared") or {}).get("gpu_count") or "toolkit" not in ev:
        return
    package = ((ev.get("packages") or {}).get("nvidia-container-toolkit") or {}).get("version")
    runtime = (ev.get("toolkit") or {}).get("nvidia-container-runtime")
    if not package and not runtime:
        out.find("toolkit.missing", "error", "the NVIDIA Container Toolkit is not installed: containers get no GPU",
                 [("nvidia-container-toolkit", "dpkg-query", "not installed"),
                  ("nvidia-container-runtime", "command -v", "not found")],
                 "run the deploy (it installs the toolkit at container_toolkit_version)")
        return
    daemon = ev.get("daemon_json") or {}
    configured = ((daemon.get("config") or {}).get("runtimes") or {}).get("nvidia")
    docker = ev.get("docker") or {}
    if daemon.get("status") == "invalid":
        out.find("toolkit.runtime-not-configured", "error", "/etc/docker/daemon.json is not valid JSON",
                 [("daemon.json", "/etc/docker/daemon.json", daemon.get("error"))],
                 "fix the file (the deploy merges its keys as data), then restart Docker in a maintenance window")
    elif not configured:
        out.find("toolkit.runtime-not-configured", "error", "no nvidia runtime in /etc/docker/daemon.json",
                 [("runtimes", "/etc/docker/daemon.json", sorted(((daemon.get("config") or {}).get("runtimes") or {}))
                   or "none")],
                 "run the deploy (it merges runtimes.nvidia into daemon.json); Docker must then restart, which "
                 "goes through `gpufleet rollout` on a serving node")
    elif docker.get("status") == "ok" and "nvidia" not in (docker.get("runtimes") or []):
        out.find("toolkit.docker-restart-pending", "error",
                 "daemon.json declares the nvidia runtime, the running dockerd does not have it",
                 [("runtimes in daemon.json", "/etc/docker/daemon.json", "nvidia"),
                  ("runtimes of dockerd", "docker info", ", ".join(docker.get("runtimes") or []) or "none")],
                 "dockerd was not restarted since daemon.json changed: restart Docker in a maintenance window "
                 "(`gpufleet rollout`, it restarts every container on the node)")
    units = ev.get("units") or {}
    pending = sorted(u for u, props in units.items() if props.get("NeedDaemonReload") == "yes")
    if pending:
        running = [c["name"] for c in _vllm_containers(ev) if c.get("running")]
        out.find("toolkit.daemon-reload-pending", "warning",
                 f"systemd has unit files newer than it loaded ({', '.join(pending)})",
                 [("NeedDaemonReload", "systemctl show " + " ".join(pending), "yes"),
                  ("GPU containers running", "docker inspect", ", ".join(running) or "none")],
                 "the next `systemctl daemon-reload` takes the GPUs from running containers unless the toolkit runs "
                 "in CDI mode (\"Failed to initialize NVML: Unknown Error\"): reload only on a drained node "
                 "(`gpufleet rollout`), then recreate its containers")
    for c in _vllm_containers(ev):
        smi = _probe(ev, c["name"]).get("smi")
        if not c.get("running") or not smi:
            continue
        text = " ".join(smi.get("output") or [])
        wanted = container_gpus(c, _gpus(ev))
        lost = "Failed to initialize NVML" in text
        fewer = smi.get("ok") and wanted is not None and len(smi.get("gpus") or []) < len(wanted)
        if lost or fewer:
            out.find("toolkit.gpus-lost-in-container", "error",
                     f"{c['name']} lost its GPUs" if lost else f"{c['name']} sees fewer GPUs than it was given",
                     [("nvidia-smi -L", f"docker exec {c['name']}", text or f"{len(smi.get('gpus') or [])} GPUs"),
                      ("GPUs given", "docker inspect HostConfig.DeviceRequests", wanted)],
                     "a `systemctl daemon-reload` (or a toolkit update) detached the devices: recreate the container "
                     "through `gpufleet rollout`; for good, CDI mode or `nvidia-ctk system create-dev-char-symlinks`",
                     c["name"])
        elif not smi.get("ok") and not lost:
            out.note(f"{c['name']}: nvidia-smi inside the container did not run ({text[-120:] or 'no output'})")


# ------------------------------------------------------------------------------- NCCL ------------
def nccl_version(ev: dict, out: _Out) -> None:
    pin = (ev.get("declared") or {}).get("nccl_version")
    for c in _vllm_containers(ev):
        probe = _probe(ev, c["name"])
        report = probe.get("nccl")
        if report is None:
            if probe.get("nccl_error") or c["name"] in (ev.get("probes") or {}):
                out.note(f"{c['name']}: the NCCL check did not run ({probe.get('nccl_error') or 'no report'})")
            continue
        version = report.get("nccl_version")
        if version is None:
            out.note(f"{c['name']}: no NCCL found in the image ({'; '.join(report.get('notes') or []) or 'no notes'})")
        elif pin and version != pin:
            where = "docker exec" if c.get("running") else "docker run (the container is down)"
            out.find("nccl.version-not-pinned", "error", f"{c['name']} loads NCCL {version}, the pin is {pin}",
                     [("NCCL vLLM loads", f"{where} {c['name']} python3 /opt/gpufleet/vllm_nccl_check.py",
                       f"{version} via {report.get('method')} ({report.get('library') or 'library not mapped'})"),
                      ("VLLM_NCCL_SO_PATH", "the container's environment", report.get("vllm_nccl_so_path") or "unset"),
                      ("pin", "settings nccl_version", pin)],
                     "roll out the image built with the pin (`gpufleet rollout`: operations/vllm.image installs "
                     "nvidia-nccl-cu12==nccl_version); the host's libnccl2 does not change what vLLM loads",
                     c["name"])


def acs(ev: dict, out: _Out) -> None:
    a = ev.get("acs") or {}
    containers = _vllm_containers(ev)
    multi = [c for c in containers if tp_of(c) > 1] if containers else (
        [{"name": "(declared)", "env": (ev.get("declared") or {}).get("env") or {}}]
        if (ev.get("declared") or {}).get("tp", 1) > 1 else [])
    if not multi:
        return
    if a.get("status") == "ok" and a.get("gpus") and not a.get("caps_readable"):
        out.note("PCIe ACS not judged: lspci shows capabilities only to root (set _sudo in the host's data)")
        return
    if not a.get("acs_enabled"):
        return
    bridges = a.get("bridges") or {}
    detail = "; ".join(f"{b} ACSCtl " + " ".join(f"{k}{'+' if v else '-'}" for k, v in (bridges.get(b, {}).get("acs_ctl")
                                                                                    or {}).items())
                       for b in a.get("redirecting") or [])
    mitigated = [c["name"] for c in multi if (c.get("env") or {}).get("NCCL_P2P_DISABLE") == "1"]
    if len(mitigated) == len(multi):
        out.note(f"PCIe ACS redirects P2P on {', '.join(a['redirecting'])}; NCCL_P2P_DISABLE=1 is set, so NCCL "
                 "does not use P2P through it")
        return
    out.find("nccl.acs-redirect", "error",
             f"PCIe ACS redirects peer-to-peer traffic above the GPUs ({', '.join(a['redirecting'])})",
             [("ACSCtl of the bridges above the GPUs", "lspci -Dnnvvv + /sys/bus/pci/devices paths", detail),
              ("TP>1 replicas", "docker inspect (--tensor-parallel-size)", ", ".join(c["name"] for c in multi))],
             "multi-GPU NCCL over PCIe hangs or fails (\"unhandled cuda error\") with ACS redirecting: disable ACS "
             "(BIOS, kernel `pci=noacs`, or `setpci -s <bridge> ECAP_ACS+6.w=0000`), or set NCCL_P2P_DISABLE=1 in "
             "vllm_env; then `gpufleet verify --nccl` on the drained node")


def shm(ev: dict, out: _Out) -> None:
    d = ev.get("declared") or {}
    want = d.get("shm_bytes")
    for c in _vllm_containers(ev):
        if tp_of(c) < 2:
            continue
        kib = _probe(ev, c["name"]).get("shm_kib")
        configured = c.get("shm_size_bytes")
        host_ipc = c.get("ipc_mode") == "host"
        actual = kib * 1024 if kib is not None else (None if host_ipc else configured)
        if actual is None:
            continue
        evidence = [("HostConfig.ShmSize", f"docker inspect {c['name']}", _gib(configured or 0)),
                    ("IpcMode", f"docker inspect {c['name']}", c.get("ipc_mode") or "private"),
                    ("/dev/shm size", f"docker exec {c['name']} df -Pk /dev/shm",
                     _gib(kib * 1024) if kib is not None else "not read (container down)"),
                    ("vllm_shm_size", "settings", d.get("shm_size"))]
        if want and actual < want:
            out.find("nccl.shm-too-small", "error",
                     f"{c['name']} has {_gib(actual)} of /dev/shm, settings ask for {d.get('shm_size')}", evidence,
                     "the container was not created from the current settings (docker's default is 64 MiB): recreate "
                     "it through `gpufleet rollout`; NCCL's SHM transport between the GPUs needs the room", c["name"])
        elif actual < MIN_SHM_BYTES:
            out.find("nccl.shm-too-small", "warning", f"{c['name']} has only {_gib(actual)} of /dev/shm for TP>1",
                     evidence, "raise vllm_shm_size (16g is the fleet's default) and roll it out", c["name"])


# ------------------------------------------------------------------------------- CUDA ------------
def arch(ev: dict, out: _Out) -> None:
    caps = sorted({g["compute_capability"] for g in _gpus(ev) if g.get("compute_capability")})
    if not caps:
        caps = [(ev.get("declared") or {}).get("compute_capability")] if (ev.get("declared") or {}).get("gpu_count") \
            else []
    for c in _vllm_containers(ev):
        report = _probe(ev, c["name"]).get("nccl")
        if not report:
            continue
        arches = report.get("cuda_arch_list")
        if arches is None:
            if report.get("torch") and not report.get("torch_cuda"):
                out.note(f"{c['name']}: torch {report.get('torch')} has no CUDA (a CPU engine): architectures not judged")
            continue
        for cap in caps:
            major, _, minor = cap.partition(".")
            want = f"sm_{major}{minor}"
            if want not in arches:
                ptx = [a for a in arches if a.startswith("compute_")]
                out.find("cuda.arch-missing", "error",
                         f"{c['name']}: torch in its image has no {want} kernels for compute capability {cap}",
                         [("torch architectures", f"{report.get('arch_source')} in {c['name']}'s image",
                           " ".join(arches) or "none"),
                          ("torch / vLLM", "the image", f"{report.get('torch')} (CUDA {report.get('torch_cuda')}) / "
                                                         f"{report.get('vllm')}"),
                          ("GPU compute capability", "nvidia-smi --query-gpu=compute_cap", cap),
                          ("PTX", "torch architectures", " ".join(ptx) or "none (no JIT fallback)")],
                         "\"no kernel image is available for execution on the device\": use a vllm_image built for "
                         f"{want} (CUDA >= 12.8; vllm/vllm-openai v0.21.0 has it) and roll it out; the deploy's build "
                         "check refuses such an image, so this one was started by hand or before the check",
                         c["name"])


# ------------------------------------------------------------------------------- memory ----------
def _plan_model(ev: dict, model: str | None):
    from gpufleet.model_presets import arch_from_config, find_preset

    from operations.weights import MODEL_MOUNT

    d = ev.get("declared") or {}
    if model == MODEL_MOUNT:  # a staged archive (vllm_model_source = "url"): the declared model
        model = d.get("model")
    if model == d.get("model") and d.get("model_config"):
        return arch_from_config(d["model_config"], name=model or "model", source="vllm_model_config")
    if model and find_preset(model) is not None:
        return model
    return None


def memory_plan(ev: dict, out: _Out) -> None:
    from gpufleet.planner import PlanError, dtype_from_args, plan_replica, resolve_model

    d = ev.get("declared") or {}
    gpus = _gpus(ev)
    for c in _vllm_containers(ev):
        model, flags = vllm_args(c)
        arch_ = _plan_model(ev, model)
        if arch_ is None:
            out.note(f"{c['name']}: model {model!r} is not one the planner knows (and not vllm_model): fit not judged")
            continue
        tp = tp_of(c)
        mine = container_gpus(c, gpus) or list(range(tp))
        memory = [g["memory_mib"] for g in gpus if g["index"] in mine and g.get("memory_mib")]
        gpu_gib = min(memory) / 1024 if memory else d.get("gpu_memory_gib") or 32.0

        def number(flag, kind, default):
            value = flags.get(flag)
            try:
                return kind(value) if isinstance(value, str) else default
            except ValueError:
                return default

        max_len = number("--max-model-len", int, None) or resolve_model(arch_).max_position_embeddings
        gmu = number("--gpu-memory-utilization", float, VLLM_DEFAULT_GMU)
        quant = flags.get("--quantization") if isinstance(flags.get("--quantization"), str) else None
        if quant == "compressed-tensors":
            quant = None
        args = argv(c)
        kwargs = {}
        for flag, key in (("--max-num-seqs", "max_num_seqs"), ("--max-num-batched-tokens", "max_num_batched_tokens")):
            if number(flag, int, None):
                kwargs[key] = number(flag, int, None)
        if isinstance(flags.get("--kv-cache-dtype"), str):
            kwargs["kv_cache_dtype"] = flags["--kv-cache-dtype"]
        try:
            plan = plan_replica(arch_, max(len(gpus), d.get("gpu_count") or 0, tp), gpu_gib, tp, max_len or 1, gmu,
                                quant, dtype=dtype_from_args(args), **kwargs)
        except PlanError as exc:
            out.note(f"{c['name']}: the planner could not plan its flags: {exc}")
            continue
        if plan.fits:
            continue
        down = _crashing(c, ev) or not c.get("running")
        out.find("memory.plan-does-not-fit", "error" if down else "warning",
                 f"{c['name']}: {plan.hf_id} does not fit with the flags it runs with",
                 [("flags", f"docker inspect {c['name']} (Config.Cmd)",
                   f"TP={tp} --max-model-len {max_len} --gpu-memory-utilization {gmu:g} "
                   f"--quantization {quant or '(model)'} --dtype {dtype_from_args(args)}"),
                  ("GPU memory", "nvidia-smi --query-gpu=memory.total", f"{gpu_gib:.2f} GiB per GPU"),
                  ("planner", "gpufleet.planner.plan_replica", "; ".join(plan.reasons)),
                  ("per GPU", "planner", f"weights {_gib(plan.weight_bytes_per_gpu)}, activations "
                                         f"{_gib(plan.activation_reserve_bytes)}, budget {_gib(plan.budget_bytes_per_gpu)},"
                                         f" KV pool {_gib(plan.kv_pool_bytes_per_gpu)}")],
                 "CUDA OOM or \"KV cache is needed, which is larger than the available KV cache memory\" at start: "
                 + (f"raise vllm_gpu_memory_utilization to >= {plan.min_utilization_for_max_model_len:.2f}, or "
                    if plan.min_utilization_for_max_model_len else "")
                 + "lower vllm_max_model_len, or use TP=2 (`gpufleet plan` shows the numbers)"
                 + ("" if down else "; it runs now, so the planner may be conservative: watch for OOM under load"),
                 c["name"])


def memory_busy(ev: dict, out: _Out) -> None:
    perf = {g["index"]: g for g in ((ev.get("gpu_perf") or {}).get("gpus") or [])}
    gpus = {g["index"]: g for g in _gpus(ev)}
    apps = (ev.get("apps") or {}).get("apps") or []
    for c in _vllm_containers(ev):
        if c.get("running"):
            continue
        _, flags = vllm_args(c)
        try:
            gmu = float(flags["--gpu-memory-utilization"]) if isinstance(flags.get("--gpu-memory-utilization"), str) \
                else VLLM_DEFAULT_GMU
        except ValueError:
            gmu = VLLM_DEFAULT_GMU
        for index in container_gpus(c, list(gpus.values())) or []:
            used, total = (perf.get(index) or {}).get("memory_used_mib"), (gpus.get(index) or {}).get("memory_mib")
            if used is None or not total or used <= (1 - gmu) * total:
                continue
            uuid = (gpus.get(index) or {}).get("uuid")
            holders = ", ".join(f"{a['name']} (pid {a['pid']}, {a['used_mib']} MiB)" for a in apps
                                if a.get("gpu_uuid") == uuid) or "not listed (another container's process, or "\
                                                                  "a process nvidia-smi cannot see)"
            out.find("memory.gpu-busy", "error",
                     f"GPU {index} has {used} of {total} MiB in use while {c['name']} is down",
                     [("memory.used", "nvidia-smi --query-gpu=memory.used", f"GPU {index}: {used} MiB"),
                      ("needs free", f"--gpu-memory-utilization {gmu:g}", f"{gmu * total:.0f} MiB"),
                      ("held by", "nvidia-smi --query-compute-apps", holders)],
                     "vLLM refuses to start (\"Free memory on device ... is less than desired GPU memory "
                     "utilization\"): stop what holds the GPU (a leftover container or process), then let the "
                     "replica restart", c["name"])


# ------------------------------------------------------------------------------- throughput ------
def tp1_idle(ev: dict, out: _Out) -> None:
    gpus = _gpus(ev)
    count = len(gpus) or (ev.get("declared") or {}).get("gpu_count") or 0
    containers = _vllm_containers(ev)
    if count < 2 or not containers:
        return
    used: set[int] = set()
    for c in containers:
        used |= set(container_gpus(c, gpus) or range(tp_of(c)))
    idle = sorted(set(range(count)) - used)
    single = [c for c in containers if tp_of(c) == 1]
    if idle and single:
        out.find("throughput.tp1-idle-gpu", "warning",
                 f"TP=1 on a {count}-GPU node leaves GPU {', '.join(map(str, idle))} idle",
                 [(c["name"], "docker inspect (--tensor-parallel-size, DeviceRequests)",
                   f"TP={tp_of(c)}, GPUs {container_gpus(c, gpus)}") for c in containers]
                 + [("idle GPUs", "no vLLM container holds them", idle)],
                 "serve over both GPUs (vllm_tensor_parallel_size = 2) or run a second TP=1 replica on the idle GPU "
                 "(vllm_replicas), then roll it out")


def pcie_link(ev: dict, out: _Out) -> None:
    pcie = ev.get("pcie") or {}
    if pcie.get("status") != "ok":
        if pcie.get("status") == "failed":
            out.note(f"PCIe links not read: {pcie.get('error')}")
        return
    perf = {g["index"]: g for g in ((ev.get("gpu_perf") or {}).get("gpus") or [])}
    names = {g["index"]: g.get("name") for g in _gpus(ev)}
    for link in pcie.get("gpus") or []:
        i = link["index"]
        if None in (link.get("gen_current"), link.get("gen_max"), link.get("width_current"), link.get("width_max")):
            continue
        evidence = [("link now", f"nvidia-smi --query-gpu=pcie.link.gen.current,pcie.link.width.current (GPU {i})",
                     f"Gen{link['gen_current']} x{link['width_current']}"),
                    ("link max", f"nvidia-smi --query-gpu=pcie.link.gen.max,pcie.link.width.max (GPU {i})",
                     f"Gen{link['gen_max']} x{link['width_max']}")]
        expected = EXPECTED_LINK.get(names.get(i) or "")
        if expected and (link["gen_max"] < expected[0] or link["width_max"] < expected[1]):
            out.find("throughput.pcie-link", "warning",
                     f"GPU {i}'s slot caps it at Gen{link['gen_max']} x{link['width_max']} "
                     f"(the card is Gen{expected[0]} x{expected[1]})",
                     evidence + [("card", "nvidia-smi name", names.get(i))],
                     "TP all-reduce between RTX 5090s crosses PCIe through host memory: move the card to a full "
                     "x16 Gen5 slot, drop the riser, or set the slot to Gen5/x16 in the BIOS (bifurcation)", f"GPU {i}")
            continue
        below = link["gen_current"] < link["gen_max"] or link["width_current"] < link["width_max"]
        if not below:
            continue
        g = perf.get(i) or {}
        active = g.get("pstate") in ACTIVE_PSTATES or (g.get("utilization") or 0) >= ACTIVE_UTILIZATION
        if active:
            out.find("throughput.pcie-link", "warning",
                     f"GPU {i}'s link runs at Gen{link['gen_current']} x{link['width_current']} under load "
                     f"(max Gen{link['gen_max']} x{link['width_max']})",
                     evidence + [("load", "nvidia-smi --query-gpu=pstate,utilization.gpu",
                                  f"{g.get('pstate')}, {g.get('utilization')} %")],
                     "a link that trains below its max while busy is a seating, riser or signal problem: reseat the "
                     "card, check `lspci -vvv` LnkSta for \"(downgraded)\", try another slot", f"GPU {i}")
        else:
            out.note(f"GPU {i}: PCIe link Gen{link['gen_current']} x{link['width_current']} below max "
                     f"Gen{link['gen_max']} x{link['width_max']} while idle ({g.get('pstate') or 'pstate ?'}): "
                     "GPUs lower it to save power, not judged")


def throttling(ev: dict, out: _Out) -> None:
    for g in (ev.get("gpu_perf") or {}).get("gpus") or []:
        if not g.get("throttle"):
            continue
        out.find("throughput.throttling", "warning", f"GPU {g['index']} is throttled: {', '.join(g['throttle'])}",
                 [("clocks_throttle_reasons.active", "nvidia-smi --query-gpu", g.get("throttle_mask")),
                  ("temperature", "nvidia-smi --query-gpu=temperature.gpu", f"{g.get('temperature_c')} C"),
                  ("power", "nvidia-smi --query-gpu=power.draw,power.limit",
                   f"{g.get('power_w')} W of {g.get('power_limit_w')} W")],
                 "thermal: airflow, fan curve, dust, the room; hardware slowdown / power brake: the PSU and the "
                 "12V-2x6 connector (seating, one cable per card), then the board's power limit", f"GPU {g['index']}")


def enforce_eager(ev: dict, out: _Out) -> None:
    for c in _vllm_containers(ev):
        _, flags = vllm_args(c)
        if "--enforce-eager" not in flags:
            continue
        report = _probe(ev, c["name"]).get("nccl") or {}
        if report and report.get("torch") and not report.get("torch_cuda"):
            out.note(f"{c['name']}: --enforce-eager on a CPU engine (no CUDA graphs to lose): not judged")
            continue
        out.find("throughput.enforce-eager", "warning", f"{c['name']} runs with --enforce-eager (no CUDA graphs)",
                 [("command line", f"docker inspect {c['name']} (Config.Cmd)", _cmdline(c))],
                 "a debugging setting: decode is markedly slower without CUDA graphs; remove it from "
                 "vllm_extra_args and roll it out", c["name"])


# ------------------------------------------------------------------------------- config ----------
def debug_env(ev: dict, out: _Out) -> None:
    from gpufleet.settings_vllm import FORBIDDEN_ENV
    from gpufleet.settings_input import DEBUG_ENV, DEBUG_ENV_PREFIXES

    allowed = bool((ev.get("declared") or {}).get("allow_debug_settings"))
    for c in _vllm_containers(ev):
        env = c.get("env") or {}
        debug = [(f"{k}={env[k]}", why) for k, (is_debug, why) in DEBUG_ENV.items() if k in env and is_debug(env[k])]
        debug += [(f"{k}={v}", why) for k, v in env.items() for p, why in DEBUG_ENV_PREFIXES.items() if k.startswith(p)]
        if debug:
            out.find("config.debug-env", "warning" if allowed else "error",
                     f"{c['name']} runs with debugging settings: {', '.join(s for s, _ in debug)}",
                     [(setting, f"docker inspect {c['name']} (Config.Env)", why) for setting, why in debug],
                     "remove them from vllm_env (settings refuse them outside a debugging session, so this container "
                     "was started by hand or with --data allow_debug_settings=true) and roll it out", c["name"])
        old = [(k, why) for k, why in FORBIDDEN_ENV.items() if k in env]
        if env.get("VLLM_USE_V1") == "0":
            old.append(("VLLM_USE_V1", "the V0 engine is removed in current vLLM"))
        if old:
            out.find("config.deprecated-env", "warning", f"{c['name']} sets deprecated variables: "
                     f"{', '.join(k for k, _ in old)}",
                     [(f"{k}={env.get(k)}", f"docker inspect {c['name']} (Config.Env)", why) for k, why in old],
                     "remove them from vllm_env and roll it out", c["name"])


# ------------------------------------------------------------------------------- replicas --------
def replicas(ev: dict, out: _Out) -> None:
    if (ev.get("docker") or {}).get("status") != "ok":
        return  # docker.down says it
    containers = {c["name"]: c for c in _vllm_containers(ev)}
    for r in (ev.get("declared") or {}).get("replicas") or []:
        if r["container"] not in containers:
            out.find("replica.missing", "error", f"replica container {r['container']} does not exist",
                     [("vLLM containers", "docker ps -a (label io.gpufleet.role=vllm)", ", ".join(containers) or "none")],
                     "run the deploy (or `gpufleet rollout`): it creates the replica", r["container"])
    logs = ev.get("logs") or {}
    for c in containers.values():
        lines = logs.get(c["name"]) or []
        crashing, down = _crashing(c, ev), not c.get("running")
        age = _started_s_ago(c, ev)
        if not (crashing or down):
            if int(c.get("restart_count") or 0) >= RESTARTS_ALARM:
                since = (f"has run {_duration(age)} since its last start" if age is not None
                         else "its last start time is unknown")
                out.note(f"{c['name']} restarted {c.get('restart_count')} times since it was created, but {since}: "
                         f"not a crash loop now (`docker logs {c['name']}` keeps the earlier crashes)")
            continue
        verdict = classify(lines, oom_killed=bool(c.get("oom_killed")))
        restarts = c.get("restart_count")
        if c.get("restarting"):
            state = f"restarting, {restarts} restarts"
        elif not down:  # crashing: running again since a recent start
            state = f"running again, {restarts} restarts, last started {_duration(age or 0)} ago"
        else:
            state = f"{c.get('status')}, exit code {c.get('exit_code')}" + (f", {restarts} restarts" if crashing else "")
        evidence = [("state", f"docker inspect {c['name']}", f"{state}; last exit {c.get('exit_code')}"
                     + (f", error {c['error']}" if c.get("error") else "") + (", OOMKilled" if c.get("oom_killed") else "")),
                    ("cause", f"docker logs --tail {len(lines)} {c['name']}", f"{verdict['label']}: "
                                                                             f"{verdict['line'] or 'no matching line'}"),
                    ("last log lines", f"docker logs {c['name']}", "\n".join(lines[-EXCERPT_LINES:]) or "(empty)")]
        if crashing:
            out.find("replica.crash-loop", "error", f"{c['name']} is crash-looping: {verdict['label']}", evidence,
                     verdict["fix"], c["name"])
        else:
            out.find("replica.exited", "error", f"{c['name']} is not running ({c.get('status')}): {verdict['label']}",
                     evidence, verdict["fix"] + ("" if c.get("exit_code") else "; it stopped cleanly, so someone "
                                                 "stopped it: start it or run the deploy"), c["name"])


# Order: what stops everything first, so a report reads from cause to consequence.
RULES: list[Callable[[dict, _Out], None]] = [
    docker_down, gpu_missing, gpu_model, driver, toolkit, replicas, nccl_version, acs, shm, arch, memory_plan, memory_busy,
    tp1_idle, pcie_link, throttling, enforce_eager, debug_env,
]
RULE_IDS = (
    "docker.down", "gpu.missing", "gpu.model-mismatch", "gpu.nvidia-smi-failed", "driver.reboot-pending", "driver.secure-boot", "driver.not-loaded",
    "toolkit.missing", "toolkit.runtime-not-configured", "toolkit.docker-restart-pending",
    "toolkit.daemon-reload-pending", "toolkit.gpus-lost-in-container", "replica.missing", "replica.crash-loop",
    "replica.exited", "nccl.version-not-pinned", "nccl.acs-redirect", "nccl.shm-too-small", "cuda.arch-missing",
    "memory.plan-does-not-fit", "memory.gpu-busy", "throughput.tp1-idle-gpu", "throughput.pcie-link",
    "throughput.throttling", "throughput.enforce-eager", "config.debug-env", "config.deprecated-env",
)


def judge(evidence: dict) -> Diagnosis:
    """Every rule on one node's evidence: its findings (errors first) and notes."""
    out = _Out()
    if (evidence.get("declared") or {}).get("gpu_count"):
        for rule in RULES:
            rule(evidence, out)
    findings = sorted(out.findings, key=lambda f: SEVERITIES.index(f.severity))  # stable: rule order kept
    return Diagnosis(evidence.get("host", "?"), findings, out.notes)
