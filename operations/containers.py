"""Long-running containers reconciled by a digest of their desired spec.

pyinfra's ``docker.container`` never recreates a container whose arguments changed (its diff is
a stub, pyinfra#1561). Here the whole desired spec (image, command, env, ports, volumes, GPUs,
limits) is hashed and stored as a label: equal digest and running means nothing to do; a
different digest means remove and run again; stopped means start. Secrets are never part of the
command line: they reach the container through root-only env files, whose *content digest* goes
into the spec so that a rotated secret recreates the container.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass, field
from weakref import WeakKeyDictionary

from pyinfra import host
from pyinfra.api import operation

from operations.facts.docker import SPEC_LABEL, ContainerState
from operations.digests import short_digest


@dataclass
class ContainerSpec:
    """Everything that decides what a container is. Change any field and it is recreated."""

    name: str
    image: str
    command: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    env_files: dict[str, str] = field(default_factory=dict)  # path on host -> digest of its content
    ports: list[str] = field(default_factory=list)  # "127.0.0.1:8000:8000"
    volumes: list[str] = field(default_factory=list)  # "name:/path" or "/host:/path:ro"
    networks: list[str] = field(default_factory=list)
    gpus: str | None = None  # '"device=0,1"' or "all"
    shm_size: str | None = None
    ipc: str | None = None
    restart: str = "unless-stopped"
    stop_signal: str | None = None
    stop_timeout: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)  # anything else `docker run` takes

    def digest(self) -> str:
        return short_digest(asdict(self))

    def run_command(self) -> str:
        args = ["docker", "run", "-d", "--name", self.name, "--restart", self.restart,
                "--label", f"{SPEC_LABEL}={self.digest()}"]
        for key, value in sorted(self.labels.items()):
            args += ["--label", f"{key}={value}"]
        for key, value in sorted(self.env.items()):
            args += ["--env", f"{key}={value}"]
        for path in sorted(self.env_files):
            args += ["--env-file", path]
        for port in self.ports:
            args += ["--publish", port]
        for volume in self.volumes:
            args += ["--volume", volume]
        if self.networks:
            args += ["--network", self.networks[0]]
        if self.gpus:
            args += ["--gpus", self.gpus]
        if self.shm_size:
            args += ["--shm-size", self.shm_size]
        if self.ipc:
            args += ["--ipc", self.ipc]
        if self.stop_signal:
            args += ["--stop-signal", self.stop_signal]
        if self.stop_timeout is not None:
            args += ["--stop-timeout", str(self.stop_timeout)]
        if self.entrypoint is not None:
            args += ["--entrypoint", self.entrypoint[0] if self.entrypoint else ""]
        args += self.extra_args
        args.append(self.image)
        if self.entrypoint:
            args += self.entrypoint[1:]
        args += self.command
        return " ".join(shlex.quote(a) for a in args)


# host -> {container name: the spec the deploy reconciles it to}, filled while deploy.py is planned,
# so that `gpufleet drift` compares each running container with that very spec (gpufleet.container_drift).
_PLANNED: WeakKeyDictionary = WeakKeyDictionary()


def planned_specs(pyinfra_host) -> dict[str, ContainerSpec]:
    """The specs :func:`container` was given for this host while deploy.py was planned (or run).

    An operation's code runs to its end while it is planned when it changes nothing, and only up to
    its first command otherwise; ``gpufleet drift`` reads every changing operation's commands
    (drift.plan_drift) before it asks for these.
    """
    return dict(_PLANNED.get(pyinfra_host, {}))


def _remember(spec: ContainerSpec) -> None:
    from pyinfra.context import ctx_host

    current = ctx_host.get() if ctx_host.isset() else None
    try:
        _PLANNED.setdefault(current, {})[spec.name] = spec
    except TypeError:  # no host, or one that cannot be weakly referenced (test harness stand-ins)
        pass


PREVIOUS_SUFFIX = ".gpufleet-previous"


def previous_name(name: str) -> str:
    """The stopped container a recreate keeps for rollback (``<name>.gpufleet-previous``)."""
    return f"{name}{PREVIOUS_SUFFIX}"


def rollback_command(name: str, restart: str, stop_timeout: int | None = None) -> str:
    """Shell that puts the kept previous container back in place of ``name`` and starts it.

    The kept container was set to ``--restart no`` (so that no Docker restart or reboot brings
    it back beside its successor); it gets ``restart`` back. Exits 3 when there is nothing to
    roll back to.
    """
    q, prev = shlex.quote(name), shlex.quote(previous_name(name))
    timeout = f" -t {int(stop_timeout)}" if stop_timeout is not None else ""
    return (f"docker inspect --type container {prev} >/dev/null 2>&1 || "
            f"{{ echo 'no previous container {previous_name(name)} to roll back to' >&2; exit 3; }}; "
            f"docker stop{timeout} {q} >/dev/null 2>&1; docker rm -f {q} >/dev/null 2>&1; "
            f"docker rename {prev} {q} && docker update --restart {shlex.quote(restart)} {q} >/dev/null && "
            f"docker start {q} >/dev/null")


def remove_command(name: str, stop_timeout: int | None = None) -> str:
    """Shell that stops a container (``docker stop -t``: a server finishes what it has) and removes it."""
    q = shlex.quote(name)
    timeout = f" -t {int(stop_timeout)}" if stop_timeout is not None else ""
    return f"docker stop{timeout} {q} >/dev/null; docker rm -f {q} >/dev/null"


def _action(state: dict, spec: ContainerSpec, recreate: bool) -> str:
    """What :func:`container` does to a container in ``state`` (ContainerState): ``none``,
    ``start``, ``create`` or ``recreate``."""
    if not state["exists"]:
        return "create"
    if state["spec"] == spec.digest() and not recreate:
        return "none" if state["running"] or state["restarting"] else "start"
    return "recreate"


def interrupts(spec: ContainerSpec, recreate: bool = False) -> bool:
    """Whether :func:`container` would stop this container while it runs: its spec changed, or
    ``recreate``. A missing or stopped container is only created or started: nothing it serves stops."""
    state = host.get_fact(ContainerState, container=spec.name)
    return _action(state, spec, recreate) == "recreate" and bool(state["running"] or state["restarting"])


@operation()
def container(spec: ContainerSpec, keep_previous: bool = False, recreate: bool = False):
    """
    Make one container match ``spec``: run it, start it, or recreate it when the spec changed.

    + spec: a :class:`ContainerSpec`; its digest is stored as the ``io.gpufleet.spec`` label
    + keep_previous: on a recreate, keep the old container, stopped, as ``<name>.gpufleet-previous``
      (its exact configuration and image stay on the host for ``gpufleet rollout`` to roll back to;
      a stopped container holds no GPU and is not restarted by its restart policy)
    + recreate: recreate an existing container even when its digest matches (what it read at
      creation changed outside the spec: a regenerated ``--env-file``)

    A running container with the same digest is left alone (no command at all); a stopped one
    is started; any other difference removes it (``docker stop -t <stop_timeout>`` first, so a
    server drains) and runs it again. Networks beyond the first are connected after start.

    **Example:**

    .. code:: python

        containers.container(spec=ContainerSpec(name="milvus", image="milvusdb/milvus:v2.6.11",
                                                ports=["10.0.0.5:19530:19530"]))
    """
    _remember(spec)
    state = host.get_fact(ContainerState, container=spec.name)
    action = _action(state, spec, recreate)
    if action == "none":
        host.noop(f"{spec.name} runs spec {spec.digest()}")
        return
    if action == "start":
        yield f"docker start {shlex.quote(spec.name)}"
        return
    if action == "recreate":
        if keep_previous:
            timeout = f" -t {spec.stop_timeout}" if spec.stop_timeout is not None else ""
            name, prev = shlex.quote(spec.name), shlex.quote(previous_name(spec.name))
            # Kept with --restart no: a Docker restart or reboot must not start it beside its successor.
            yield (f"docker stop{timeout} {name} >/dev/null; docker rm -f {prev} >/dev/null 2>&1; "
                   f"docker rename {name} {prev} && docker update --restart no {prev} >/dev/null")
        else:
            yield remove_command(spec.name, spec.stop_timeout)
    yield spec.run_command()
    for network in spec.networks[1:]:
        yield f"docker network connect {shlex.quote(network)} {shlex.quote(spec.name)}"
