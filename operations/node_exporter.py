"""node_exporter on every host: host metrics, and drift's through its textfile collector.

Debian's and Ubuntu's ``prometheus-node-exporter`` at a security floor
(operations/distro_packages.py), listening on the host's private address only (settings
``metrics_listen_address``, as the GPU exporters), with the textfile collector reading
``/var/lib/prometheus/node-exporter``: the directory ``gpufleet drift --prometheus`` and the
drift timer (gpufleet/drift_timer.py) write ``gpufleet_drift*`` metrics into, so the drift alerts
(files/prometheus/alerts.yml) have something to read wherever the drift timer runs on an
inventory host. Every lb's Prometheus scrapes every host's node_exporter (job ``node``).

Order matters on the first install: the package's default file is written *before* the package,
so the service's first start already listens where it should (apt keeps an existing conffile:
``--force-confold``), never on every interface. Installing the package reloads systemd, which
takes the GPUs from running containers: on a GPU node serving replicas it is refused like any
such step (a ``gpufleet rollout`` stops the node's GPU containers first).
"""

from __future__ import annotations


from pyinfra import host
from pyinfra.api import operation
from pyinfra.operations import files

from operations import distro_packages
from operations.docker_daemon import refuse_daemon_reload_under_gpu_containers
from operations.facts.apt import PackageStates
from operations.facts.edge import ServiceState
from operations.util import put_text

PACKAGE = "prometheus-node-exporter"
SERVICE = "prometheus-node-exporter"
DEFAULTS = "/etc/default/prometheus-node-exporter"  # Debian's unit: ExecStart=... $ARGS
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


def defaults_text(listen_address: str, port: int, textfile_dir: str = TEXTFILE_DIR) -> str:
    """The unit's arguments: the private address only, and the textfile directory.

    >>> print(defaults_text("10.40.1.11", 9100), end="")
    # Managed by gpufleet (operations/node_exporter.py): arguments of Debian's prometheus-node-exporter unit.
    ARGS="--web.listen-address=10.40.1.11:9100 --collector.textfile.directory=/var/lib/prometheus/node-exporter"
    """
    bind = "" if listen_address == "0.0.0.0" else (f"[{listen_address}]" if ":" in listen_address else listen_address)
    args = f"--web.listen-address={bind}:{int(port)} --collector.textfile.directory={textfile_dir}"
    return ("# Managed by gpufleet (operations/node_exporter.py): arguments of Debian's prometheus-node-exporter unit.\n"
            f'ARGS="{args}"\n')


@operation()
def node_exporter(listen_address: str, port: int = 9100, min_version: str | None = None,
                  textfile_dir: str = TEXTFILE_DIR):
    """
    node_exporter listening on ``listen_address:port``, its textfile collector on ``textfile_dir``.

    + listen_address: the host's private address (``0.0.0.0`` only where that network is the only one)
    + port: node_exporter's port (9100 by convention)
    + min_version: the package's security floor (group_data ``node_exporter_min_version``); None:
      whatever the archive has, not held
    + textfile_dir: where ``*.prom`` files are read from (drift's metrics)

    Nothing runs on a converged host. A changed address or port restarts the service (no systemd
    reload: the unit does not change).

    **Example:**

    .. code:: python

        node_exporter.node_exporter(name="node_exporter", listen_address="10.40.1.11", min_version="1.5.0-1")
    """
    defaults = list(put_text(DEFAULTS, defaults_text(listen_address, port, textfile_dir)))
    installed = host.get_fact(PackageStates, packages=[PACKAGE]).get(PACKAGE, {}).get("version")
    needs_install = not distro_packages.accepts(min_version, installed) if min_version else installed is None
    if needs_install:  # the package's postinst reloads systemd: refused before the first change
        refuse_daemon_reload_under_gpu_containers(f"installing {PACKAGE}")
    yield from defaults
    yield from distro_packages.install._inner(packages={PACKAGE: min_version}, preferences_name="gpufleet-node-exporter")
    yield from files.directory._inner(path=textfile_dir, user="root", group="root", mode="755")
    if installed is None:
        return  # the package's first start reads the file written above
    service = host.get_fact(ServiceState, service=SERVICE)
    if defaults:
        yield f"systemctl restart {SERVICE}"
    elif service["active"] != "active":
        yield f"systemctl start {SERVICE}"
