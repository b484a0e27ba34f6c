"""Doctor's outputs: the terminal text, the JSON, and the paste-ready Markdown report.

The text and the JSON keep host names (the operator needs them) and hide secrets; the report
(``--report FILE``) hides secrets, host names and addresses too (gpufleet.doctor.redact), since
it is meant for a public bug report. The report holds what a maintainer asks for first:
versions, GPUs and PCIe links, topology and ACS, each replica's flags, the findings with their
evidence and fix, and the last lines of each replica's log.

Example::

    from gpufleet.doctor import redact, render
    text = render.report_markdown(run, redact.from_fleet(fleet), inventory="inventory/prod.py")
"""

from __future__ import annotations

import json
import time
from typing import Any

from gpufleet.doctor.redact import Redactor
from gpufleet.doctor.rules import argv, vllm_args
from gpufleet.doctor.runner import DoctorRun, NodeResult

REPORT_LOG_LINES = 30


# ------------------------------------------------------------------------------- terminal --------
def render_text(run: DoctorRun, redactor: Redactor) -> str:
    lines: list[str] = []
    for node in run.nodes:
        d = node.diagnosis
        if not node.checked:
            lines.append(f"{node.host}: NOT CHECKED: {node.error}")
        elif d and d.findings:
            lines.append(f"{node.host}: {len(d.findings)} finding{'s' if len(d.findings) != 1 else ''}")
        else:
            lines.append(f"{node.host}: healthy")
        for f in d.findings if d else []:
            about = f" ({f.subject})" if f.subject else ""
            lines.append(f"  {f.severity.upper():<7} {f.id}{about}: {f.title}")
            for e in f.evidence:
                value = e.value.splitlines()
                if len(value) > 1:
                    lines.append(f"          {e.what} [{e.where}]:")
                    lines += [f"            | {v}" for v in value]
                else:
                    lines.append(f"          {e.what}: {e.value}  [{e.where}]")
            lines.append(f"          fix: {f.fix}")
        for note in d.notes if d else []:
            lines.append(f"  note: {note}")
    errors = sum(1 for n in run.nodes if n.diagnosis for f in n.diagnosis.findings if f.severity == "error")
    warnings = sum(1 for n in run.nodes if n.diagnosis for f in n.diagnosis.findings if f.severity == "warning")
    unhealthy = sum(1 for n in run.nodes if n.diagnosis and n.diagnosis.findings)
    unchecked = sum(1 for n in run.nodes if not n.checked)
    lines.append(f"\n{len(run.nodes)} GPU node{'s' if len(run.nodes) != 1 else ''}: {unhealthy} with findings "
                 f"({errors} errors, {warnings} warnings), {unchecked} not checked")
    return redactor.secrets("\n".join(lines))


def render_json(run: DoctorRun, redactor: Redactor) -> str:
    return redactor.secrets(json.dumps(run.as_dict(), indent=2))


# ------------------------------------------------------------------------------- report ----------
def _md_cell(value: Any) -> str:
    return str(value if value not in (None, "") else "-").replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out


def _fence(lines: list[str]) -> list[str]:
    body = [line.replace("```", "'''") for line in lines]
    return ["```text", *body, "```"]


def _versions(ev: dict) -> list[list[Any]]:
    d = ev.get("declared") or {}
    packages = ev.get("packages") or {}
    drv = ev.get("driver") or {}
    rows = [
        ["NVIDIA driver (loaded)", f"{drv.get('version') or 'not loaded'} ({drv.get('flavor') or '-'})",
         "/proc/driver/nvidia/version", d.get("driver_version")],
        [f"NVIDIA driver ({d.get('driver_package')})", (packages.get(d.get("driver_package")) or {}).get("version"),
         "dpkg-query", None],
        ["nvidia-container-toolkit", (packages.get("nvidia-container-toolkit") or {}).get("version"), "dpkg-query", None],
        ["Docker engine", (ev.get("docker") or {}).get("server_version"), "docker info", None],
        ["Docker runtimes", ", ".join((ev.get("docker") or {}).get("runtimes") or []), "docker info", None],
        ["libnccl2 (host, not what vLLM loads)", (packages.get("libnccl2") or {}).get("version"), "dpkg-query", None],
        ["Secure Boot", (ev.get("secure_boot") or {}).get("state"), "mokutil --sb-state / efivars", None],
    ]
    for name, probe in sorted((ev.get("probes") or {}).items()):
        report = probe.get("nccl") or {}
        if report:
            rows.append([f"NCCL in {name}", f"{report.get('nccl_version')} ({report.get('method')})",
                         "files/vllm_nccl_check.py in the container", d.get("nccl_version")])
            rows.append([f"torch / vLLM in {name}", f"{report.get('torch')} (CUDA {report.get('torch_cuda')}) / "
                                                   f"{report.get('vllm')}", "the image", None])
            rows.append([f"torch architectures in {name}", " ".join(report.get("cuda_arch_list") or []) or "-",
                         report.get("arch_source") or "-", f"sm_{d.get('compute_capability', '').replace('.', '')}"])
    return rows


def _gpu_rows(ev: dict) -> list[list[Any]]:
    perf = {g["index"]: g for g in (ev.get("gpu_perf") or {}).get("gpus") or []}
    pcie = {g["index"]: g for g in (ev.get("pcie") or {}).get("gpus") or []}
    rows = []
    for g in (ev.get("gpus") or {}).get("gpus") or []:
        p, link = perf.get(g["index"]) or {}, pcie.get(g["index"]) or {}
        rows.append([g["index"], g.get("name"), g.get("compute_capability"), g.get("pci_bus_id"),
                     f"{p.get('memory_used_mib', '-')} / {g.get('memory_mib')} MiB", f"{p.get('temperature_c', '-')} C",
                     f"{p.get('power_w', '-')} / {p.get('power_limit_w', '-')} W", p.get("pstate"),
                     ", ".join(p.get("throttle") or []) or "none",
                     f"Gen{link.get('gen_current', '?')} x{link.get('width_current', '?')} / "
                     f"Gen{link.get('gen_max', '?')} x{link.get('width_max', '?')}" if link else "-"])
    return rows


def _topology(ev: dict) -> list[str]:
    topo = ev.get("topology") or {}
    if topo.get("status") != "ok":
        return [f"nvidia-smi topo -m: {topo.get('error') or 'not read'}"]
    devices = topo.get("devices") or []
    lines = ["\t".join(["", *devices])]
    for a in devices:
        lines.append("\t".join([a, *(" X " if a == b else (topo["links"].get(a) or {}).get(b, "?") for b in devices)]))
    acs = ev.get("acs") or {}
    if acs.get("status") == "ok":
        lines.append(f"ACS redirecting on: {', '.join(acs.get('redirecting') or []) or 'none'}"
                     + ("" if acs.get("caps_readable") else " (capabilities not readable: not root)"))
    else:
        lines.append(f"ACS: lspci {acs.get('status')} ({acs.get('error')})")
    return lines


def _replica_lines(c: dict, probe: dict) -> list[str]:
    model, flags = vllm_args(c)
    env = ", ".join(f"{k}={v}" for k, v in sorted((c.get("env") or {}).items())
                    if not k.startswith(("PATH", "HOME", "LD_LIBRARY", "NVIDIA_REQUIRE", "LANG", "PYTHON")))
    shm_kib = probe.get("shm_kib")
    return [f"- **{c['name']}**: {c.get('status')}, {c.get('restart_count')} restarts, exit code {c.get('exit_code')}"
            + (", OOMKilled" if c.get("oom_killed") else ""),
            f"  - image: `{c.get('image')}`",
            f"  - command: `{' '.join(argv(c))}`",
            f"  - model {model}, TP {flags.get('--tensor-parallel-size', 1)}, GPUs "
            f"{[r.get('device_ids') or r.get('count') for r in c.get('device_requests') or []]}",
            f"  - shm: {c.get('shm_size_bytes')} bytes configured, "
            f"{shm_kib * 1024 if shm_kib is not None else 'not read'} bytes seen, ipc {c.get('ipc_mode')}",
            f"  - env: {env or '-'}"]


def _node_section(node: NodeResult) -> list[str]:
    out = [f"## {node.host}", ""]
    if not node.checked:
        out += [f"**Not (fully) checked:** {node.error}", ""]
    ev, d = node.evidence, node.diagnosis
    out += ["### Findings", ""]
    if d and d.findings:
        for f in d.findings:
            out.append(f"#### [{f.severity}] `{f.id}`{' (' + f.subject + ')' if f.subject else ''}: {f.title}")
            out.append("")
            for e in f.evidence:
                if "\n" in e.value:
                    out += [f"- **{e.what}** (`{e.where}`):", "", *_fence(e.value.splitlines()), ""]
                else:
                    out.append(f"- **{e.what}** (`{e.where}`): {e.value}")
            out += [f"- **Fix:** {f.fix}", ""]
    else:
        out += ["None." if node.checked else "None found in what was read.", ""]
    if d and d.notes:
        out += ["### Not judged", "", *[f"- {n}" for n in d.notes], ""]
    if not ev.get("gpus"):
        return out
    out += ["### Versions", "", *_table(["component", "version", "read from", "declared"], _versions(ev)), ""]
    out += ["### GPUs", "", *_table(["GPU", "name", "cc", "bus", "memory used", "temp", "power", "pstate", "throttle",
                                     "PCIe now / max"], _gpu_rows(ev)), ""]
    out += ["### Topology", "", *_fence(_topology(ev)), ""]
    containers = ev.get("containers") or []
    out += ["### Replicas and flags", ""]
    if containers:
        for c in containers:
            out += _replica_lines(c, (ev.get("probes") or {}).get(c["name"]) or {})
    else:
        out.append("No vLLM container on the node.")
    out.append("")
    logs = ev.get("logs") or {}
    if logs:
        out += ["### Log excerpts", ""]
        for name, lines in sorted(logs.items()):
            out += [f"`docker logs --tail {REPORT_LOG_LINES} {name}`:", "", *_fence(lines[-REPORT_LOG_LINES:] or ["(empty)"]),
                    ""]
    kernel = ev.get("kernel_log") or []
    if kernel:
        out += ["### Kernel log (NVIDIA lines)", "", *_fence(kernel), ""]
    return out


def report_markdown(run: DoctorRun, redactor: Redactor, inventory: str = "", now: float | None = None) -> str:
    """The ``--report`` file: one Markdown document, secrets, host names and addresses redacted."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now if now is not None else time.time()))
    errors = sum(1 for n in run.nodes if n.diagnosis for f in n.diagnosis.findings if f.severity == "error")
    warnings = sum(1 for n in run.nodes if n.diagnosis for f in n.diagnosis.findings if f.severity == "warning")
    lines = ["# gpufleet doctor report", "",
             f"{stamp}, inventory `{inventory or '-'}`, exit code {run.exit_code} (0 healthy, 2 findings, 1 not checked): "
             f"{len(run.nodes)} GPU nodes, {errors} errors, {warnings} warnings.",
             "Host names, IP addresses, tokens, API keys and passwords are redacted.", "",
             *_table(["node", "checked", "errors", "warnings", "finding ids"],
                     [[n.host, "yes" if n.checked else f"no: {n.error}",
                       sum(1 for f in (n.diagnosis.findings if n.diagnosis else []) if f.severity == "error"),
                       sum(1 for f in (n.diagnosis.findings if n.diagnosis else []) if f.severity == "warning"),
                       ", ".join(sorted({f.id for f in (n.diagnosis.findings if n.diagnosis else [])})) or "-"]
                      for n in run.nodes]), ""]
    for node in run.nodes:
        lines += _node_section(node)
    return redactor.all("\n".join(lines).rstrip() + "\n")
