"""`gpufleet drift`: compare every host with what the repository declares, read-only.

Three kinds of drift are reported per host:

* **plan**: the same deploy.py, planned through pyinfra's API (gpufleet.deploy_run), would change
  something. Each such operation is reported with its cause: the commands it would run, and for
  managed files a unified diff of the host's file against the repository's (secrets never shown).
  Operations gated by ``_if`` are consequences of another operation's change and not reported.
* **runtime**: what a plan cannot see (gpufleet.runtime_checks): a driver installed but not
  loaded, GPUs missing or unhealthy, XID events and container restarts *new since the last run*
  (gpufleet.drift_counters), containers exited, restarting, running another image than the pinned
  tag names, or changed in place (``docker update``, a network disconnected:
  gpufleet.container_drift), containers holding GPUs that gpufleet does not run, a vLLM image
  built but never checked or built on an upstream tag re-pushed since (gpufleet.image_drift),
  NCCL inside the running vLLM container, nginx upstreams.
* **security**: a held distribution package (docker.io, nginx, prometheus) that meets its floor
  but is behind the build its archive now offers: a security update to roll out, reported apart
  so that it is neither lost among plan drift nor mistaken for it.

Nothing is executed on a host but reads, each with a time limit (gpufleet.host_reads): a host
whose read does not answer is reported "not checked: timed out reading X", never waited on
forever. Exit codes: 0 clean, 2 drift, 1 some host could not be checked (the others are still
checked and reported) or ``--fix`` was refused.

``--fix`` re-converges the drifted hosts that were fully checked, from a fresh plan (the check's
plan carries its read time limits, which a deploy must not), and only from a clean checkout
(gpufleet.checkout) unless ``allow_dirty``; the report records the commit it deployed.
"""

from __future__ import annotations

import difflib
import io
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from gpufleet import runtime_checks
from gpufleet.deploy_run import Plan, planned
from gpufleet.drift_item import DriftItem  # noqa: F401 - re-exported: reports are built from it

# Uploads to these paths hold secrets: say that they differ, never show how.
SECRET_PATH = re.compile(r"(token|secret|password|passwd|api[-_]?key|credential|\.env$)", re.IGNORECASE)
MAX_COMMAND = 400


@dataclass
class HostDrift:
    host: str
    reachable: bool = True
    error: str | None = None
    items: list[DriftItem] = field(default_factory=list)

    @property
    def checked(self) -> bool:
        return self.reachable and self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {"host": self.host, "reachable": self.reachable, "error": self.error, "drifted": bool(self.items),
                "drift": [asdict(i) for i in self.items]}


@dataclass
class DriftReport:
    hosts: list[HostDrift]
    started: float
    duration: float = 0.0
    fixed: dict[str, bool] = field(default_factory=dict)
    checkout: dict[str, Any] | None = None  # the repository revision compared with (gpufleet.checkout)
    fix: dict[str, Any] | None = None  # with --fix: commit deployed, allowed_dirty, refused, hosts

    @property
    def exit_code(self) -> int:
        if any(not h.checked for h in self.hosts) or (self.fix or {}).get("refused"):
            return 1
        return 2 if any(h.items for h in self.hosts) else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "drifted_hosts": [h.host for h in self.hosts if h.items],
            "unchecked_hosts": [h.host for h in self.hosts if not h.checked],
            "started": self.started,
            "duration_seconds": round(self.duration, 3),
            **({"checkout": self.checkout} if self.checkout else {}),
            "hosts": [h.as_dict() for h in self.hosts],
            **({"fixed": self.fixed} if self.fixed else {}),
            **({"fix": self.fix} if self.fix else {}),
        }


# ------------------------------------------------------------------------- plan causes ---------

def describe_command(host, command) -> tuple[str, list[str]]:
    """(one line, detail lines) for a command an operation would run."""
    from pyinfra.api.command import FileUploadCommand, FunctionCommand, StringCommand

    if isinstance(command, FileUploadCommand):
        return _describe_upload(host, command)
    if getattr(command, "secret_dest", None):  # operations.secrets.SecretWrite: content on stdin
        return f"{command.secret_dest}: {command.reason} (secret, not shown)", []
    if isinstance(command, FunctionCommand):
        return f"call {getattr(command.function, '__name__', 'function')}{tuple(command.args)!r}", []
    if isinstance(command, StringCommand):
        text = command.get_masked_value()
        return (text if len(text) <= MAX_COMMAND else text[:MAX_COMMAND] + " ..."), []
    return str(command), []


def _describe_upload(host, command) -> tuple[str, list[str]]:
    from pyinfra.facts.files import FileContents

    dest = command.dest
    # Files staged beside their target (written aside, tested, then moved in) replace the target.
    dest = dest.removesuffix(".gpufleet-new")
    if SECRET_PATH.search(dest):
        return f"{dest}: content differs (secret, not shown)", []
    src = command.src
    if isinstance(src, io.IOBase) or hasattr(src, "read"):
        src.seek(0)
        wanted = src.read()
        wanted = wanted.decode(errors="replace") if isinstance(wanted, bytes) else wanted
    else:
        with open(src, errors="replace") as handle:
            wanted = handle.read()
    current = host.get_fact(FileContents, path=dest)
    if current is None:
        return f"{dest}: missing", []
    diff = list(difflib.unified_diff([line + "\n" for line in current], wanted.splitlines(keepends=True),
                                     fromfile=f"{host.name}:{dest}", tofile=f"repository:{dest}"))
    return f"{dest}: content differs", [line.rstrip("\n") for line in diff][:80]


def plan_drift(plan: Plan, host) -> list[DriftItem]:
    items = []
    for op in plan.ops(host):
        if not op.will_change or op.conditional:
            continue
        lines: list[str] = []
        details: list[str] = []
        uploads: list[str] = []
        for command in plan.commands(host, op.op_hash):
            line, more = describe_command(host, command)
            (uploads if more or line.endswith((": missing", "not shown)")) else lines).append(line)
            details += more
        lines = uploads + lines  # a file's difference says more than the commands around it
        more = f" (+{len(lines) - 1} more commands)" if len(lines) > 1 else ""
        cause = lines[0] + more if lines else "would change"
        items.append(DriftItem("plan", op.name, cause, details + [f"$ {line}" for line in lines]))
    return items


# ------------------------------------------------------------------------------- running ---------

DEFAULT_COUNTERS = object()  # the inventory's counters file under the state directory


def check(inventory_path: str, limit=(), overrides: dict[str, Any] | None = None, fix: bool = False,
          allow_dirty: bool = False, counters: Any = DEFAULT_COUNTERS, read_timeout: int | None = None) -> DriftReport:
    """Check every host (or ``limit``); with ``fix``, re-converge the drifted, fully checked ones.

    + counters: file keeping the last run's XID/restart counters (gpufleet.drift_counters);
      None keeps nothing (every counter then reads as new). A host whose check raised keeps the
      last run's: its result, and so its new events, were not reported
    + read_timeout: seconds the control side waits for any one command (gpufleet.host_reads)
    """
    from gpufleet import PROJECT_ROOT
    from gpufleet.checkout import revision
    from gpufleet.drift_counters import CounterStore, default_path
    from gpufleet.host_reads import READ_TIMEOUT_S, watching
    from gpufleet.remote import run_parallel
    from operations.fact_prefetch import DRIFT_READS_KIND

    started = time.time()
    checkout = revision(PROJECT_ROOT)
    store = CounterStore(default_path(inventory_path) if counters is DEFAULT_COUNTERS else counters)
    timed = {**(overrides or {}), "_timeout": read_timeout or READ_TIMEOUT_S}
    with watching() as failures, planned(inventory_path, limit, timed, reads_kind=DRIFT_READS_KIND) as plan:
        contexts = {h.name: _context(store, h.name, failures, inventory_path) for h in plan.hosts}
        results = run_parallel(plan.state, plan.hosts, lambda h: check_host(plan, h, contexts[h.name]))
        hosts = [HostDrift(name, reachable=False, error="unreachable over SSH") for name in plan.unreachable]
        hosts += [HostDrift(name, error=failures.describe(name) or f"could not plan: {why}")
                  for name, why in plan.errors.items()]
        for name, result in results.items():
            if isinstance(result, Exception):
                result = HostDrift(name, error=failures.describe(name) or
                                   f"could not check: {type(result).__name__}: {result}")
                # No item of this host is reported: what its checks recorded as seen (XID events,
                # restarts) must be new again next run, not counted as told.
                contexts[name].seen.now.clear()
            hosts.append(result)
        _fleet_image_drift(hosts, contexts)
    store.save()
    report = DriftReport(sorted(hosts, key=lambda h: h.host), started, checkout=checkout.as_dict())
    if fix:
        _fix(report, checkout, inventory_path, overrides, allow_dirty)
    report.duration = time.time() - started
    return report


def _context(store, name: str, failures, inventory_path: str = ""):
    return runtime_checks.HostContext(seen=store.host(name), failures=failures, inventory=inventory_path)


def check_host(plan: Plan, host, ctx) -> HostDrift:
    """One host: its plan's drift, then the runtime checks; any read that did not answer makes it
    "not checked" (the findings so far are still reported)."""
    from operations.containers import planned_specs

    if host in plan.state.failed_hosts:  # a read gave up while deploy.py was planned
        return HostDrift(host.name, error=(ctx.failures.describe(host.name) if ctx.failures else None)
                         or "a read failed while the deploy was planned (see the log)")
    refused = plan.refusals.get(host.name)
    items = ([DriftItem("plan", "deploy would stop", refused)] if refused else []) + plan_drift(plan, host)
    ctx.specs = planned_specs(host)  # every changing operation ran to its end in plan_drift
    items += runtime_checks.run(host, plan.fleet.hosts[host.name].settings, plan.fleet, ctx)
    if host in plan.state.failed_hosts and not ctx.problems:
        ctx.problems.append((ctx.failures.describe(host.name) if ctx.failures else None) or "a read failed")
    return HostDrift(host.name, error="; ".join(ctx.problems) or None, items=items)


def _fleet_image_drift(hosts: list[HostDrift], contexts: dict) -> None:
    from gpufleet.image_drift import fleet_findings

    records = {name: ctx.image for name, ctx in contexts.items() if ctx.image}
    by_name = {h.host: h for h in hosts}
    for name, cause in sorted(fleet_findings(records).items()):
        by_name[name].items.append(DriftItem("runtime", "vLLM image", cause))


def _fix(report: DriftReport, checkout, inventory_path: str, overrides, allow_dirty: bool) -> None:
    """Re-converge the drifted hosts that were fully checked, from a fresh plan, if the checkout allows."""
    from gpufleet.deploy_run import execute

    drifted = [h.host for h in report.hosts if h.items and h.checked]
    refused = None if allow_dirty else checkout.refusal()
    report.fix = {"commit": checkout.commit, "dirty": checkout.dirty, "allowed_dirty": allow_dirty,
                  "refused": refused, "hosts": drifted}
    if refused or not drifted:
        return
    with planned(inventory_path, drifted, overrides) as plan:
        report.fixed = {**{name: False for name in drifted}, **execute(plan, drifted)}


# ------------------------------------------------------------------------------- outputs ---------

def render_text(report: DriftReport) -> str:
    lines = []
    for h in report.hosts:
        if not h.checked:
            lines.append(f"{h.host}: NOT CHECKED: {h.error}" + (f" ({len(h.items)} drifted)" if h.items else ""))
        elif not h.items:
            lines.append(f"{h.host}: clean")
        else:
            lines.append(f"{h.host}: {len(h.items)} drifted")
        if h.items:
            for item in h.items:
                lines.append(f"  [{item.kind}] {item.check}: {item.cause}")
                lines += [f"      {d}" for d in item.details if not d.startswith("$ ")][:40]
    drifted = sum(1 for h in report.hosts if h.items)
    lines.append(f"\n{len(report.hosts)} hosts: {drifted} drifted, "
                 f"{sum(1 for h in report.hosts if not h.checked)} not checked ({report.duration:.1f}s)")
    if report.fix:
        fix = report.fix
        if fix["refused"]:
            lines.append(f"--fix refused: {fix['refused']}")
        elif report.fixed:
            done = ", ".join(f"{n} {'ok' if ok else 'FAILED'}" for n, ok in sorted(report.fixed.items()))
            lines.append(f"--fix deployed commit {(fix['commit'] or 'unknown')[:12]}"
                         f"{' with uncommitted changes' if fix['dirty'] else ''}: {done}")
    return "\n".join(lines)


def write_prometheus(report: DriftReport, path: str) -> None:
    """Textfile-collector metrics, written atomically (node_exporter reads the directory)."""
    from prometheus_client import CollectorRegistry, Gauge

    from gpufleet.control_timer import write_textfile

    registry = CollectorRegistry()
    drifted = Gauge("gpufleet_drift_operations", "Drifted operations and runtime checks per host", ["host"],
                    registry=registry)
    unreachable = Gauge("gpufleet_drift_host_unchecked", "1 when the host could not be checked", ["host"],
                        registry=registry)
    security = Gauge("gpufleet_drift_security_updates", "Held distribution packages behind the archive's build",
                     ["host"], registry=registry)
    for h in report.hosts:
        drifted.labels(h.host).set(len(h.items))
        unreachable.labels(h.host).set(0 if h.checked else 1)
        security.labels(h.host).set(sum(1 for i in h.items if i.kind == "security"))
    Gauge("gpufleet_drift_last_run_timestamp_seconds", "When the drift check started", registry=registry).set(
        report.started)
    Gauge("gpufleet_drift_duration_seconds", "How long the drift check took", registry=registry).set(report.duration)
    Gauge("gpufleet_drift_exit_code", "0 clean, 2 drift, 1 not checked", registry=registry).set(report.exit_code)
    Gauge("gpufleet_drift_fix_refused", "1 when --fix was asked for and refused (a checkout with uncommitted changes)",
          registry=registry).set(1 if (report.fix or {}).get("refused") else 0)
    write_textfile(registry, path)


def write_junit(report: DriftReport, path: str) -> None:
    """One test case per host: a failure per drifted item, an error when it could not be checked."""
    from xml.etree import ElementTree as ET

    suite = ET.Element("testsuite", name="gpufleet-drift", tests=str(len(report.hosts)),
                       failures=str(sum(1 for h in report.hosts if h.items)),
                       errors=str(sum(1 for h in report.hosts if not h.checked)), time=f"{report.duration:.3f}")
    for h in report.hosts:
        case = ET.SubElement(suite, "testcase", classname="drift", name=h.host)
        if not h.checked:
            ET.SubElement(case, "error", message=h.error or "not checked")
        for item in h.items:
            failure = ET.SubElement(case, "failure", message=f"[{item.kind}] {item.check}: {item.cause}")
            failure.text = "\n".join(item.details)
    from gpufleet.private_files import write_private

    body = ET.tostring(suite, encoding="unicode")
    write_private(path, "<?xml version='1.0' encoding='UTF-8'?>\n" + body)
