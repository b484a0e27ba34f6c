"""`gpufleet verify`: the pre-deployment checklist as an ordered ladder per GPU node.

    PCI (GPUs present) -> driver -> toolkit -> NCCL -> topology [-> nccl-acceptance, with --nccl]

Each step reads what the host reports and compares it with the host's settings; the first
failed step stops that host's ladder, says why and what to do. Warnings (ACS on a P2P path,
NVLink where none is expected) never stop the ladder. The steps are pure functions of a
:class:`Probe`, so they run the same against a live host (:class:`HostProbe`) and against
captured outputs (tests, fixtures from real GPUs).

``--nccl`` adds the NCCL acceptance test as the last step: files/nccl_acceptance.py is uploaded to
a temporary file and run inside the node's vLLM image (``docker run --gpus all``, the serving
containers' NCCL_* variables and --shm-size), so it measures the NCCL vLLM loads. It all-reduces
1 MiB .. 1 GiB across the node's GPUs, checks the sums and judges busbw against the topology's
expectation (the script's EXPECTATIONS table). It needs the GPUs' memory: run it on a node out of
rotation (drained, or before its replicas start). A failure names what the script saw (the
transport NCCL used, PCIe link width, NCCL variables) and, from the host, PCIe ACS.

Exit codes: 0 every host passed, 2 some host failed a check, 1 some host could not be checked.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gpufleet.settings import BLACKWELL_MIN_DRIVER_BRANCH, HostSettings
from operations.nvidia import nccl_package_version, upstream_version

STEPS = ("pci", "driver", "toolkit", "nccl", "topology", "nccl-acceptance")
ACCEPTANCE_SCRIPT = Path(__file__).resolve().parents[1] / "files" / "nccl_acceptance.py"
ACCEPTANCE_IN_IMAGE = "/opt/gpufleet/nccl_acceptance.py"
ACCEPTANCE_TIMEOUT = 900  # seconds for the whole docker run (the script's own limit is 600)


@dataclass
class Check:
    step: str
    status: str  # "pass" | "fail" | "warn"
    detail: str
    fix: str | None = None


@dataclass
class NodeReport:
    host: str
    reachable: bool = True
    checks: list[Check] = field(default_factory=list)

    @property
    def failed_step(self) -> str | None:
        return next((c.step for c in self.checks if c.status == "fail"), None)

    @property
    def ok(self) -> bool:
        return self.reachable and self.failed_step is None

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "ok": self.ok, "reachable": self.reachable, "failed_step": self.failed_step,
                "checks": [asdict(c) for c in self.checks]}


class Probe(Protocol):
    """What the ladder needs from a host; each method returns the matching fact's value."""

    def pci(self) -> dict: ...
    def gpus(self) -> dict: ...
    def driver(self) -> dict: ...
    def packages(self, names: list[str]) -> dict: ...
    def toolkit(self, image: str) -> tuple[bool, str]: ...
    def topology(self) -> dict: ...
    def acs(self) -> dict: ...
    def nccl_acceptance(self) -> tuple[bool, str]: ...


class HostProbe:
    """A Probe over a connected pyinfra host (facts from operations/facts); its ``docker run``
    commands run under sudo where the host's data sets ``_sudo``, as the deploy's do."""

    def __init__(self, host, settings: HostSettings):
        self.host, self.settings = host, settings
        self._packages: dict | None = None

    def pci(self) -> dict:
        from operations.facts.pci import NvidiaPciDevices

        return self.host.get_fact(NvidiaPciDevices, dump_file=self.settings.pci_dump_file)

    def gpus(self) -> dict:
        from operations.facts.gpu import NvidiaGpus

        return self.host.get_fact(NvidiaGpus)

    def driver(self) -> dict:
        from operations.facts.gpu import NvidiaDriver

        return self.host.get_fact(NvidiaDriver, path=self.settings.nvidia_proc_version_path)

    def packages(self, names: list[str]) -> dict:
        # One read for every package the ladder asks about (driver and NCCL steps): facts are
        # not cached by pyinfra 3.10, and each read is an SSH round trip.
        from operations.facts.apt import PackageStates

        if self._packages is None:
            wanted = sorted({*self.settings.nvidia_driver_packages, "libnccl2", "libnccl-dev", *names})
            self._packages = self.host.get_fact(PackageStates, packages=wanted)
        missing = [n for n in names if n not in self._packages]
        if missing:
            self._packages.update(self.host.get_fact(PackageStates, packages=missing))
        return {n: self._packages[n] for n in names if n in self._packages}

    def toolkit(self, image: str) -> tuple[bool, str]:
        from gpufleet.remote import shell
        from operations.util import sudo_arguments

        # Docker needs root: a raw command gets no `_sudo` from host data (operations/util.py).
        return shell(self.host, f"docker run --rm --gpus all {image} nvidia-smi -L", timeout=600,
                     **sudo_arguments(self.host))

    def topology(self) -> dict:
        from operations.facts.gpu import NvidiaTopology

        return self.host.get_fact(NvidiaTopology)

    def acs(self) -> dict:
        from operations.facts.pci import PcieAcs

        return self.host.get_fact(PcieAcs)

    def nccl_acceptance(self) -> tuple[bool, str]:
        from gpufleet.remote import shell
        from operations.util import sudo_arguments

        remote = self.host.get_temp_filename("gpufleet-nccl-acceptance")
        if not self.host.put_file(str(ACCEPTANCE_SCRIPT), remote):
            return False, f"could not upload {ACCEPTANCE_SCRIPT.name} to {remote}"
        try:
            # `docker run` as root where the host asks for sudo; the script is the login user's file.
            return shell(self.host, nccl_acceptance_command(self.settings, remote), timeout=ACCEPTANCE_TIMEOUT,
                         **sudo_arguments(self.host))
        finally:
            shell(self.host, f"rm -f {shlex.quote(remote)}")


# ------------------------------------------------------------------------------------ steps ----

def check_pci(s: HostSettings, probe: Probe) -> list[Check]:
    pci = probe.pci()
    if pci["status"] == "missing":
        return [Check("pci", "fail", "lspci is not installed", "apt-get install pciutils (the deploy's base packages)")]
    if pci["status"] != "ok":
        return [Check("pci", "fail", f"lspci failed: {pci['error']}", "run `lspci -nn` on the host and read its error")]
    ids = sorted({f"{d['vendor_id']}:{d['device_id']}" for d in pci["devices"]})
    if pci["count"] < s.gpu_count:
        return [Check("pci", "fail", f"{pci['count']} NVIDIA GPUs on the PCI bus, expected {s.gpu_count}",
                      "check the cards' seating and power, and Above 4G Decoding / Resizable BAR in the BIOS")]
    return [Check("pci", "pass", f"{pci['count']} NVIDIA GPUs on the PCI bus ({', '.join(ids)})")]


def check_driver(s: HostSettings, probe: Probe) -> list[Check]:
    gpus = probe.gpus()
    if gpus["status"] == "missing":
        return [Check("driver", "fail", "nvidia-smi is not installed", "install the driver: run the deploy")]
    if gpus["status"] != "ok":
        return [Check("driver", "fail", f"nvidia-smi exited {gpus['exit_code']}: {gpus['error']}",
                      "the driver is not loaded or its library does not match the module: reboot if the driver "
                      "was just installed or upgraded (the deploy reboots when needed)")]
    loaded = probe.driver()
    if not loaded.get("loaded"):
        return [Check("driver", "fail", f"no NVIDIA kernel module loaded ({s.nvidia_proc_version_path})",
                      "reboot the host, or look at `dmesg | grep -i nvrm`")]
    # Everything else is collected, so one run shows every way the node differs.
    problems: list[str] = []
    fixes: list[str] = []
    if loaded.get("flavor") != s.nvidia_kernel_modules:
        problems.append(f"{loaded.get('flavor')} kernel modules loaded, expected {s.nvidia_kernel_modules}")
        fixes.append(f"install the {s.nvidia_kernel_modules} driver packages ({', '.join(s.nvidia_driver_packages)})")
    installed = probe.packages(s.nvidia_driver_packages).get(s.nvidia_driver_packages[0], {}).get("version")
    installed_upstream = upstream_version(installed)
    if installed_upstream is None:
        problems.append(f"driver {loaded['version']} loaded, no {s.nvidia_driver_packages[0]} package installed")
        fixes.append("install the driver from the pinned packages (run the deploy)")
    elif installed_upstream != loaded["version"]:
        problems.append(f"driver {loaded['version']} loaded, {installed_upstream} installed")
        fixes.append("reboot to load the installed driver")
    if loaded["version"] != s.nvidia_driver_version:
        problems.append(f"driver {loaded['version']} loaded, expected {s.nvidia_driver_version}")
        fixes.append("run the deploy to install the pinned driver")
    found = gpus["gpus"]
    if len(found) != s.gpu_count:
        problems.append(f"{len(found)} GPUs, expected {s.gpu_count}")
    names = sorted({g["name"] for g in found})
    if names and names != [s.gpu_name]:
        problems.append(f"GPU {', '.join(names)}, expected {s.gpu_name}")
    caps = sorted({g["compute_capability"] for g in found if g["compute_capability"]})
    if caps and caps != [s.gpu_compute_capability]:
        problems.append(f"compute capability {', '.join(caps)}, expected {s.gpu_compute_capability}")
    branch = int(loaded["version"].split(".")[0])
    if any(int(c.split(".")[0]) >= 10 for c in caps) and branch < BLACKWELL_MIN_DRIVER_BRANCH:
        problems.append(f"driver branch {branch} below {BLACKWELL_MIN_DRIVER_BRANCH} for compute capability {caps[-1]}")
    if len(fixes) < len(problems):
        fixes.append("fix the node's hardware or its data (gpu_count, gpu_name, gpu_compute_capability)")
    if problems:
        return [Check("driver", "fail", "; ".join(problems), "; ".join(dict.fromkeys(fixes)))]
    return [Check("driver", "pass", f"driver {loaded['version']} ({loaded['flavor']}) loaded = installed; "
                                    f"{len(found)} x {names[0] if names else '?'}, compute capability {caps[0] if caps else '?'}")]


def check_toolkit(s: HostSettings, probe: Probe) -> list[Check]:
    ok, output = probe.toolkit(s.verify_toolkit_image)
    seen = [line for line in output.splitlines() if line.startswith("GPU ")]
    if not ok:
        last = output.strip().splitlines()[-1] if output.strip() else "no output"
        return [Check("toolkit", "fail", f"`docker run --gpus all {s.verify_toolkit_image} nvidia-smi -L` failed: {last}",
                      "check the nvidia runtime in /etc/docker/daemon.json and nvidia-container-toolkit (run the deploy)")]
    if len(seen) != s.gpu_count:
        return [Check("toolkit", "fail", f"a GPU container sees {len(seen)} GPUs, expected {s.gpu_count}",
                      "check NVIDIA_VISIBLE_DEVICES handling and the toolkit's version")]
    return [Check("toolkit", "pass", f"a GPU container sees {len(seen)} GPUs")]


def check_nccl(s: HostSettings, probe: Probe) -> list[Check]:
    want = nccl_package_version(s.nccl_version, s.nccl_cuda_version)
    state = probe.packages(["libnccl2"]).get("libnccl2", {})
    if state.get("version") != want:
        return [Check("nccl", "fail", f"libnccl2 {state.get('version') or 'not installed'}, expected {want}",
                      "run the deploy (it pins and holds libnccl2/libnccl-dev)")]
    if not state.get("held"):
        return [Check("nccl", "warn", f"libnccl2 {want} is not held", "apt-mark hold libnccl2 libnccl-dev (the deploy does)")]
    return [Check("nccl", "pass", f"libnccl2 {want}, held")]


def check_topology(s: HostSettings, probe: Probe) -> list[Check]:
    topo = probe.topology()
    if topo["status"] != "ok":
        return [Check("topology", "warn", f"`nvidia-smi topo -m` failed: {topo['error']}", None)]
    links = sorted({link for row in topo["links"].values() for link in row.values()})
    checks = []
    geforce = "GeForce" in s.gpu_name
    if geforce and topo["nvlink"]:
        checks.append(Check("topology", "warn", f"NVLink between GPUs ({', '.join(links)}), not expected on {s.gpu_name}"))
    else:
        kind = "NVLink" if topo["nvlink"] else "PCIe, no NVLink"
        checks.append(Check("topology", "pass", f"{kind}: GPU links {', '.join(links) or 'none'}"))
    acs = probe.acs()
    if acs.get("acs_enabled"):
        checks.append(Check(
            "topology", "warn", f"PCIe ACS redirects P2P traffic on bridges {', '.join(acs['redirecting'])}",
            "multi-GPU NCCL over PCIe can hang or crawl with ACS on: disable ACS (BIOS, pci=noacs, or setpci on "
            "the bridges), or set NCCL_P2P_DISABLE=1 in vllm_env"))
    elif acs.get("status") == "ok" and acs.get("gpus") and not acs.get("caps_readable"):
        checks.append(Check("topology", "warn", "PCIe ACS state unknown (reading it needs root)", "run verify as root"))
    return checks


def nccl_acceptance_command(s: HostSettings, script_path: str) -> str:
    """`docker run` of the acceptance script in the node's vLLM image, with serving's NCCL env and shm."""
    from operations.vllm import image_tag

    image = image_tag(s.vllm_image, s.nccl_version, s.pip_install_args)
    args = ["docker", "run", "--rm", "--gpus", "all", "--shm-size", s.vllm_shm_size]
    for key, value in sorted(s.vllm_env.items()):
        if key.startswith("NCCL_"):
            args += ["-e", f"{key}={value}"]
    args += ["-v", f"{script_path}:{ACCEPTANCE_IN_IMAGE}:ro", "--entrypoint", "python3", image, ACCEPTANCE_IN_IMAGE,
             "--json", "--world-size", str(s.gpu_count)]
    return " ".join(shlex.quote(a) for a in args)


def parse_acceptance_output(output: str) -> dict | None:
    """The script's JSON report from `docker run`'s output (pull progress or warnings may precede it)."""
    decoder = json.JSONDecoder()
    for i, line in enumerate(lines := output.splitlines()):
        if line.startswith("{"):
            try:
                report, _ = decoder.raw_decode("\n".join(lines[i:]))
            except ValueError:
                continue
            if isinstance(report, dict) and "verdict" in report:
                return report
    return None


# What a `docker run` that never reached the script says, and what to do about it.
_RUN_FAILURES = (
    ("Unable to find image", "the vLLM image is not on the node: run the deploy (operations/vllm.image builds it)"),
    ("No such image", "the vLLM image is not on the node: run the deploy (operations/vllm.image builds it)"),
    ("could not select device driver", "the nvidia runtime is missing from Docker: see the toolkit step"),
    ("out of memory", "GPU memory is taken, most likely by serving replicas: drain the node first "
                      "(gpufleet rollout), then run verify --nccl"),
)


def check_nccl_acceptance(s: HostSettings, probe: Probe) -> list[Check]:
    ok, output = probe.nccl_acceptance()
    report = parse_acceptance_output(output)
    step = "nccl-acceptance"
    if report is None:
        last = output.strip().splitlines()[-1] if output.strip() else "no output"
        fix = next((f for marker, f in _RUN_FAILURES if marker.lower() in output.lower()),
                   "run the command by hand on the node and read its output")
        return [Check(step, "fail", f"the NCCL acceptance test did not run: {last}", fix)]
    v = report["verdict"]
    log = report.get("nccl_log") or {}
    via = ", ".join(log.get("details") or []) or "transport not logged"
    what = (f"all-reduce over {report.get('world_size')} GPU(s), NCCL {report.get('nccl_version') or '?'} "
            f"({v.get('class')}, {via})")
    if v["status"] == "pass":
        if v.get("floor_gbps") is not None:
            what += f": busbw {v['busbw_gbps']:.1f} GB/s at {v['judged_bytes']} B >= floor {v['floor_gbps']:.1f} GB/s"
        return [Check(step, "pass", what + ", sums correct")]
    problems = "; ".join(v.get("problems") or []) or v["status"]
    causes = list(v.get("causes") or [])
    if v["status"] in ("fail", "error"):
        acs = probe.acs()
        if acs.get("acs_enabled"):
            causes.insert(0, f"ACS: PCIe ACS redirects P2P traffic on bridges {', '.join(acs['redirecting'])}: "
                             "disable it (BIOS, pci=noacs, setpci) or set NCCL_P2P_DISABLE=1 in vllm_env")
        elif acs.get("status") == "ok" and acs.get("gpus") and not acs.get("caps_readable"):
            causes.append("ACS: state unknown (reading it needs root): run verify as root")
    if v["status"] == "unjudged":
        return [Check(step, "warn", f"{what}: sums correct, bandwidth not judged: "
                                    f"{'; '.join(v.get('notes') or []) or problems}",
                      "pass --floor-gbps to the script, or fix what hides the PCIe link")]
    return [Check(step, "fail", f"{what}: {problems}", "; ".join(causes) or None)]


LADDER: list[tuple[str, Callable[[HostSettings, Probe], list[Check]]]] = [
    ("pci", check_pci), ("driver", check_driver), ("toolkit", check_toolkit), ("nccl", check_nccl),
    ("topology", check_topology),
]


def run_ladder(host_name: str, settings: HostSettings, probe: Probe, nccl: bool = False) -> NodeReport:
    """The ladder on one host; ``nccl`` adds the acceptance test as its last step."""
    report = NodeReport(host_name)
    if settings.gpu_count == 0:
        report.checks.append(Check("pci", "pass", "no GPUs expected on this host"))
        return report
    steps = LADDER + ([("nccl-acceptance", check_nccl_acceptance)] if nccl else [])
    for _, step in steps:
        checks = step(settings, probe)
        report.checks.extend(checks)
        if any(c.status == "fail" for c in checks):
            break
    return report


def verify(inventory_path: str, limit=(), overrides: dict[str, Any] | None = None,
           nccl: bool = False) -> list[NodeReport]:
    from gpufleet.host_reads import watching
    from gpufleet.remote import connected, run_parallel

    with watching() as failures, connected(inventory_path, limit, overrides) as (state, fleet, reachable, unreachable):
        results = run_parallel(
            state, reachable,
            lambda h: run_ladder(h.name, fleet.hosts[h.name].settings, HostProbe(h, fleet.hosts[h.name].settings),
                                 nccl=nccl),
        )
        failed = {h.name for h in state.failed_hosts}  # a read gave up (its fact's value is a default)
    reports = []
    for name, result in results.items():
        if isinstance(result, Exception) or name in failed:
            why = failures.describe(name) or (f"could not check: {result}" if isinstance(result, Exception)
                                              else "a read failed (see the log)")
            reports.append(NodeReport(name, reachable=False, checks=[Check("connect", "fail", why)]))
        else:
            reports.append(result)
    reports += [NodeReport(h.name, reachable=False, checks=[Check("connect", "fail", "unreachable over SSH",
                                                                  "check the host is up and its SSH data")])
                for h in unreachable]
    return sorted(reports, key=lambda r: r.host)


def exit_code(reports: list[NodeReport]) -> int:
    if any(not r.reachable for r in reports):
        return 1
    return 0 if all(r.ok for r in reports) else 2


def as_json(reports: list[NodeReport]) -> dict[str, Any]:
    failures = [{"host": r.host, "step": c.step, "detail": c.detail, "fix": c.fix}
                for r in reports for c in r.checks if c.status == "fail"]
    return {"ok": all(r.ok for r in reports), "failures": failures, "nodes": [r.as_dict() for r in reports]}
