"""What ``docker_daemon_config`` may hold: the keys of dockerd's daemon.json and the JSON type of each.

dockerd refuses to start on a daemon.json key it does not know ("the following directives don't
match any configuration option") or on a value of the wrong JSON type ("cannot unmarshal number
into Go struct field Config.log-opts of type string"). The deploy restarts Docker after writing
daemon.json, so without this check a typo takes the node's Docker (and every GPU container on
it) down in the middle of a run. The table covers the Linux keys of dockerd's reference
("Daemon configuration file", docs.docker.com/reference/cli/dockerd) from Docker 20.10, the
fleet's engine, to current releases; keys that dockerd removed (``cluster-store``, ``graph``...)
are not in it.

Two keys are refused although dockerd knows them, because the deploy owns them:

- ``runtimes``: the deploy writes the nvidia runtime there itself (operations/docker_daemon.py); a value
  here would be replaced without a word.
- ``hosts``: Debian's and Ubuntu's docker.service start dockerd with ``-H fd://``, and dockerd
  refuses to start when a directive is given both as a flag and in daemon.json.
"""

from __future__ import annotations

from typing import Any

_STR = ("api-cors-header", "bip", "bip6", "bridge", "bridge-accept-fwmark", "cgroup-parent", "containerd",
        "containerd-namespace", "containerd-plugins-namespace", "data-root", "default-cgroupns-mode",
        "default-gateway", "default-gateway-v6", "default-ipc-mode", "default-runtime", "default-shm-size",
        "exec-root", "firewall-backend", "fixed-cidr", "fixed-cidr-v6", "group", "host-gateway-ip", "http-proxy",
        "https-proxy", "init-path", "ip", "log-driver", "log-format", "log-level", "no-proxy", "pidfile",
        "seccomp-profile", "storage-driver", "swarm-default-advertise-addr", "tlscacert", "tlscert", "tlskey",
        "userland-proxy-path", "userns-remap")
_BOOL = ("allow-direct-routing", "debug", "experimental", "icc", "init", "ip-forward", "ip-forward-no-drop",
         "ip-masq", "ip6tables", "iptables", "ipv6", "live-restore", "no-new-privileges", "raw-logs",
         "selinux-enabled", "tls", "tlsverify", "userland-proxy")
_INT = ("cpu-rt-period", "cpu-rt-runtime", "max-concurrent-downloads", "max-concurrent-uploads",
        "max-download-attempts", "mtu", "network-control-plane-mtu", "oom-score-adjust", "shutdown-timeout")
_STR_LIST = ("allow-nondistributable-artifacts", "authorization-plugins", "cdi-spec-dirs", "dns", "dns-opts",
             "dns-search", "exec-opts", "host-gateway-ips", "insecure-registries", "labels", "node-generic-resources",
             "registry-mirrors", "storage-opts")
_OBJECT = ("builder", "default-network-opts", "default-ulimits", "proxies")

# key -> (what the value must be, a check of the parsed JSON value)
DAEMON_KEYS: dict[str, tuple[str, Any]] = {
    **{k: ("a string", lambda v: isinstance(v, str)) for k in _STR},
    **{k: ("true or false", lambda v: isinstance(v, bool)) for k in _BOOL},
    **{k: ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)) for k in _INT},
    **{k: ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v))
       for k in _STR_LIST},
    **{k: ("an object", lambda v: isinstance(v, dict)) for k in _OBJECT},
    "log-opts": ("an object of strings (dockerd reads every log option as a string: \"3\", not 3)",
                 lambda v: isinstance(v, dict) and all(isinstance(i, str) for i in v.values())),
    "features": ("an object of true/false flags", lambda v: isinstance(v, dict)
                 and all(isinstance(i, bool) for i in v.values())),
    "default-address-pools": ("a list of {\"base\": CIDR, \"size\": int}", lambda v: isinstance(v, list) and all(
        isinstance(p, dict) and isinstance(p.get("base"), str) and isinstance(p.get("size"), int) for p in v)),
}

OWNED_BY_THE_DEPLOY = {
    "runtimes": "a key the deploy sets itself (the nvidia runtime, operations/docker_daemon.py); remove it",
    "hosts": "no 'hosts': docker.service already passes -H fd:// and dockerd refuses to start with both",
}


def daemon_config_problems(config: dict[str, Any]) -> list[str]:
    """Why ``config`` would stop dockerd, one line per key; empty when it is a valid daemon.json."""
    problems = []
    for key, value in config.items():
        if key in OWNED_BY_THE_DEPLOY:
            problems.append(f"{key}: {OWNED_BY_THE_DEPLOY[key]}")
        elif key not in DAEMON_KEYS:
            problems.append(f"{key}: a daemon.json key dockerd knows (docs.docker.com/reference/cli/dockerd)")
        elif not DAEMON_KEYS[key][1](value):
            problems.append(f"{key}: {DAEMON_KEYS[key][0]}, not {value!r}")
    return problems
