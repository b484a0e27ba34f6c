"""Checks that span an inventory's hosts and groups, run with every host's own settings checks.

A host's settings (gpufleet/settings.py) cannot see the inventory around it. These checks do,
and each stands for a way a deploy went wrong without a word:

- a host listed twice in a group: pyinfra keeps the last entry's data, silently;
- a host in no role group, or in a misspelt one (``gpu_node``): it gets preflight and base
  packages and nothing else. Groups close to ``gpu_nodes``/``lb`` (a typo, a plural, ``lbs``) are
  refused by name, in the inventory and in group_data/ alike (except a group of every host, which
  may be the inventory file's own stem group, as for ``inventory/gpu.py``);
- a host in both ``gpu_nodes`` and ``lb``: one role per host (a node cannot be its own load
  balancer, and the two roles' group data disagree, e.g. ``gpu_count``);
- a role host whose name is not a lower-case DNS name (it names containers and nginx upstreams);
- a role host without ``private_address``, unless the data says names resolve on the private
  network (``private_address_from_name``, the lab), and two hosts with the same address;
- load balancers with no GPU node behind them, and ``app_vllm_target = "lb"`` with no balancer;
- the data tier (group ``vector_db``: the Milvus host): the RAG app enabled with no Milvus host,
  more than one (Milvus standalone is one host; beyond it is Milvus's own distributed deployment
  on Kubernetes, which gpufleet does not run), or a Milvus host that is also a load balancer
  (lb hosts run no Docker); Milvus without authentication unless its data says
  ``milvus_authentication = False`` (no root password file), the RAG app with no app password
  file, or the app's user given root's password file;
- replica names that are not unique in the fleet, a GPU node with ``gpu_count = 0``.

Hosts named on the command line instead of in an inventory file (``gpufleet verify @local``)
belong to no group at all; they are ad-hoc targets and only their own settings are checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gpufleet.fleet_host import GPU_GROUP, LB_GROUP, VECTOR_DB_GROUP, FleetHost, replicas_of
from gpufleet.settings import SettingsIssue
from gpufleet.settings_input import check_control_file

ROLE_GROUPS = (GPU_GROUP, LB_GROUP, VECTOR_DB_GROUP)
NOT_ROLES = {"all", "lab"}  # pyinfra's group of every host; the lab inventory's file-stem group
ALIASES = {
    GPU_GROUP: {"gpu", "gpus", "nodes", "gpunode", "gpunodes", "gpu_hosts", "gpu_servers", "gpu_node_group"},
    LB_GROUP: {"lbs", "loadbalancer", "loadbalancers", "load_balancer", "load_balancers", "balancers", "nginx"},
    VECTOR_DB_GROUP: {"milvus", "vectordb", "vector_dbs", "vectordbs", "vector_database", "db", "dbs", "data"},
}
DNS_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*")


def _distance(a: str, b: str) -> int:
    """Levenshtein distance (small strings only)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def near_miss(group: str) -> str | None:
    """The role group ``group`` was probably meant to be (``gpu_node`` -> ``gpu_nodes``), else None."""
    if group in ROLE_GROUPS or group in NOT_ROLES:
        return None
    g = group.lower().replace("-", "_")
    for role in ROLE_GROUPS:
        if g == role or g in ALIASES[role] or (role != LB_GROUP and _distance(g, role) <= 2):
            return role
    return None


def inventory_problems(hosts: list[tuple[str, list[str], dict[str, Any]]], group_data_names: list[str],
                       valid: dict[str, FleetHost]) -> list[SettingsIssue]:
    """Every problem across ``hosts`` ((name, groups, data) of each, in inventory order)."""
    problems: list[SettingsIssue] = []
    in_groups = {g for _, groups, _ in hosts for g in groups}
    # A group of every host is (or may be) the inventory file's own stem group: `gpu.py` is fine.
    everyone = {g for g in in_groups if all(g in groups for _, groups, _ in hosts)}
    for name, groups, data in hosts:
        if groups:  # ad-hoc targets (no groups) are checked for their own settings only
            problems += _host_problems(name, groups, data, everyone)
    for group in sorted(set(group_data_names) - in_groups):
        if near_miss(group):
            problems.append(SettingsIssue("(group_data)", f"group_data/{group}.py", group,
                                          f"a group gpufleet knows: did you mean {near_miss(group)}? "
                                          "(this file's data reaches no host)"))
    problems += _address_problems(hosts)
    problems += _role_problems(hosts, valid)
    problems += _data_tier_problems(hosts, valid)
    return problems


def _host_problems(name: str, groups: list[str], data: dict[str, Any], everyone: set[str]) -> list[SettingsIssue]:
    problems = []
    for group in sorted({g for g in groups if groups.count(g) > 1}):
        problems.append(SettingsIssue(name, "groups", f"{group} x{groups.count(group)}",
                                      f"each host listed once in {group} (pyinfra keeps the last entry's data)"))
    roles = [g for g in ROLE_GROUPS if g in groups]
    serving_roles = [g for g in (GPU_GROUP, LB_GROUP) if g in groups]
    misses = {g: near_miss(g) for g in dict.fromkeys(groups) if near_miss(g)}
    for group, meant in misses.items():
        if not roles or group not in everyone:
            problems.append(SettingsIssue(name, "groups", group, f"a group gpufleet knows: did you mean {meant}? "
                                          "(a host in none of gpu_nodes, lb, vector_db gets no role)"))
    if not roles and not misses:
        problems.append(SettingsIssue(name, "groups", sorted(set(groups)),
                                      "a role group: gpu_nodes, lb or vector_db (a host in none gets no role)"))
    if VECTOR_DB_GROUP in groups and LB_GROUP in groups:
        problems.append(SettingsIssue(name, "groups", [LB_GROUP, VECTOR_DB_GROUP],
                                      "Milvus on a GPU node or a host of its own, not on a load balancer "
                                      "(lb hosts run nginx and Prometheus, no Docker)"))
    elif len(serving_roles) > 1:
        problems.append(SettingsIssue(name, "groups", serving_roles,
                                      "one role: gpu_nodes or lb, not both (a node cannot be its own load balancer, "
                                      "and the two roles' group data disagree, e.g. gpu_count)"))
    if roles and not DNS_NAME.fullmatch(name):
        problems.append(SettingsIssue(name, "inventory name", name,
                                      "a lower-case DNS name (a-z, 0-9, '-' inside labels of <= 63, dots between): "
                                      "it names the host's containers and nginx upstreams"))
    if roles and data.get("private_address") is None and not data.get("private_address_from_name"):
        problems.append(SettingsIssue(name, "private_address", None,
                                      "the host's private IP, where the other hosts reach it (Docker publishes "
                                      "vLLM, Milvus and the app on it); private_address_from_name = True only "
                                      "where inventory names resolve, as in the lab"))
    return problems


def _address_problems(hosts: list[tuple[str, list[str], dict[str, Any]]]) -> list[SettingsIssue]:
    seen: dict[str, str] = {}
    problems = []
    for name, _, data in hosts:
        address = data.get("private_address")
        if not isinstance(address, str) or not address:
            continue
        if address in seen:
            problems.append(SettingsIssue(name, "private_address", address,
                                          f"an address no other host has (also {seen[address]})"))
        seen.setdefault(address, name)
    return problems


def _role_problems(hosts: list[tuple[str, list[str], dict[str, Any]]],
                   valid: dict[str, FleetHost]) -> list[SettingsIssue]:
    problems = []
    nodes = [n for n, groups, _ in hosts if GPU_GROUP in groups]
    lbs = [n for n, groups, _ in hosts if LB_GROUP in groups]
    if lbs and not nodes:
        problems += [SettingsIssue(lb, "groups", [LB_GROUP], "an inventory with a host in gpu_nodes: a load balancer "
                                   "with no replica behind it has nothing to serve") for lb in lbs]
    seen_names: dict[str, str] = {}
    for host in valid.values():
        if not host.is_gpu_node:
            continue
        s = host.settings
        if s.app_image and s.app_vllm_target == "lb" and not lbs:
            problems.append(SettingsIssue(host.name, "app_vllm_target", "lb",
                                          "'node', or a host in group lb for the app to reach vLLM through"))
        elif s.app_image and s.app_vllm_target == "lb" and lbs[0] in valid and valid[lbs[0]].settings.lb_tls_cert_file:
            problems.append(SettingsIssue(host.name, "app_vllm_target", "lb",
                                          f"'node': the RAG app speaks plain HTTP and {lbs[0]} serves TLS only"))
        if s.gpu_count == 0 and not host.is_lb:
            problems.append(SettingsIssue(host.name, "gpu_count", 0, f">= 1 for a host in group {GPU_GROUP}"))
        for replica in replicas_of(host):
            if replica.name == host.app_member:
                problems.append(SettingsIssue(host.name, "vllm_replicas", replica.name,
                                              "a replica name other than the node's RAG app member's"))
            if replica.name in seen_names:
                problems.append(SettingsIssue(host.name, "vllm_replicas", replica.name,
                                              f"a replica name unique in the fleet (also on {seen_names[replica.name]})"))
            seen_names[replica.name] = host.name
    return problems


def _data_tier_problems(hosts: list[tuple[str, list[str], dict[str, Any]]],
                        valid: dict[str, FleetHost]) -> list[SettingsIssue]:
    """One Milvus host for the fleet, and one at all wherever the RAG app is on."""
    databases = [n for n, groups, _ in hosts if VECTOR_DB_GROUP in groups]
    problems = [SettingsIssue(name, "groups", [VECTOR_DB_GROUP],
                              f"one host in {VECTOR_DB_GROUP} (also {', '.join(d for d in databases if d != name)}): "
                              "Milvus standalone runs on one host and every app replica shares it; more than one "
                              "host is Milvus's distributed deployment (Helm/Milvus Operator on Kubernetes), "
                              "which gpufleet does not deploy")
                for name in databases[1:]]
    with_app = [h for h in valid.values() if h.is_gpu_node and h.settings.app_image]
    if not databases:
        problems += [SettingsIssue(h.name, "app_image", h.settings.app_image,
                                   f"a host in inventory group {VECTOR_DB_GROUP} to run the Milvus every app "
                                   "replica shares (a GPU node or a host of its own), or app_image = None")
                     for h in with_app]
    db = next((valid[d] for d in databases[:1] if d in valid), None)
    if db is not None:
        problems += _auth_problems(db, bool(with_app)) + _backup_bucket_problems(db)
    for lb in (h for h in valid.values() if h.is_lb and with_app):  # the lbs then serve the app on lb_app_port
        s = lb.settings
        taken = {s.lb_port: "lb_port", s.lb_status_port: "lb_status_port", s.prometheus_port: "prometheus_port",
                 s.node_exporter_port: "node_exporter_port"}
        if s.lb_app_port in taken:
            problems.append(SettingsIssue(lb.name, "lb_app_port", s.lb_app_port,
                                          f"a port not already used by {taken[s.lb_app_port]} (the nodes run the "
                                          "RAG app, which this load balancer serves on lb_app_port)"))
    return problems


def _backup_bucket_problems(db: FleetHost) -> list[SettingsIssue]:
    """A bucket as milvus_backup_dir: its credentials file (when named) reads as AWS credentials now,
    not at the nightly backup's 02:00 (gpufleet/backup_store.py)."""
    from gpufleet.backup_store import StoreError, is_s3, read_credentials

    s = db.settings
    path = s.milvus_backup_s3_credentials_file
    if not is_s3(s.milvus_backup_dir) or not path:
        return []
    try:
        read_credentials(path)
    except StoreError as exc:
        return [SettingsIssue(db.name, "milvus_backup_s3_credentials_file", path,
                              f"an AWS credentials file ([default] with aws_access_key_id and "
                              f"aws_secret_access_key), 0600, outside the checkout: {exc}")]
    return []


MILVUS_PASSWORD_LENGTH = (6, 256)  # Milvus's proxy.minPasswordLength / maxPasswordLength defaults


def milvus_password_problem(path: str) -> str | None:
    """What is wrong with a Milvus password file (never its content), or None."""
    try:
        length = len(check_control_file(path).read_text(encoding="utf-8").strip())
    except ValueError as exc:
        return str(exc)
    low, high = MILVUS_PASSWORD_LENGTH
    if not low <= length <= high:
        return f"a password of {low} to {high} characters (Milvus's limits; it has {length})"
    return None


def _auth_problems(db: FleetHost, with_app: bool) -> list[SettingsIssue]:
    """Milvus authentication on unless written off, with the secret files it needs (settings_data.py)."""
    s = db.settings
    if not s.milvus_authentication:  # said out loud: the password files are not used
        return []
    if not s.milvus_root_password_file:
        return [SettingsIssue(db.name, "milvus_root_password_file", None,
                              "a control-side file holding Milvus root's password on one line (absolute or ~/ path): "
                              "Milvus runs with authentication; to run it without, say milvus_authentication = False")]
    problems = []
    for key in ("milvus_root_password_file", "milvus_app_password_file"):
        path = getattr(s, key)
        wrong = milvus_password_problem(path) if path and (with_app or key == "milvus_root_password_file") else None
        if wrong:
            problems.append(SettingsIssue(db.name, key, path, wrong))
    if not with_app or problems:
        return problems
    if not s.milvus_app_password_file:
        return [SettingsIssue(db.name, "milvus_app_password_file", None,
                              f"a control-side file holding the RAG app's Milvus password ({s.milvus_app_user}) on "
                              "one line: the app logs in to a Milvus with authentication")]
    if Path(s.milvus_app_password_file).expanduser().resolve() == Path(s.milvus_root_password_file).expanduser().resolve():
        return [SettingsIssue(db.name, "milvus_app_password_file", s.milvus_app_password_file,
                              "a file other than milvus_root_password_file: the app's user must not know root's password")]
    return []
