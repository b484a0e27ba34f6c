"""What ``gpufleet rollout`` rolls, from what gpufleet/rollout_steps.plan read on the hosts.

Pure (no host is asked), so that the CLI's plan — which hosts, of which kind, in which batches —
is tested without SSH; gpufleet/commands/rollout.py prints it.
"""

from __future__ import annotations

from typing import Any

from gpufleet.rollout import GPU_STACK, REPLICAS, NodeRollout, check_capacity, make_batches
from gpufleet.rollout_steps import changes_milvus


def rollout_nodes(planned: dict[str, Any], canary: int,
                  max_unavailable: int) -> tuple[dict[str, NodeRollout], list[list[str]]]:
    """``(nodes, batches)`` of a new rollout, in the order they roll; ``({}, [])`` when nothing changes.

    ``planned`` is rollout_steps.plan's answer. The GPU nodes with changes keep the kind the serving
    gate gave them, in inventory order. The Milvus host of its own with changes is changed in place
    (kind ``""``: it serves no load-balanced replica, so nothing is drained) in a batch of its own
    before them (:func:`gpufleet.rollout.make_batches`). Raises RolloutError for a batch that would
    leave no live replica behind the load balancers.
    """
    changed = [n.name for n in planned["fleet"].nodes if n.name in planned["nodes"]]
    data = tuple(sorted(planned["data"]))  # at most one host: the inventory is validated so
    batches = make_batches(changed, canary, max_unavailable, data=data)
    live = planned["live"]  # {node: replicas running now, named in the inventory or being retired}
    # What a batch takes out of rotation: the live replicas of its disruptive nodes (a node
    # changed in place is never drained, and a replica that is down carries nothing).
    taken_out = {n: live.get(n, []) for n in changed if planned["nodes"][n][1]}
    check_capacity(batches, taken_out, [r for names in live.values() for r in names])
    nodes = {n: NodeRollout(n, changes=list(planned["data"][n])) for n in data}
    nodes.update({n: NodeRollout(n, changes=list(planned["nodes"][n][0]), kind=planned["nodes"][n][1])
                  for n in changed})
    return nodes, batches


_GPU_NODE_STEPS = {REPLICAS: "drain, update, validate, undrain (rolled back on failure)",
                   GPU_STACK: "drain, stop GPU containers, update, validate, undrain (never rolled back)"}


def describe(node: NodeRollout, milvus_host: bool = False) -> str:
    """What the rollout will do to ``node``, as the plan prints it; ``milvus_host``: the Milvus host of its own.

    >>> describe(NodeRollout("db-1", changes=["Milvus (standalone)"]), milvus_host=True).split("; ")[0]
    'Milvus host db-1: backed up, updated in place, row counts checked, before the GPU nodes'
    """
    if milvus_host:
        steps = ("backed up, updated in place, row counts checked" if changes_milvus(node.changes)
                 else "updated in place, Milvus answers checked")
        return f"Milvus host {node.name}: {steps}, before the GPU nodes; changes: {', '.join(node.changes)}"
    steps = _GPU_NODE_STEPS.get(node.kind, "update in place (nothing interrupted)")
    return f"{node.name}: {steps}; changes: {', '.join(node.changes)}"
