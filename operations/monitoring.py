"""GPU monitoring: the DCGM exporter and gpu_monitor on GPU nodes, Prometheus on lb hosts.

- DCGM exporter (:9400): a container (operations/containers.py) with ``--gpus all``, its counters
  CSV (files/dcgm/counters.csv, ``DCGM_FI_DEV_*`` only: GeForce has no profiling fields) mounted
  over the image's default-counters.csv. The CSV's digest is a label, so a changed CSV recreates
  the container. Never started without GPUs. No ``--cap-add SYS_ADMIN``: NVIDIA's docs ask for it
  only for the profiling (DCP, ``DCGM_FI_PROF_*``) metrics, which the CSV does not collect.
- gpu_monitor (:9401): files/gpu_monitor.py under /opt/gpufleet/gpu-monitor/, in a venv made with
  python3-venv from pinned requirements and ``monitor_pip_install_args`` (a mirror, or a wheel
  directory in air-gapped sites and the lab); a systemd unit from files/systemd/. A venv is
  (re)built only when its inputs change (a stamp file records them); the service restarts only
  when the script, the venv or the unit changed. A unit change needs ``systemctl daemon-reload``,
  which is refused while GPU containers run without CDI; enabling uses ``--no-reload``.
- Prometheus (Debian's ``prometheus``) on lb hosts: scrape jobs generated from the inventory (vLLM
  per replica, DCGM exporter, gpu_monitor and Milvus per GPU node) and the alert rules of
  files/prometheus/alerts.yml (unit-tested with ``promtool test rules``, see alerts_test.yml there)
  as /etc/prometheus/gpufleet-alerts.yml, named in the config's ``rule_files``. A new rules file is
  checked with ``promtool check rules`` and a new config with ``promtool check config`` before
  either replaces the live one; after the reload the operation waits for
  ``prometheus_config_last_reload_successful 1`` with a fresh timestamp (a rules file that fails
  to load fails the reload too), and puts the old files back (and reloads) if that does not come.
- Alertmanager (Debian's ``prometheus-alertmanager``) on lb hosts, only where
  ``alertmanager_webhook_url_file`` names a control-side file with a webhook URL: one webhook
  receiver (files/prometheus/alertmanager.yml.j2), listening on 127.0.0.1:9093 without gossip; that
  lb's Prometheus sends its alerts there. The URL is a secret: the config holding it is written by
  operations/secrets.py (root:prometheus 0640, compared by digest, never shown or diffed) beside
  the live one, checked with ``amtool check-config``, then swapped in, loaded and rolled back like
  Prometheus's (operations/util.py ``swap_script``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import FileUploadCommand, OperationValueError, StringCommand, operation
from pyinfra.facts.files import File, FileContents, Sha1File

from operations import containers, pinned_apt
from operations.util import Staged, put_text, render_file, swap_script
from operations.docker_daemon import refuse_daemon_reload_under_gpu_containers
from operations.facts.edge import PROMETHEUS_CONF, PrometheusState, ServiceState
from operations.secrets import SecretWrite, read_secret, secret_file
from operations.digests import short_digest

FILES = Path(__file__).resolve().parents[1] / "files"
DCGM_COUNTERS = "/etc/gpufleet/dcgm-exporter/counters.csv"
DCGM_CONTAINER = "dcgm-exporter"
MONITOR_DIR = "/opt/gpufleet/gpu-monitor"
MONITOR_VENV = f"{MONITOR_DIR}/venv"
MONITOR_STAMP = f"{MONITOR_VENV}/.gpufleet-inputs"
MONITOR_SERVICE = "gpufleet-gpu-monitor.service"
MONITOR_UNIT = f"/etc/systemd/system/{MONITOR_SERVICE}"
PROMETHEUS_DEFAULTS = "/etc/default/prometheus"
PROM_NEW = f"{PROMETHEUS_CONF}.gpufleet-new"
PROM_OLD = f"{PROMETHEUS_CONF}.gpufleet-old"
# Named relative to the config's directory in rule_files, so that a new config can be checked
# together with the rules it will load (a copy of both in a scratch directory).
RULES_NAME = "gpufleet-alerts.yml"
PROMETHEUS_RULES = f"/etc/prometheus/{RULES_NAME}"
RULES_NEW = f"{PROMETHEUS_RULES}.gpufleet-new"
RULES_OLD = f"{PROMETHEUS_RULES}.gpufleet-old"
ALERTMANAGER_CONF = "/etc/prometheus/alertmanager.yml"  # Debian's path
ALERTMANAGER_NEW = f"{ALERTMANAGER_CONF}.gpufleet-new"
ALERTMANAGER_OLD = f"{ALERTMANAGER_CONF}.gpufleet-old"
ALERTMANAGER_DEFAULTS = "/etc/default/prometheus-alertmanager"
ALERTMANAGER_SERVICE = "prometheus-alertmanager"
ALERTMANAGER_LISTEN = "127.0.0.1:9093"
ALERTMANAGER_GROUP_WAIT = "30s"  # Alertmanager's own default
ALERTMANAGER_GROUP_INTERVAL = "5m"  # Alertmanager's own default


def _render(template: str, **values) -> str:
    return render_file(FILES / template, **values)


def _digest(*parts) -> str:
    return short_digest(parts)


# --- DCGM exporter -------------------------------------------------------------------------------

def dcgm_counters() -> str:
    return (FILES / "dcgm" / "counters.csv").read_text()


def dcgm_spec(image: str, port: int = 9400, counters: str = "", listen_address: str = "0.0.0.0"):
    return containers.ContainerSpec(
        name=DCGM_CONTAINER, image=image, gpus="all",
        ports=[f"{listen_address}:{port}:9400"],
        volumes=[f"{DCGM_COUNTERS}:/etc/dcgm-exporter/default-counters.csv:ro"],
        labels={"io.gpufleet.counters": short_digest(counters)},
    )


@operation()
def dcgm_exporter(image: str, gpu_count: int, port: int = 9400, counters: str | None = None,
                  listen_address: str = "0.0.0.0"):
    """
    NVIDIA's DCGM exporter as a container on a GPU node; nothing on a host without GPUs.

    + image: pinned exporter image, e.g. ``nvcr.io/nvidia/k8s/dcgm-exporter:4.5.3-4.8.2-distroless``
    + gpu_count: the host's GPUs (settings.gpu_count); 0 means no exporter
    + port: host port for /metrics and /health (the container listens on 9400)
    + counters: the counters CSV text (default: files/dcgm/counters.csv)
    + listen_address: host address the port is published on

    **Example:**

    .. code:: python

        monitoring.dcgm_exporter(image=settings.dcgm_exporter_image, gpu_count=settings.gpu_count)
    """
    if not gpu_count:
        host.noop("no GPUs on this host: no DCGM exporter")
        return
    counters = dcgm_counters() if counters is None else counters
    yield from put_text(DCGM_COUNTERS, counters)
    yield from containers.container._inner(spec=dcgm_spec(image, port, counters, listen_address))


# --- gpu_monitor ---------------------------------------------------------------------------------

def gpu_monitor_script() -> str:
    return (FILES / "gpu_monitor.py").read_text()


def monitor_unit(port: int, listen_address: str, interval_s: float) -> str:
    return _render("systemd/gpufleet-gpu-monitor.service.j2", port=port, listen_address=listen_address,
                   interval_s=interval_s, python=f"{MONITOR_VENV}/bin/python", script=f"{MONITOR_DIR}/gpu_monitor.py")


def venv_command(requirements: list[str], pip_install_args: list[str], digest: str) -> str:
    pip = " ".join(shlex.quote(a) for a in [*pip_install_args, *requirements])
    return (f"rm -rf {MONITOR_VENV} && python3 -m venv {MONITOR_VENV} && "
            f"{MONITOR_VENV}/bin/pip install --disable-pip-version-check --no-input -q {pip} && "
            f"echo {digest} > {MONITOR_STAMP}")


@operation()
def gpu_monitor(gpu_count: int, requirements: list[str], pip_install_args: list[str] | None = None,
                port: int = 9401, listen_address: str = "0.0.0.0", interval_s: float = 5.0,
                script: str | None = None):
    """
    files/gpu_monitor.py as a systemd service (NVML metrics on ``port``); nothing without GPUs.

    + gpu_count: the host's GPUs; 0 means no monitor
    + requirements: exact pins for its venv, e.g. ``["nvidia-ml-py==13.615.71", "prometheus-client==0.23.1"]``
    + pip_install_args: extra ``pip install`` arguments (``--index-url``, ``--find-links``, ``--no-index``)
    + port, listen_address, interval_s: passed to gpu_monitor.py
    + script: the monitor's source (default: files/gpu_monitor.py)

    **Example:**

    .. code:: python

        monitoring.gpu_monitor(gpu_count=2, requirements=settings.gpu_monitor_requirements,
                               pip_install_args=["--index-url", "https://pypi.example.internal/simple"])
    """
    if not gpu_count:
        host.noop("no GPUs on this host: no gpu_monitor")
        return
    script = gpu_monitor_script() if script is None else script
    yield from pinned_apt.packages._inner(packages=["python3-venv"])

    commands = list(put_text(f"{MONITOR_DIR}/gpu_monitor.py", script, mode="755"))
    changed = bool(commands)
    yield from commands

    digest = _digest(requirements, pip_install_args or [])
    stamp = host.get_fact(FileContents, path=MONITOR_STAMP)
    if not stamp or stamp[0].strip() != digest:
        changed = True
        yield venv_command(requirements, pip_install_args or [], digest)

    unit = list(put_text(MONITOR_UNIT, monitor_unit(port, listen_address, interval_s)))
    if unit:
        refuse_daemon_reload_under_gpu_containers(f"writing {MONITOR_UNIT}")
        changed = True
        yield from unit
        yield "systemctl daemon-reload"

    service = host.get_fact(ServiceState, service=MONITOR_SERVICE)
    if service["enabled"] != "enabled":
        # `systemctl enable` reloads systemd unless told not to; the unit is known already.
        yield f"systemctl enable --no-reload {MONITOR_SERVICE}"
    if changed:
        yield f"systemctl restart {MONITOR_SERVICE}"
    elif service["active"] != "active":
        yield f"systemctl start {MONITOR_SERVICE}"
    elif service["enabled"] == "enabled":
        host.noop(f"{MONITOR_SERVICE} runs, venv {digest}")


# --- Prometheus on lb hosts ----------------------------------------------------------------------

# "address": the row's key holding where the job's target listens ("address" when the row lacks it).
NODE_JOBS = [
    {"name": "dcgm", "key": "dcgm_exporter_port", "address": "address", "path": "/metrics",
     "comment": "DCGM exporter per GPU node (DCGM_FI_DEV_* fields)."},
    {"name": "gpu_monitor", "key": "gpu_monitor_port", "address": "address", "path": "/metrics",
     "comment": "gpufleet's NVML monitor per GPU node (gpufleet_gpu_*, gpufleet_nvml_up)."},
    {"name": "milvus", "key": "milvus_metrics_port", "address": "milvus_address", "path": "/metrics",
     "comment": "Milvus on the vector_db host (its /metrics is on milvus_health_port)."},
]


def local_address(listen_address: str | None) -> str:
    """Where this host reaches a server that listens on ``listen_address`` (every interface: 127.0.0.1).

    >>> local_address("0.0.0.0"), local_address(None), local_address("10.0.0.5")
    ('127.0.0.1', '127.0.0.1', '10.0.0.5')
    """
    return "127.0.0.1" if listen_address in (None, "", "0.0.0.0") else listen_address


def render_prometheus(replicas: list, nodes: list, options: dict | None = None, hosts: list | None = None) -> str:
    opts = {"port": 9090, "scrape_interval_s": 15, **(options or {})}
    rows = [r if isinstance(r, dict) else r.model_dump() for r in replicas]
    # Each job scrapes the hosts whose row has its port; a job with none is left out.
    jobs = [{**job, "targets": [n for n in nodes if job["key"] in n]} for job in NODE_JOBS]
    return _render("prometheus/prometheus.yml.j2", replicas=rows, node_jobs=[j for j in jobs if j["targets"]],
                   hosts=hosts or [],
                   prometheus_address=local_address(opts.get("listen_address")),
                   prometheus_port=opts["port"], scrape_interval_s=opts["scrape_interval_s"],
                   rule_files=[RULES_NAME], alertmanager=opts.get("alertmanager"))


_ALERT = re.compile(r"^\s*- alert: (\S+)\s*$")
_HOLD = re.compile(r"^(\s*)for: (\S+)\s*$")


def alert_hold_times(text: str | None = None) -> dict[str, str]:
    """``{alert: its "for:" duration}`` of the shipped rules (alerts that fire at once have none).

    >>> alert_hold_times()["VllmReplicaDown"]
    '5m'
    """
    text = (FILES / "prometheus" / "alerts.yml").read_text() if text is None else text
    out, current = {}, None
    for line in text.splitlines():
        if alert := _ALERT.match(line):
            current = alert.group(1)
        elif (hold := _HOLD.match(line)) and current:
            out[current] = hold.group(2)
    return out


def alert_rules(hold_for: dict[str, str] | None = None) -> str:
    """files/prometheus/alerts.yml: the alert rules every lb host's Prometheus evaluates, with the
    ``for:`` of each alert named in ``hold_for`` replaced (settings' ``alert_hold_for``; the text,
    comments and all, is otherwise the shipped file).

    >>> "for: 30s" in alert_rules({"VllmReplicaDown": "30s"}).split("alert: VllmReplicaDown")[1].split("- alert:")[0]
    True
    """
    text = (FILES / "prometheus" / "alerts.yml").read_text()
    if not hold_for:
        return text
    unknown = sorted(set(hold_for) - set(alert_hold_times(text)))
    if unknown:
        raise OperationValueError(f"alert_hold_for: no alert with a `for:` named {', '.join(unknown)}")
    lines, current = text.splitlines(keepends=True), None
    for i, line in enumerate(lines):
        if alert := _ALERT.match(line):
            current = alert.group(1)
        elif (hold := _HOLD.match(line)) and current in hold_for:
            lines[i] = f"{hold.group(1)}for: {hold_for[current]}\n"
    return "".join(lines)


def prometheus_defaults(port: int, retention: str, listen_address: str | None = None) -> str:
    bind = "" if listen_address in (None, "0.0.0.0") else listen_address  # ":9090" is every interface
    return ("# Managed by gpufleet (operations/monitoring.py): arguments of Debian's prometheus unit.\n"
            f'ARGS="--web.listen-address={bind}:{int(port)} --storage.tsdb.retention.time={retention}"\n')


def prometheus_script(port: int, restart: bool, test_new: bool = True, rules: bool = False,
                      address: str = "127.0.0.1") -> str:
    """Shell text: promtool-check the new file(s), swap them in, reload, wait for a successful load; roll back.

    ``test_new``: a new config is in PROM_NEW; ``rules``: new alert rules are in RULES_NEW. Every
    new file is checked before any is swapped in. Neither: reload (or restart) and wait only.
    """
    verb = "restart" if restart else "reload-or-restart"
    metrics = f"http://{address}:{int(port)}/metrics"
    uploaded = " ".join(([RULES_NEW] if rules else []) + ([PROM_NEW] if test_new else []))
    checks = []
    if rules:
        checks.append(f'if ! out=$(promtool check rules {RULES_NEW} 2>&1); then rm -f {uploaded}; '
                      f'echo "gpufleet: promtool rejects the new rules, {PROMETHEUS_RULES} unchanged: $out" >&2; exit 1; fi')
    rules_in = RULES_NEW if rules else PROMETHEUS_RULES
    if test_new:
        # promtool also loads the rule files a config names: check the new config beside the rules
        # it will run with (the new ones, or the live ones when they do not change).
        checks += [
            f"check=$(mktemp -d) || {{ rm -f {uploaded}; exit 1; }}",
            # A copy that fails (a full disk) stops here; live rules that are absent are left to promtool.
            f'if ! cp {PROM_NEW} "$check/prometheus.yml" || {{ [ -e {rules_in} ] && ! cp {rules_in} "$check/{RULES_NAME}"; }}; '
            f'then rm -rf "$check" {uploaded}; echo "gpufleet: cannot copy the new config to check it, {PROMETHEUS_CONF} unchanged" >&2; exit 1; fi',
            f'if ! out=$(promtool check config "$check/prometheus.yml" 2>&1); then rm -rf "$check" {uploaded}; '
            f'echo "gpufleet: promtool rejects the new config, {PROMETHEUS_CONF} unchanged: $out" >&2; exit 1; fi',
            'rm -rf "$check"',
        ]
    # No rules file before: none after a roll-back either (optional: an old copy is never left over).
    files = [Staged(RULES_NEW, PROMETHEUS_RULES, RULES_OLD, staged=rules, optional=True),
             Staged(PROM_NEW, PROMETHEUS_CONF, PROM_OLD, staged=test_new)]
    return swap_script(
        files, checks, reload=f"systemctl {verb} prometheus", start="since=$(date +%s)", tries=240, interval="0.5",
        probe=(f"m=$(curl -fsS -m 2 {metrics} 2>/dev/null || true); "
               "r=$(echo \"$m\" | awk '/^prometheus_config_last_reload_successful /{print $2}'); "
               "t=$(echo \"$m\" | awk '/^prometheus_config_last_reload_success_timestamp_seconds /{printf \"%d\", $2}'); "
               'if [ "$r" = 1 ] && [ "${t:-0}" -ge "$since" ]; then ok=1; break; fi'),
        failed="prometheus did not load the new config")


@operation()
def prometheus(replicas: list, nodes: list, options: dict | None = None, rules: str | None = None,
               hosts: list | None = None):
    """
    /etc/prometheus/prometheus.yml from the inventory and the alert rules: check, swap in, reload,
    roll back on failure.

    + replicas: ``[{"name", "node", "address", "port"}]`` (one vLLM target each)
    + nodes: ``[{"name", "address", "dcgm_exporter_port", "gpu_monitor_port", "milvus_metrics_port",
      "milvus_address"}]`` (a host without one of the ports is not a target of that job: Milvus runs on
      one host); ``address`` is where the exporters listen, ``milvus_address`` (default: ``address``)
      where Milvus does
    + options: ``port`` (9090), ``scrape_interval_s`` (15), ``retention`` (15d), ``alertmanager``
      (``host:port`` alerts are sent to; None: none)
    + rules: the alert rules' text, installed as /etc/prometheus/gpufleet-alerts.yml
      (default: files/prometheus/alerts.yml)
    + hosts: ``[{"name", "address", "port"}]``: every host's node_exporter (job ``node``, which
      also carries drift's textfile metrics)

    **Example:**

    .. code:: python

        monitoring.prometheus(
            replicas=[{"name": "gpu-node-01-vllm-0", "node": "gpu-node-01", "address": "10.40.1.11", "port": 8000}],
            nodes=[{"name": "gpu-node-01", "address": "10.40.1.11", "dcgm_exporter_port": 9400,
                    "gpu_monitor_port": 9401}],
            options={"listen_address": "10.40.0.5"})
    """
    opts = {"port": 9090, "scrape_interval_s": 15, "retention": "15d", **(options or {})}
    rules = alert_rules() if rules is None else rules
    defaults = list(put_text(PROMETHEUS_DEFAULTS, prometheus_defaults(opts["port"], opts["retention"],
                                                                      opts.get("listen_address"))))
    yield from defaults
    text = render_prometheus(replicas, nodes, opts, hosts)
    local = local_address(opts.get("listen_address"))
    state = host.get_fact(PrometheusState, port=opts["port"], address=local)
    new_config = state["config_sha1"] != hashlib.sha1(text.encode()).hexdigest()
    new_rules = host.get_fact(Sha1File, path=PROMETHEUS_RULES) != hashlib.sha1(rules.encode()).hexdigest()
    if new_config or new_rules:
        if new_rules:
            yield FileUploadCommand(StringIO(rules), RULES_NEW)
        if new_config:
            yield FileUploadCommand(StringIO(text), PROM_NEW)
        yield StringCommand(prometheus_script(opts["port"], restart=bool(defaults), test_new=new_config,
                                              rules=new_rules, address=local))
    elif defaults or state["reload_ok"] is not True:
        yield StringCommand(prometheus_script(opts["port"], restart=bool(defaults), test_new=False, address=local))
    elif not defaults:
        n_rules = sum(1 for line in rules.splitlines() if line.strip().startswith("- alert:"))
        host.noop(f"prometheus runs its config ({len(replicas)} vLLM targets, {len(nodes)} GPU nodes, "
                  f"{n_rules} alert rules)")


# --- Alertmanager on lb hosts ------------------------------------------------------------------

# What Alertmanager's config loader takes as a webhook URL (Go's net/url.Parse, then an http(s)
# scheme and a host), narrowed to RFC 3986's characters: anything else %-encoded.
_WEBHOOK_URL = re.compile(r"(https?)://(?:([^/?#]*)@)?([^/?#@]*)([/?#].*)?", re.S)
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
_URL_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_URL_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")  # a DNS name or an IPv4 address
_URL_HOST_PORT = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(?::([^:\[\]]*))?")


def webhook_url_problem(url: str) -> str | None:
    """What keeps ``url`` from being a webhook URL Alertmanager loads, or None; never shows the URL.

    Go's ``net/url.Parse`` refuses a port that is not a number (``http://h:abc/x``), a bad ``%``
    escape, a host with characters such as a space or ``|``, an unclosed ``[``; Alertmanager then
    wants http(s) and a host. Refused here too: characters outside RFC 3986 (a space, ``"``,
    ``<``, ``\\``... they must be %-encoded), a port outside 1-65535, a host that is neither a DNS
    name nor an IP address.

    >>> webhook_url_problem("https://hooks.example.internal:8443/alert?token=abc") is None
    True
    >>> webhook_url_problem("http://h:abc/x")
    'the port is not a number from 1 to 65535'
    """
    match = _WEBHOOK_URL.fullmatch(url)
    if not match:
        return "one http:// or https:// URL expected"
    if not _URL_CHARS.fullmatch(url):
        return "characters a URL may not hold (spaces, quotes, <>, \\, {}, |, ^, `: %-encode them)"
    if _URL_BAD_ESCAPE.search(url):
        return "a % that does not start a %XX escape"
    _, userinfo, hostport, _ = match.groups()
    if userinfo is not None and re.search(r"[\[\]]", userinfo):
        return "a user:password part with [ or ]"
    parts = _URL_HOST_PORT.fullmatch(hostport)
    if not parts:
        return "a host with at most one :port after it (an IPv6 address in [])"
    host, port = parts.groups()
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "an IPv6 address inside [ ]"
    elif not host:
        return "a host (none found)"
    elif not _URL_HOST.fullmatch(host):
        return "a host that is a DNS name or an IP address"
    if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
        return "the port is not a number from 1 to 65535"
    return None


def render_alertmanager(webhook_url: str, group_wait: str = ALERTMANAGER_GROUP_WAIT,
                        group_interval: str = ALERTMANAGER_GROUP_INTERVAL) -> str:
    return _render("prometheus/alertmanager.yml.j2", webhook_url=webhook_url, group_wait=group_wait,
                   group_interval=group_interval)


def alertmanager_defaults(listen: str) -> str:
    return ("# Managed by gpufleet (operations/monitoring.py): arguments of Debian's prometheus-alertmanager unit.\n"
            "# One Alertmanager per lb host, for that host's Prometheus only: no gossip cluster.\n"
            f'ARGS="--web.listen-address={listen} --cluster.listen-address="\n')


def alertmanager_script(listen: str, restart: bool, test_new: bool = True) -> str:
    """Shell text: amtool-check the new config, swap it in, (re)load, wait for a successful load; roll back.

    ``test_new``: a new config is in ALERTMANAGER_NEW (amtool's output, which may quote the URL, is
    not shown). Without it: reload (or restart) and wait only; a kept copy that a run cut off after
    its swap left behind goes back if that fails. No config before (a fresh host): none after a
    roll-back either, so the next run writes and checks it again.
    """
    verb = "restart" if restart else "reload-or-restart"
    checks = [f"if ! amtool check-config {ALERTMANAGER_NEW} >/dev/null 2>&1; then rm -f {ALERTMANAGER_NEW}; "
              f'echo "gpufleet: amtool rejects the new config, {ALERTMANAGER_CONF} unchanged '
              '(output not shown: it holds the webhook URL)" >&2; exit 1; fi']
    return swap_script(
        [Staged(ALERTMANAGER_NEW, ALERTMANAGER_CONF, ALERTMANAGER_OLD, staged=test_new, optional=test_new)],
        checks if test_new else [], reload=f"systemctl {verb} {ALERTMANAGER_SERVICE}", start="since=$(date +%s)",
        tries=120, interval="0.5",
        probe=(f"m=$(curl -fsS -m 2 http://{listen}/metrics 2>/dev/null || true); "
               "r=$(echo \"$m\" | awk '/^alertmanager_config_last_reload_successful /{print $2}'); "
               "t=$(echo \"$m\" | awk '/^alertmanager_config_last_reload_success_timestamp_seconds /{printf \"%d\", $2}'); "
               'if [ "$r" = 1 ] && [ "${t:-0}" -ge "$since" ]; then ok=1; break; fi'),
        failed=f"{ALERTMANAGER_SERVICE} did not load {ALERTMANAGER_CONF}")


@operation()
def alertmanager(webhook_url_file: str | None, listen: str = ALERTMANAGER_LISTEN,
                 group_wait: str = ALERTMANAGER_GROUP_WAIT, group_interval: str = ALERTMANAGER_GROUP_INTERVAL):
    """
    Alertmanager with one webhook receiver, for the Prometheus on the same lb host; off without a URL.

    + webhook_url_file: *control-side* file whose one line is the webhook URL (``http(s)://...``);
      None: no Alertmanager (nothing is installed or changed)
    + listen: ``address:port`` of its API (the Prometheus config's ``alerting`` target)
    + group_wait: how long a new group's first alert waits for others before it is sent (a
      Prometheus duration; Alertmanager's 30s: lower pages sooner, in more messages)
    + group_interval: how often a group that has notified sends what changed (Alertmanager's 5m): a
      resolved alert is told at the next send; one that fires again before it is still the firing
      alert the receiver was told about, and is not told again before the 4h repeat interval

    The URL is read on the control host when the operation runs and written only into
    /etc/prometheus/alertmanager.yml (root:prometheus 0640) through operations/secrets.py: compared
    by sha256, never printed, diffed or put on a command line. A new config is written beside the
    live one (``alertmanager.yml.gpufleet-new``, its final owner and mode from the first byte),
    checked with ``amtool check-config``, swapped in and loaded; one Alertmanager does not load
    is rolled back (operations/util.py ``swap_script``). The live file only ever holds a config
    that passed, so its digest matching means there is nothing to do.

    **Example:**

    .. code:: python

        monitoring.alertmanager(webhook_url_file="~/.config/gpufleet/alert-webhook-url")
    """
    if webhook_url_file is None:
        host.noop("no alertmanager_webhook_url_file: no Alertmanager (alerts stay in Prometheus)")
        return
    url = read_secret(webhook_url_file)
    problem = webhook_url_problem(url)
    if problem:
        raise OperationValueError(f"alertmanager_webhook_url_file {webhook_url_file}: {problem} "
                                  "(the value is not shown)")
    yield from pinned_apt.packages._inner(packages=["prometheus-alertmanager"])
    defaults = list(put_text(ALERTMANAGER_DEFAULTS, alertmanager_defaults(listen)))
    yield from defaults
    # New content goes beside the live file, for the script to check and swap in; an owner or mode
    # fix of an unchanged file is made in place.
    config = list(secret_file(ALERTMANAGER_CONF, render_alertmanager(url, group_wait, group_interval), user="root",
                              group="prometheus", mode="640", stage_at=ALERTMANAGER_NEW))
    new_config = any(isinstance(c, SecretWrite) for c in config)
    yield from config
    # A copy a run cut off after its swap kept: the live config was never seen loading.
    leftover = host.get_fact(File, path=ALERTMANAGER_OLD)
    service = host.get_fact(ServiceState, service=ALERTMANAGER_SERVICE)
    if service["enabled"] != "enabled":
        yield f"systemctl enable {ALERTMANAGER_SERVICE}"
    if defaults or config or leftover or service["active"] != "active":
        yield StringCommand(alertmanager_script(listen, restart=bool(defaults), test_new=new_config))
    elif service["enabled"] == "enabled":
        host.noop(f"{ALERTMANAGER_SERVICE} runs on {listen} with its webhook receiver")
