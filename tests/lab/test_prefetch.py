"""The prefetch's batched reads (operations/fact_batches.py) on the lab's real hosts: every read a
batch answered equals pyinfra's own read of the same fact, on every host."""

from __future__ import annotations

import importlib
from collections import Counter


def _fact_class(name: str):
    module, _, cls = name.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def _without_atime(value):
    # Reading a file (its hash) between the two reads may move its access time.
    return {k: v for k, v in value.items() if k != "atime"} if isinstance(value, dict) else value


def test_batched_answers_are_pyinfras_own_reads_on_every_lab_host(deployed):
    from gpufleet.deploy_run import planned
    from operations.fact_batches import reader_of

    compared: Counter = Counter()
    differ = []
    with planned("inventory/lab.py") as plan:  # prefetched from what the session's deploys asked
        assert plan.errors == {} and plan.refusals == {}, (plan.errors, plan.refusals)
        for host in plan.hosts:
            facts = host.__dict__["get_fact"]  # the plan's prefetched answers (fact_prefetch._PrefetchedFacts)
            for key, entry in facts.remembered.items():
                cls = _fact_class(entry["fact"])
                reader = reader_of(cls)
                if reader is None or not reader.batch_accepts(entry["kwargs"]):
                    continue
                # Batched reads are not in the lanes one by one: an answer here came from a batch.
                assert key in facts.answers, f"{host.name}: {entry['fact']} {entry['kwargs']} not answered by its batch"
                ours = facts(cls, **entry["kwargs"])
                theirs = type(host).get_fact(host, cls, **entry["kwargs"])
                if _without_atime(ours) != _without_atime(theirs):
                    differ.append((host.name, entry["fact"], entry["kwargs"], ours, theirs))
                compared[host.name, cls.__name__] += 1
    assert differ == []
    # Not vacuous: each GPU node's plan reads files, package lists, containers and units through batches.
    for node in ("gpu-node-1", "gpu-node-2"):
        assert compared[node, "File"] >= 5 and compared[node, "Sha1File"] >= 5, compared
        assert compared[node, "PackageStates"] >= 3 and compared[node, "ContainerState"] >= 1, compared
        assert compared[node, "SystemdStatus"] >= 1 and compared[node, "SystemdEnabled"] >= 1, compared
        assert compared[node, "ServiceState"] >= 1, compared
