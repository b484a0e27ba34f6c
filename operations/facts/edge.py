"""What the load balancer and monitoring operations read on a host (never failing the host)."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from .systemd_show import PLAIN_UNIT, cut_out, show_command, units_asked
from .util import RC, READ_LIMIT_S, answer, wrap_answer

NGINX_CONF = "/etc/nginx/nginx.conf"
DRAINED_DIR = "/etc/nginx/gpufleet/drained"  # one marker file per drained replica
PROMETHEUS_CONF = "/etc/prometheus/prometheus.yml"


def _sha1_line(key: str, path: str) -> str:
    return f'echo "{key}=$(sha1sum {path} 2>/dev/null | cut -d" " -f1)"'


# The members of the config in place (files/nginx/nginx.conf.j2 ends each with "# <name>"), each
# with the upstream block it is in: ``member=<name> <address:port> [JOINING] upstream=<block>``.
MEMBERS_AWK = ("awk '$1 == \"upstream\" { u = $2 } $1 == \"server\" && index($0, \";  # \") { "
               "t = $2; sub(/;$/, \"\", t); c = substr($0, index($0, \";  # \") + 5); n = c; sub(/ .*/, \"\", n); "
               "print \"member=\" n \" \" t substr(c, length(n) + 1) \" upstream=\" u }'")


def key_values(output: list[str]) -> list[tuple[str, str]]:
    """``key=value`` lines (what these facts' commands echo) as stripped pairs.

    >>> key_values(["live=abc ", "drained=gpu-node-1-vllm-0"])
    [('live', 'abc'), ('drained', 'gpu-node-1-vllm-0')]
    """
    pairs = []
    for line in output:
        key, _, value = line.strip().partition("=")
        pairs.append((key, value.strip()))
    return pairs

class NginxState(FactBase):
    """The load balancer's nginx: its config file's SHA-1, the drained replicas (marker files) and
    the config id the running workers serve on 127.0.0.1:<status_port>/gpufleet-config.

    .. code:: python

        host.get_fact(NginxState, status_port=8081)
        {"config_sha1": "5f1c...", "drained": ["gpu-node-01-vllm-0"], "live_config_id": "a1b2c3d4e5f60718"}

    No nginx config: ``config_sha1`` None; nginx not running (or not ours): ``live_config_id`` None.
    """

    def command(self, status_port: int) -> str:
        return wrap_answer("; ".join([
            _sha1_line("config_sha1", NGINX_CONF),
            f'for f in {DRAINED_DIR}/*; do [ -f "$f" ] && echo "drained=${{f##*/}}"; done',
            f'echo "live=$(curl -fsS -m 3 http://127.0.0.1:{int(status_port)}/gpufleet-config 2>/dev/null)"',
            f"{MEMBERS_AWK} {NGINX_CONF} 2>/dev/null",
        ]))

    @staticmethod
    def default():
        return {"config_sha1": None, "drained": [], "live_config_id": None, "members": []}

    def process(self, output):
        state = self.default()
        for key, value in key_values(answer(output)):
            if key == "config_sha1":
                state["config_sha1"] = value or None
            elif key == "drained" and value:
                state["drained"].append(value)
            elif key == "live":
                state["live_config_id"] = value or None
            elif key == "member" and " " in value:
                name, target, *flags = value.split()
                address, _, port = target.rpartition(":")
                if port.isdigit():
                    member = {"name": name, "address": address, "port": int(port)}
                    if "JOINING" in flags:  # rendered down until it answers (operations/loadbalancer.membership)
                        member["joining"] = True
                    upstream = next((f.split("=", 1)[1] for f in flags if f.startswith("upstream=")), "vllm")
                    if upstream != "vllm":  # as operations/loadbalancer.members writes it
                        member["upstream"] = upstream
                    state["members"].append(member)
        state["drained"] = sorted(set(state["drained"]))
        return state


class UpstreamHealth(FactBase):
    """Which replicas answer vLLM's ``/health`` from this host (the load balancer's view).

    .. code:: python

        host.get_fact(UpstreamHealth, members=[{"name": "gpu-node-1-vllm-1", "address": "10.0.0.5", "port": 8001}])
        {"gpu-node-1-vllm-1": False}
    """

    # The replicas' own hosts start them in the same run (operations/fact_prefetch.py).
    read_live_at_execution = True

    def command(self, members: list) -> str:
        checks = []
        for m in members:
            url = shlex.quote(f"http://{m['address']}:{int(m['port'])}/health")
            checks.append(f'echo "{m["name"]}=$(curl -s -o /dev/null -m 3 -w "%{{http_code}}" {url})"')
        # One probe after another, each at most 3 s: the limit grows with them, so that only a
        # hung read is killed.
        return wrap_answer("; ".join(checks) or "true", limit=READ_LIMIT_S + 3 * len(checks))

    @staticmethod
    def default():
        return {}

    def process(self, output):
        return {key: value == "200" for key, value in key_values(answer(output)) if key}


class PrometheusState(FactBase):
    """Prometheus on this host: its config file's SHA-1 and whether its last (re)load succeeded.

    .. code:: python

        host.get_fact(PrometheusState, port=9090)
        {"config_sha1": "0b7e...", "reload_ok": True}

    ``reload_ok`` is None when Prometheus does not answer on <address>:<port> (it listens on
    the lb's private address, or on every interface: then 127.0.0.1).
    """

    def command(self, port: int, address: str = "127.0.0.1") -> str:
        return wrap_answer("; ".join([
            _sha1_line("config_sha1", PROMETHEUS_CONF),
            f"echo \"reload=$(curl -fsS -m 3 http://{address}:{int(port)}/metrics 2>/dev/null "
            "| awk '/^prometheus_config_last_reload_successful /{print $2}')\"",
        ]))

    @staticmethod
    def default():
        return {"config_sha1": None, "reload_ok": None}

    def process(self, output):
        state = self.default()
        for key, value in key_values(answer(output)):
            if key == "config_sha1":
                state["config_sha1"] = value or None
            elif key == "reload":
                state["reload_ok"] = None if not value else value in ("1", "1.0")
        return state


class ServiceStatesBatch:
    """Every ``ServiceState`` of a plan from one ``systemctl show`` (operations/fact_batches.py;
    operations/facts/systemd_show.py says why the blocks cut out of it are each read's own), under
    one time limit: a batch killed at it answers each read as timed out (fact_batches.Batch)."""

    @staticmethod
    def batch_accepts(fact_kwargs: dict) -> bool:
        service = fact_kwargs.get("service")
        return set(fact_kwargs) == {"service"} and isinstance(service, str) and bool(PLAIN_UNIT.fullmatch(service))

    @staticmethod
    def batch_command(kwargs_list: list[dict]) -> str:
        return ServiceState.command_for(units_asked([[kwargs["service"]] for kwargs in kwargs_list]))

    @staticmethod
    def batch_outputs(lines: list[str], kwargs_list: list[dict], exit_code: int = 0) -> list[list[str]] | None:
        # exit_code: the wrapped command's, always 0 (wrap_answer); systemctl's is its RC line.
        if not lines or lines[-1] != f"{RC}0" or any(line.startswith(RC) for line in lines[:-1]):
            return None  # systemctl failed (no systemd as PID 1, a unit name it refused): each reads alone
        keys = {"Id", *ServiceState.PROPERTIES}
        outputs = cut_out(lines[:-1], [[kwargs["service"]] for kwargs in kwargs_list], [keys] * len(kwargs_list))
        return None if outputs is None else [[*own, f"{RC}0"] for own in outputs]


class ServiceState(FactBase):
    """One systemd unit: ``{"active": "active"|"inactive"|"failed"|..., "enabled": "enabled"|"disabled"|...}``.

    ``active`` is the unit's ActiveState (what ``systemctl is-active`` prints) and ``enabled`` its
    UnitFileState (``is-enabled``, except for a unit asked by an alias name: the unit's own state,
    not "alias"); None when systemd does not know the unit's file, or cannot be asked.

    Example::

        host.get_fact(ServiceState, service="prometheus-node-exporter")
        # {"active": "active", "enabled": "enabled"}
    """

    PROPERTIES = {"ActiveState": "active", "UnitFileState": "enabled"}

    @classmethod
    def command_for(cls, services) -> str:
        """The read of these units (one, or a batch's), time-limited: systemctl waits on PID 1, and a
        wedged systemd must not hang the read (util.wrap_answer).

        >>> "systemctl show --all --property Id --property ActiveState --property UnitFileState -- ssh" in (
        ...     ServiceState.command_for(["ssh"]))
        True
        """
        return wrap_answer(show_command(services, ("Id", *cls.PROPERTIES)) + " 2>/dev/null")

    def command(self, service: str) -> str:
        return self.command_for([service])

    batch_reader = ServiceStatesBatch()  # every unit of a plan from one systemctl (operations/fact_batches.py)

    @staticmethod
    def default():
        return {"active": None, "enabled": None}

    def process(self, output):
        state = self.default()
        for key, value in key_values(answer(output)):
            if key in self.PROPERTIES:
                state[self.PROPERTIES[key]] = value or None
        return state
