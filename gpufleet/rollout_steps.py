"""The work of each rollout state, done by the modules that own each component.

gpufleet/rollout.py decides *when*; this module says *how*, in terms of what already exists:
the node's lock (gpufleet/node_lock.py), nginx drain/undrain (operations/loadbalancer.py, run on
every load balancer through gpufleet/apply.py), requests in flight (gpufleet/vllm_control.py),
the node's deploy (deploy.py through gpufleet/deploy_run.py), readiness (operations/vllm.ready),
the NCCL vLLM loads (operations/facts/docker.VllmNcclVersions), the verify ladder
(gpufleet/verify.py), and the rollback command (operations/containers.py). The Milvus host of its
own goes through the same steps with what fits a host without GPUs: its backup and row counts
(gpufleet/data_backup.py), and Milvus's readiness gate (operations/milvus.health_url, wait_commands).
"""

from __future__ import annotations

import shlex
from contextlib import contextmanager
from typing import Any

from pyinfra.api.exceptions import PyinfraError
from pyinfra.context import ctx_host, ctx_state

from gpufleet import node_lock
from gpufleet.apply import run_on
from gpufleet.deploy_args import lb_args, lb_options
from gpufleet.fleet import load_fleet, replicas_of
from gpufleet.remote import connected, run_parallel, shell
from operations.serving_gate import GPU_STACK
from operations.util import sudo_arguments


class StepError(Exception):
    """A step failed on a node; the message says what and where."""


def _overrides(rollout, **more) -> dict[str, Any]:
    return {**rollout.overrides, "rollout_id": rollout.id, **more}


UPDATE_LOCK_WAIT_S = 900
_fleets: dict[str, Any] = {}


def _fleet(rollout):
    """The rollout's validated fleet, loaded once per rollout (its data never changes mid-rollout)."""
    if rollout.id not in _fleets:
        _fleets[rollout.id] = load_fleet(rollout.inventory, _overrides(rollout))
    return _fleets[rollout.id]


@contextmanager
def _on_node(rollout, name: str):
    with connected(rollout.inventory, [name], _overrides(rollout)) as (state, fleet, reachable, unreachable):
        if not reachable:
            raise StepError(f"{name} is unreachable over SSH")
        host = reachable[0]
        with ctx_state.use(state), ctx_host.use(host):
            yield host, fleet


# ------------------------------------------------------------------------------ plan -------------

def plan(inventory: str, overrides: dict[str, Any], limit: tuple[str, ...], rollout_id: str) -> dict[str, Any]:
    """What to roll, read from the nodes as deploy.py plans them.

    ``{"nodes": {node: (changes, kind)}, "live": {node: [replicas running now]}, "unreachable": [...],
    "blocked": {node: why}, "lbs": {lb: changes}, "data": {Milvus host of its own: changes}, "fleet": Fleet}``;
    ``kind`` is ``""`` for a change made in place, else the serving gate's kind (``replicas`` or
    ``gpu-stack``). A host left out by ``--limit`` is not planned, so not in ``nodes`` nor ``data``.

    Planned with the rollout's id and no lock yet: the serving gate refuses exactly the nodes
    whose changes would interrupt live replicas (a typed ServingInterruption), which is what
    makes them disruptive. Any other refusal (another rollout's lock) blocks the rollout.
    """
    from gpufleet.deploy_run import planned
    from operations.facts.rollout import LiveReplicas

    out: dict[str, Any] = {"nodes": {}, "live": {}, "unreachable": [], "blocked": {}, "lbs": {}, "data": {}}
    with planned(inventory, limit, {**overrides, "rollout_id": rollout_id}) as p:
        out["unreachable"] = sorted(p.unreachable)
        out["blocked"].update(p.errors)
        for host in p.hosts:
            changes = [op.name for op in p.ops(host) if op.will_change and not op.conditional]
            interruption = p.interruptions.get(host.name)
            if host.name in p.refusals and interruption is None:
                out["blocked"][host.name] = p.refusals[host.name]  # e.g. another rollout's lock
                continue
            if "gpu_nodes" in host.groups:
                with ctx_state.use(p.state), ctx_host.use(host):
                    running = host.get_fact(LiveReplicas)
                out["live"][host.name] = _replica_names(running)
                if interruption is not None and not any(c.startswith(interruption.what) or interruption.what.startswith(c)
                                                        for c in changes):
                    changes.append(interruption.what)  # the refused operation, when it was not added
                if changes:
                    out["nodes"][host.name] = (changes, interruption.kind if interruption else "")
            elif changes and "lb" in host.groups:
                out["lbs"][host.name] = changes
            elif changes:  # the Milvus host, when it is a host of its own
                out["data"][host.name] = changes
        out["fleet"] = p.fleet
        planned_nodes = {h.name for h in p.hosts}
    # Nodes left out by --limit still carry traffic while the limited ones are drained.
    others = [n.name for n in out["fleet"].nodes if n.name not in planned_nodes and n.name not in out["unreachable"]]
    if others:
        out["live"].update(live_replicas(inventory, others, overrides))
    return out


def _replica_names(containers: list[str]) -> list[str]:
    # Running replicas count whether the inventory still names them or not: they carry traffic.
    return sorted(c.removeprefix("vllm-") for c in containers)


def live_replicas(inventory: str, nodes: list[str], overrides: dict[str, Any]) -> dict[str, list[str]]:
    """``{node: [replicas whose containers run now]}`` (an unreachable node is left out: nothing of it is live)."""
    from operations.facts.rollout import LiveReplicas

    with connected(inventory, nodes, overrides) as (state, _, reachable, _unreachable):
        running = run_parallel(state, reachable, lambda host: host.get_fact(LiveReplicas))
    return {name: _replica_names(names) for name, names in running.items() if isinstance(names, list)}


def fleet_live_replicas(rollout) -> dict[str, list[str]]:
    """:func:`live_replicas` of every GPU node of the rollout's fleet, read before a batch is drained."""
    return live_replicas(rollout.inventory, [n.name for n in _fleet(rollout).nodes], rollout.overrides)


# ------------------------------------------------------------------------------ prepare ----------

# deploy.py's names of the operations prepare() runs ahead of the drain.
PREPARED = ("vLLM image", "Model weights staged")


def needs_prepare(changes: list[str], kind: str = "") -> bool:
    """Whether prepare has work on a node: its planned changes build a vLLM image or stage weights.

    A GPU-stack change (driver, toolkit, engine, daemon.json) is refused by the serving gate
    early in deploy.py, so its plan stops there and cannot show what the image and the weights
    would do: such a node is always prepared, before anything on it is drained or stopped.

    >>> needs_prepare(["vLLM image (NCCL pinned inside)", "vLLM replica gpu-node-1-vllm-0"]), needs_prepare(["nginx"])
    (True, False)
    >>> needs_prepare(["NVIDIA driver 580.105.08"], kind="gpu-stack")
    True
    """
    return kind == GPU_STACK or any(c.startswith(PREPARED) for c in changes)


def prepare(rollout, nodes: list[str]) -> dict[str, str | None]:
    """Build the vLLM image and stage the model weights on every node that changes, in parallel;
    nothing running is touched (a new pin stages beside the weights being served)."""
    from gpufleet.deploy_args import vllm_image_args, weights_args
    from operations import vllm, weights

    fleet = _fleet(rollout)
    return run_on(rollout.inventory, nodes, vllm.image,
                  lambda n: {"name": "vLLM image (prepare)", **vllm_image_args(fleet.hosts[n].settings)},
                  overrides=_overrides(rollout),
                  then=((weights.stage, lambda n: {"name": "Model weights staged (prepare)",
                                                    **weights_args(fleet.hosts[n].settings)}),))


# ------------------------------------------------------------------------------ lock -------------

def lock(rollout, name: str, state: str) -> dict[str, Any]:
    """Take the node's lock, and read in the same session what it runs before anything changes:
    ``{"retiring": replicas the inventory no longer names, "before": {container: id}}``."""
    with _on_node(rollout, name) as (host, fleet):
        try:
            node_lock.acquire(host, rollout.id, rollout.holder, rollout.since, state)
        except node_lock.LockHeld as exc:
            raise StepError(str(exc)) from None
        return {"retiring": _retiring_on(host, fleet.hosts[name]), "before": _container_ids_on(host, fleet.hosts[name])}


def unlock(rollout, name: str, forget_previous: bool = False) -> None:
    """Release the node's lock; ``forget_previous`` after a validated update: the containers kept
    for a rollback (``.gpufleet-previous``) are not needed any more, nor their images' disk."""
    from operations.containers import previous_name

    with _on_node(rollout, name) as (host, fleet):
        names = [previous_name(f"vllm-{r.name}") for r in replicas_of(fleet.hosts[name])]
        if forget_previous and names:  # none on a host without replicas (the Milvus host of its own)
            shell(host, "docker rm -f " + " ".join(shlex.quote(n) for n in names) + " >/dev/null 2>&1; true",
                  **sudo_arguments(host))
        try:
            node_lock.release(host, rollout.id)
        except node_lock.LockHeld as exc:
            raise StepError(str(exc)) from None


# ------------------------------------------------------------------------------ Milvus -----------

MILVUS_CHANGE = "Milvus ("  # deploy.py names its milvus.standalone operation "Milvus (<mode>)"


def changes_milvus(changes: list[str]) -> bool:
    """Whether a node's planned changes recreate the fleet's Milvus (the node is the vector_db host)."""
    return any(c.startswith(MILVUS_CHANGE) for c in changes)


def back_up_milvus(rollout) -> tuple[str, dict[str, int]]:
    """``gpufleet backup`` of the fleet's Milvus as it runs now, to its ``milvus_backup_dir`` (where the
    nightly backups are, a bucket included: counted by their retention and by drift):
    ``(where, rows per collection)``."""
    from gpufleet import data_backup

    try:  # without `to`, the backup goes to milvus_backup_dir (data_backup.store_for)
        result = data_backup.backup(rollout.inventory, overrides=rollout.overrides)
    except data_backup.BackupError as exc:
        raise StepError(f"Milvus backup before the change failed, nothing changed: {exc}") from None
    return result["dir"], result["collections"]


def milvus_rows_kept(rollout, before: dict[str, int], backup_dir: str) -> tuple[bool, str]:
    """After the update: every collection has at least the rows it had in the backup."""
    from gpufleet import data_backup
    from gpufleet.rollout import restore_command

    try:
        now = data_backup.row_counts(rollout.inventory, rollout.overrides)
    except data_backup.BackupError as exc:
        return False, f"Milvus row counts unreadable after the change: {exc}"
    dropped = data_backup.dropped_rows(before, now)
    if dropped:
        return False, ("Milvus lost rows across the change (" + ", ".join(f"{c}: {b} -> {n}" for c, (b, n) in
                                                                          dropped.items())
                       + f"); the backup is {backup_dir}: `{restore_command(rollout.inventory, backup_dir)}`")
    return True, ""


# ------------------------------------------------------------------------------ drain ------------

def _lb_step(rollout, name: str, op_name: str, retiring: list[str] = ()) -> None:
    """``drain``/``undrain`` the node's members on every lb in one nginx reload per lb: the
    inventory's replicas and the node's RAG app (it asks this node's replica, and its container
    may be recreated too); then, in a second run when there are any, ``retiring`` (removed from
    the inventory, still running on the node: drained only where they are members)."""
    from operations import loadbalancer

    fleet = _fleet(rollout)
    lbs = [lb.name for lb in fleet.load_balancers]
    if not lbs:
        return
    op = getattr(loadbalancer, op_name)
    groups = [(_members_of(fleet.hosts[name]), False), (list(retiring), op_name == "drain")]
    for replicas, only_if_member in [g for g in groups if g[0]]:
        extra = {"reason": f"rollout {rollout.id}"} if op_name == "drain" else {}
        if only_if_member:
            extra["only_if_member"] = True
        results = run_on(rollout.inventory, lbs, op,
                         lambda lb: {"name": f"{op_name} {', '.join(replicas)}", "replica": replicas,
                                     **lb_args(fleet, lb), **extra},
                         overrides=_overrides(rollout))
        failed = {lb: why for lb, why in results.items() if why}
        if failed:
            raise StepError(f"{op_name} {', '.join(replicas)}: " + "; ".join(f"{lb}: {why}" for lb, why in failed.items()))


def _members_of(node) -> list[str]:
    """The node's load-balancer members: its replicas, then its RAG app (when it runs one)."""
    return [r.name for r in replicas_of(node)] + ([node.app_member] if node.app_member else [])


def _retiring_on(host, node) -> list[str]:
    """Replicas whose containers run on the node but which the inventory no longer names.

    None on a host outside gpu_nodes (the Milvus host of its own): deploy.py retires replicas only
    on GPU nodes, and its Docker is not asked about containers it never runs.
    """
    from operations.facts.rollout import ReplicaContainers

    if not node.is_gpu_node:
        return []
    declared = {f"vllm-{r.name}" for r in replicas_of(node)}
    return [c.removeprefix("vllm-") for c in host.get_fact(ReplicaContainers) if c not in declared]


def drain(rollout, name: str, retiring: list[str] = ()) -> None:
    """Mark the node's replicas down on every load balancer, then wait until nothing is in flight.

    ``retiring`` (what :func:`lock` found) are drained too, where an lb has them; undrain them
    with the others once the update removed them, which drops them from the lb config. Their
    requests in flight get vLLM's graceful shutdown (``docker stop -t``) when they are retired.
    """
    from gpufleet.vllm_control import wait_idle

    _lb_step(rollout, name, "drain", list(retiring))
    with _on_node(rollout, name) as (host, fleet):
        node = fleet.hosts[name]
        urls = [f"http://{r.address}:{r.port}" for r in replicas_of(node)]
        idle, seen = wait_idle(host, urls, timeout=node.settings.rollout_drain_timeout_s)
    if not idle:
        raise StepError(f"drain: {seen}")
    return retiring


def undrain(rollout, name: str, retiring: list[str] = (), check: bool = True) -> None:
    """Put the node's replicas back on every load balancer, then check that each lb serves them.

    A replica new to an lb stays ``down`` (joining) until it answers ``/health`` *from that lb*:
    validation asked from the node itself, so a replica the lb cannot reach (a firewall, the
    wrong address in the inventory) would otherwise count as done while no lb sends it traffic.
    ``check=False`` on the failure paths: a node put back unchanged (or rolled back) is undrained
    and unlocked even when a replica new to the inventory is not serving yet.
    """
    from operations.facts.edge import NginxState

    _lb_step(rollout, name, "undrain", retiring)
    fleet = _fleet(rollout)
    lbs = [lb.name for lb in fleet.load_balancers]
    if not lbs or not check:
        return
    replicas = _members_of(fleet.hosts[name])
    with connected(rollout.inventory, lbs, _overrides(rollout)) as (state, _, reachable, unreachable):
        seen = run_parallel(state, reachable, lambda h: h.get_fact(
            NginxState, status_port=lb_options(fleet.hosts[h.name].settings)["status_port"]))
    problems = [f"{lb} is unreachable over SSH" for lb in (h.name for h in unreachable)]
    for lb, nginx in sorted(seen.items()):
        problems += [f"{lb}: {why}" for why in (held_back(replicas, nginx) if isinstance(nginx, dict)
                                                  else [f"could not read nginx: {nginx}"])]
    if problems:
        raise StepError("undrain: " + "; ".join(problems))


def held_back(replicas: list[str], nginx: dict) -> list[str]:
    """What keeps each of ``replicas`` from serving behind one lb (its NginxState fact); ``[]`` when none.

    >>> held_back(["n1-vllm-0"], {"drained": [], "members": [{"name": "n1-vllm-0", "joining": True}]})
    ['n1-vllm-0 is down (joining): it does not answer /health from this load balancer']
    """
    members = {m["name"]: m for m in nginx.get("members") or []}
    out = []
    for replica in replicas:
        if replica in (nginx.get("drained") or []):
            out.append(f"{replica} is still drained")
        elif replica not in members:
            out.append(f"{replica} is not in the nginx config")
        elif members[replica].get("joining"):
            out.append(f"{replica} is down (joining): it does not answer /health from this load balancer")
    return out


def stop_gpu_containers(rollout, name: str) -> None:
    """Stop every running container that holds a GPU on the drained node (``docker stop -t`` with
    the vLLM stop timeout, so a replica finishes what it has).

    A GPU-stack change needs them stopped: a new driver, a toolkit upgrade or a daemon-reload
    takes the GPUs away from running containers. They stay stopped (not removed): deploy.py starts
    the ones it manages again once the stack is converged (same spec: ``docker start``); others
    stay stopped. With ``vllm_restart_policy=always`` Docker itself would restart them on a
    Docker restart or reboot: the default ``unless-stopped`` does not.
    """
    from operations.facts.docker import GpuContainers

    timeout = _fleet(rollout).hosts[name].settings.vllm_stop_timeout_effective()
    with _on_node(rollout, name) as (host, _):
        found = host.get_fact(GpuContainers)
        if found["status"] == "failed":  # never "none": a GPU container may still run
            raise StepError(f"could not ask Docker which containers hold GPUs: {found['error']}")
        running = found["containers"]
        if not running:
            return
        ok, out = shell(host, f"docker stop -t {timeout} " + " ".join(shlex.quote(c) for c in running),
                        timeout=timeout + 60, **sudo_arguments(host))
    if not ok:
        raise StepError(f"stopping the GPU containers {', '.join(running)}: {out.strip()[-300:]}")


# ------------------------------------------------------------------------------ update -----------

# How update() says a node's deploy stopped while it was planned: nothing ran on the node.
REFUSED = "deploy refused: "


def update(rollout, names: list[str]) -> dict[str, tuple[bool, str]]:
    """Converge the batch's nodes with one deploy.py run (the rollout's id lets the serving gate through).

    ``{node: (converged, why not)}``; pyinfra runs each operation on all of them in parallel.
    """
    from gpufleet.deploy_run import execute, planned

    out: dict[str, tuple[bool, str]] = {}
    # The nodes are drained already: wait for a deploy lock another run holds (a nightly drift
    # check) rather than fail a drained node (operations/deploy_lock.py).
    with planned(rollout.inventory, list(names), _overrides(rollout, deploy_lock_wait_s=UPDATE_LOCK_WAIT_S)) as p:
        for name in names:
            if name in p.unreachable:
                out[name] = (False, f"{name} is unreachable over SSH")
            elif p.errors.get(name) or p.refusals.get(name):
                out[name] = (False, f"{REFUSED}{p.errors.get(name) or p.refusals.get(name)}")
        runnable = [n for n in names if n not in out]
        if runnable:
            for name, ok in execute(p, runnable).items():
                out[name] = (ok, "" if ok else "the deploy failed on the node (see the output above)")
    return out


# ------------------------------------------------------------------------------ validate ---------

def validate(rollout, name: str) -> tuple[bool, str]:
    """Readiness by a real completion, the loaded driver and the NCCL vLLM loads are the pins, the verify ladder.

    One SSH session for all of it: right after a restart the node's CPU is the engine's, and each
    new session (inventory, connect) costs the rollout time in which nothing is served from the node.
    A host outside gpu_nodes (the Milvus host of its own) has no GPU, driver, NCCL or replica:
    :func:`milvus_answers` is its validation.
    """
    from gpufleet import verify
    from gpufleet.host_reads import watching

    if not _fleet(rollout).hosts[name].is_gpu_node:
        return milvus_answers(rollout, name)
    s = _fleet(rollout).hosts[name].settings
    with watching() as failures:
        try:
            with _on_node(rollout, name) as (host, fleet):
                ready, why = _ready_on(host, fleet.hosts[name])
                if not ready:
                    return False, why
                pinned, wrong = _loaded_pins_on(host, s)
                report = verify.run_ladder(name, s, verify.HostProbe(host, s)) if pinned else None
        except PyinfraError as exc:  # a read gave up: pyinfra fails the node's only host ("No hosts remaining!")
            return False, f"validation could not read the node: {failures.describe(name) or exc}"
    if not pinned:
        return False, wrong
    if not report.ok:
        return False, f"verify failed at {report.failed_step}"
    return True, ""


def milvus_answers(rollout, name: str) -> tuple[bool, str]:
    """The Milvus host of its own after its update: Milvus answers ``/healthz`` within
    ``milvus_ready_timeout_s``, asked on the host as deploy.py's readiness gate (operations/milvus.ready)
    asks it. Whether it kept its data is the row check's (:func:`milvus_rows_kept`), which follows."""
    from gpufleet.host_reads import watching
    from operations import milvus

    s = _fleet(rollout).hosts[name].settings
    with watching() as failures:
        try:
            with _on_node(rollout, name) as (host, fleet):
                url = milvus.health_url(s.milvus_bind_address or fleet.hosts[name].address, s.milvus_health_port)
                ok, out = shell(host, milvus.wait_commands(url, milvus.MILVUS, s.milvus_ready_timeout_s, "milvus"),
                                timeout=s.milvus_ready_timeout_s + 60, **sudo_arguments(host))
        except PyinfraError as exc:  # a read gave up, or the address does not resolve on the host
            return False, f"validation could not read the Milvus host: {failures.describe(name) or exc}"
    if not ok:  # wait_commands' headline, then Milvus's last log lines
        lines = [line.strip() for line in out.strip().splitlines() if line.strip()]
        headline = next((line for line in lines if "not healthy at" in line), f"Milvus does not answer at {url}")
        return False, headline + (f" ... {lines[-1]}" if lines and lines[-1] != headline else "")
    return True, ""


def _loaded_pins_on(host, s) -> tuple[bool, str]:
    """The loaded driver is the pin, and so is the NCCL every vLLM container loads."""
    from operations.facts.docker import VllmNcclVersions
    from operations.facts.gpu import NvidiaDriver

    driver = host.get_fact(NvidiaDriver, path=s.nvidia_proc_version_path)
    nccl = host.get_fact(VllmNcclVersions)
    if nccl.get("status") != "ok":  # Docker did not answer: no container's NCCL was read
        return False, f"could not read the NCCL inside the vLLM containers: {nccl.get('error') or nccl.get('status')}"
    loaded = nccl["containers"]
    if driver.get("version") != s.nvidia_driver_version:
        return False, f"the loaded driver is {driver.get('version') or 'none'}, not the pin {s.nvidia_driver_version}"
    wrong = {c: v for c, v in loaded.items() if v != s.nccl_version}
    if wrong:
        return False, "NCCL inside the container is not the pin: " + ", ".join(f"{c} loads {v}" for c, v in wrong.items())
    return True, ""


# ------------------------------------------------------------------------------ rollback ---------

def _container_ids_on(host, node) -> dict[str, str]:
    """``{container: id}`` of the node's replica containers now (missing ones left out)."""
    return _container_ids(host, [f"vllm-{r.name}" for r in replicas_of(node)])


def _container_ids(host, names: list[str]) -> dict[str, str]:
    """``{container: id}`` of the named containers that exist on the host now."""
    if not names:  # a host without replicas (the Milvus host of its own): nothing to ask
        return {}
    ok, out = shell(host, "for c in " + " ".join(shlex.quote(n) for n in names) + "; do "
                    "printf '%s %s\\n' \"$c\" \"$(docker inspect --format '{{.Id}}' \"$c\" 2>/dev/null)\"; done",
                    **sudo_arguments(host))
    return {parts[0]: parts[1] for parts in (line.split() for line in out.splitlines()) if len(parts) == 2}


def rollback(rollout, name: str, before: dict[str, str], retiring: list[str] = ()) -> None:
    """Put the node's replicas back as they ran before the update, and wait until they are ready.

    + before: ``{container: id}`` read when the node was locked
    + retiring: the replicas the update retires (the inventory no longer names them)

    A replica whose container is the one that ran before the update is left alone (the kept
    ``.gpufleet-previous`` may be older than it); one the update replaced gets its previous
    container back; one the update added (no container before) is removed. Every replica is
    tried before a failure is raised. A retired replica's container is removed with its previous
    one by the update, so nothing can put it back: that is raised too, and the node stays drained.
    """
    from operations.containers import remove_command, rollback_command

    fleet = _fleet(rollout)
    node = fleet.hosts[name]
    stop_timeout = node.settings.vllm_stop_timeout_effective()
    retired = [f"vllm-{r}" for r in retiring]
    failed = []
    with _on_node(rollout, name) as (host, _):
        now = _container_ids(host, [f"vllm-{r.name}" for r in replicas_of(node)] + retired)  # one read
        for r in replicas_of(node):
            container = f"vllm-{r.name}"
            if container in before and now.get(container) == before[container]:
                continue
            if container in before:
                command = rollback_command(container, node.settings.vllm_restart_policy, stop_timeout)
            elif container in now:  # added by the update: nothing ran in its place before
                command = remove_command(container, stop_timeout)
            else:
                continue
            ok, out = shell(host, command, timeout=stop_timeout + 120, **sudo_arguments(host))
            if not ok:
                failed.append(f"{container}: {out.strip()[-300:]}")
        gone = sorted(set(retired) - set(now))
        if gone:
            failed.append(f"{', '.join(gone)} retired by the update, cannot be put back (deploy the "
                          "inventory that names it, or --resume once the new replicas serve)")
    if failed:
        raise StepError("rollback: " + "; ".join(failed))
    ok, why = replicas_ready(rollout, name, only=set(before))  # the ones it added are gone
    if not ok:
        raise StepError(f"after the rollback: {why}")


def replicas_ready(rollout, name: str, only: set[str] | None = None) -> tuple[bool, str]:
    """Each replica of the node (or each whose container is in ``only``) answers /health, lists its
    model and completes a prompt (operations/vllm.ready)."""
    with _on_node(rollout, name) as (host, fleet):
        return _ready_on(host, fleet.hosts[name], only)


def _ready_on(host, node, only: set[str] | None = None) -> tuple[bool, str]:
    """:func:`replicas_ready` on a connected host: the probe of operations/vllm.ready, run here."""
    from operations import vllm

    s = node.settings
    for r in replicas_of(node):
        if only is not None and f"vllm-{r.name}" not in only:
            continue
        if not vllm.wait_ready(host, f"vllm-{r.name}", f"http://{r.address}:{r.port}", s.vllm_served_model_name,
                               s.vllm_ready_timeout, api_key=s.vllm_api_key_file is not None):
            return False, f"{r.name} is not ready (its last log lines are above)"
    return True, ""
