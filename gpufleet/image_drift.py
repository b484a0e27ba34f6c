"""The node's vLLM image: built but never checked, or built on an upstream tag that moved since.

``gpufleet/vllm-rtx5090:<digest>`` hashes ``vllm_image`` *as a string*, so an upstream tag that is
re-pushed (``vllm/vllm-openai:v0.21.0`` now naming other bits) gives the very same tag on top of a
different image. Decision: drift never contacts a registry (it is a read-only nightly check;
registries rate-limit, and private mirrors would need credentials on every node) and never pulls.
It finds a re-push from what the nodes already hold:

* **on one node**: the upstream tag, as this node has it now, is not the image the build started
  from (the built image's layers do not begin with the tag's layers, or its recorded
  ``io.gpufleet.base-id`` differs) — the tag was re-pulled here after the build;
* **across the fleet**: nodes hold the same built tag on different upstream images (their recorded
  base ids differ) — a node built after the re-push, another before it.

Limits: a re-push that no node has pulled yet is invisible until one does (a new node, a rebuild).
A build from before these labels has no record: only the layer comparison applies to it. To rule
re-pushes out, pin ``vllm_image`` by digest (``vllm/vllm-openai:v0.21.0@sha256:...``): the tag
then hashes the digest itself.

Example::

    >>> fact = {"status": "ok", "image": {"id": "sha256:9a", "labels": {}, "layers": ["l1", "l2", "l9"]},
    ...         "checked": True, "base": {"id": "sha256:51", "digests": [], "layers": ["l1", "l3"]}}
    >>> [f.split(":")[0] for f in image_findings("gpufleet/vllm-rtx5090:ab", "vllm/vllm-openai:v1", fact)]
    ['upstream tag vllm/vllm-openai']
"""

from __future__ import annotations

from operations.facts.images import BASE_DIGESTS_LABEL, BASE_ID_LABEL


def _short(image_id: str | None) -> str:
    return (image_id or "unknown")[:19]


def pinned_by_digest(ref: str) -> bool:
    return "@sha256:" in ref


def image_findings(tag: str, base_ref: str, fact: dict) -> list[str]:
    """Causes (plain text) for one node's :class:`operations.facts.images.BuiltImage` reading."""
    image, base = fact.get("image"), fact.get("base")
    if not image:
        return []  # not built: the plan's "vLLM image" operation reports the build
    out = []
    if not fact.get("checked"):
        out.append(f"{tag} ({_short(image['id'])}) was built but never passed its NCCL/architecture check "
                   "(a deploy stopped between the build and the check): not trusted; the next deploy checks it")
    if base and not pinned_by_digest(base_ref):
        recorded = image["labels"].get(BASE_ID_LABEL)
        layers, base_layers = image.get("layers") or [], base.get("layers") or []
        moved = (recorded and recorded != base["id"]) or (
            not recorded and base_layers and layers[:len(base_layers)] != base_layers)
        if moved:
            digest = ", ".join(base.get("digests") or []) or "no repo digest"
            out.append(f"upstream tag {base_ref} is now {_short(base['id'])} on this node ({digest}), but {tag} "
                       f"was built on {_short(recorded) if recorded else 'another image'}: the tag was re-pushed "
                       "upstream since the build; pin vllm_image by digest and roll it out")
    return out


def recorded_base(fact: dict) -> str | None:
    """The upstream image id a built image records (its ``io.gpufleet.base-id`` label), if any."""
    image = fact.get("image") or {}
    return (image.get("labels") or {}).get(BASE_ID_LABEL) or None


def fleet_findings(records: dict[str, tuple[str, str, dict]]) -> dict[str, str]:
    """``{host: cause}`` for nodes whose built tag sits on another upstream image than the others'.

    ``records``: ``{host: (built tag, upstream ref, BuiltImage fact)}``. Within each tag, the hosts
    in the majority (ties: the earliest name) are taken as the reference; every other host is named
    with the hosts it differs from.
    """
    by_tag: dict[str, dict[str, list[str]]] = {}
    refs: dict[str, str] = {}
    for host, (tag, base_ref, fact) in records.items():
        base = recorded_base(fact)
        if base and not pinned_by_digest(base_ref):
            by_tag.setdefault(tag, {}).setdefault(base, []).append(host)
            refs[tag] = base_ref
    out = {}
    for tag, groups in by_tag.items():
        if len(groups) < 2:
            continue
        reference = min(groups, key=lambda b: (-len(groups[b]), min(groups[b])))
        for base, hosts in groups.items():
            if base == reference:
                continue
            for host in hosts:
                digests = ((records[host][2].get("image") or {}).get("labels") or {}).get(BASE_DIGESTS_LABEL)
                out[host] = (f"{tag} here was built on {_short(base)} ({digests or 'no repo digest'}), on "
                             f"{', '.join(sorted(groups[reference]))} on {_short(reference)}: {refs[tag]} was "
                             "re-pushed upstream between their builds; pin vllm_image by digest and roll it out")
    return out
