"""Milvus's users: root's password from its secret file, the RAG app's own user, role and grants.

Run by the deploy's ``milvus_users.users`` operation (operations/milvus_users.py) in a child
process, ``python -m gpufleet.milvus_users check|apply``, against a local port forwarded over SSH
to the Milvus host (operations/port_forward.py): gRPC does not run under pyinfra's gevent, so
the Milvus client lives in its own process, as for backups (gpufleet/milvus_dump.py). ``check``,
which every deploy and drift check of the Milvus host waits for, reads with
gpufleet/milvus_rpc.py's client, which does not import pymilvus (its ORM's pandas and minio were
0.75 s of the check's 1 s); ``apply`` changes users with pymilvus's. The passwords are
read here from their control-side files (the command line names the files, never a value), and no
value is ever printed or put in an error: a failure names the user and what was refused.

Root's password: Milvus creates ``root`` with ``common.security.defaultRootPassword`` (the
deploy sets it from the secret file: ``COMMON_SECURITY_DEFAULTROOTPASSWORD``, Milvus >= 2.4.x)
or, before that setting existed (Milvus 2.3, the lab's server), with the well-known default
``Milvus``. It applies only when Milvus first creates root, so this step: logs in as root with the
secret (done); else with ``Milvus`` and changes it to the secret; else stops, saying root's
password is neither (an operator changed it: put the current one in the secret file).

The app's user (``milvus_app_user``): created when missing; its password reset by root when a
login with the secret fails (a rotated secret file): dropped and created again, since Milvus
asks even root for a user's old password (unless ``common.security.superUsers`` names root);
its role is given back below, and the role keeps its grants. It gets one role, ``<user>_role``, with what
the RAG app does and nothing more (:data:`APP_GRANTS`): create its collection and its index, load,
write, delete, search and query. It cannot drop a collection, nor manage users or roles.
CreateCollection is a Global privilege in Milvus 2.3 (it cannot name a collection): the app's user
could create a collection of another name, but neither index, load nor write it; such an
index-less collection stops the next backup, which names it (gpufleet/milvus_dump.py).

``check`` prints what would change (``{"changes": [...]}``, empty when everything holds; or
``{"unreachable": reason}``); ``apply`` makes it so and prints the changes made. Exit 1 with one
line on stderr when Milvus refuses root with both passwords.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_ROOT_PASSWORD = "Milvus"  # what Milvus gives root unless defaultRootPassword says otherwise
ROOT = "root"
# Seconds for a login or a call: short for a check (a plan waits on it; a Milvus that is down or
# slow reads as "unreachable", and the apply at execute time, with the long one, decides).
TIMEOUT_S = {"check": 8, "apply": 30}
# (object type, privilege) the RAG app needs (lab/images/rag-app/app.py: has_collection,
# create_collection with its index, load, upsert, delete, search, query), on Milvus 2.3's RBAC
# objects: Global ones on "*", Collection ones on each app collection.
GLOBAL_GRANTS = ("CreateCollection", "DescribeCollection", "ShowCollections")
COLLECTION_GRANTS = ("CreateIndex", "IndexDetail", "Load", "GetLoadState", "GetLoadingProgress", "Insert",
                     "Upsert", "Delete", "Search", "Query", "Flush", "GetStatistics")


class Refused(SystemExit):
    """Milvus refused what this step needs; the message names the user, never a password."""


def read_password(path: str) -> str:
    """One password from a control-side file (the settings checked it: one non-empty line)."""
    return Path(path).expanduser().read_text(encoding="utf-8").strip()


def app_grants(collections: list[str]) -> set[tuple[str, str, str]]:
    """Every (object type, object name, privilege) the app's role holds.

    >>> sorted(app_grants(["docs"]))[:2]
    [('Collection', 'docs', 'CreateIndex'), ('Collection', 'docs', 'Delete')]
    """
    wanted = {("Global", "*", p) for p in GLOBAL_GRANTS}
    return wanted | {("Collection", c, p) for c in collections for p in COLLECTION_GRANTS}


def _unauthenticated(exc: Exception) -> bool:
    text = str(exc).lower()
    return "unauthenticated" in text or "auth check failure" in text or "authorization" in text


_timeout = TIMEOUT_S["apply"]


def client_class(changes: bool):
    """The Milvus client: pymilvus's MilvusClient where the caller may change something, else the
    read-only one that does not import pymilvus (gpufleet/milvus_rpc.py: the check's start, 1 s ->
    0.25 s). Both take ``uri``, ``user``, ``password`` and ``timeout``."""
    if changes:
        from pymilvus import MilvusClient

        return MilvusClient
    from gpufleet.milvus_rpc import ReadClient, stubs

    stubs()  # its gRPC code, loaded with the class (main() loads it before the URI comes)
    return ReadClient


def login(uri: str, user: str, password: str, changes: bool = True):
    """A :func:`client_class` client logged in as ``user``, or None when Milvus refuses the password."""
    try:
        client = client_class(changes)(uri=uri, user=user, password=password, timeout=_timeout)
        client.list_collections()  # the login is checked on the first call
        return client
    except Exception as exc:  # noqa: BLE001 - pymilvus raises several types for one refusal
        if _unauthenticated(exc):
            return None
        raise


def role_name(app_user: str) -> str:
    return f"{app_user}_role"


def _held_grants(client, role: str) -> set[tuple[str, str, str]]:
    return {(g["object_type"], g["object_name"], g["privilege"]) for g in client.describe_role(role)["privileges"]}


def plan(uri: str, root_password: str, app_user: str | None, app_password: str | None,
         collections: list[str], fix: bool) -> list[str]:
    """What differs from the wanted users (``fix``: and change it); the list of changes."""
    changes: list[str] = []
    root = login(uri, ROOT, root_password, changes=fix)
    if root is None:
        default = login(uri, ROOT, DEFAULT_ROOT_PASSWORD, changes=fix)
        if default is None:
            raise Refused(f"Milvus at {uri} refuses user {ROOT} with the password of milvus_root_password_file and "
                          f"with Milvus's default: someone changed it; put root's current password in that file")
        changes.append(f"set {ROOT}'s password (it is Milvus's default)")
        if not fix:
            return changes + ([f"create or check user {app_user}"] if app_user else [])
        default.update_password(ROOT, DEFAULT_ROOT_PASSWORD, root_password)
        root = login(uri, ROOT, root_password)
        if root is None:
            raise Refused(f"Milvus at {uri} accepted a new password for {ROOT} but refuses it")
    if not app_user:
        return changes
    user_exists = app_user in root.list_users()
    if not user_exists:
        changes.append(f"create user {app_user}")
        if fix:
            root.create_user(app_user, app_password)
    elif login(uri, app_user, app_password, changes=fix) is None:
        changes.append(f"reset {app_user}'s password (it is not milvus_app_password_file's)")
        if fix:  # Milvus asks root for the old password too (unless root is in superUsers): recreate
            root.drop_user(app_user)
            root.create_user(app_user, app_password)
    role = role_name(app_user)
    if role not in root.list_roles():
        changes.append(f"create role {role}")
        if fix:
            root.create_role(role)
    if fix or (user_exists and role in root.list_roles()):
        has_role = role in (root.describe_user(app_user) or {}).get("roles", ())
    else:
        has_role = False  # the user or the role is still to be made
    if not has_role:
        changes.append(f"give {app_user} role {role}")
        if fix:
            root.grant_role(app_user, role)
    held = _held_grants(root, role) if (fix or role in root.list_roles()) else set()
    for object_type, name, privilege in sorted(app_grants(collections) - held):
        changes.append(f"grant {role} {privilege} on {object_type} {name}")
        if fix:
            root.grant_privilege(role, object_type, privilege, name)
    return changes


# A credential change is broadcast to every proxy registered in Milvus's etcd, and right after a
# restart that still includes the previous process's, until its session expires (embedded 2.3.5
# answers "UpdateCredentialCache failed, proxyID = N"). The change is made again once it has gone:
# plan() looks first, so a retry only does what is still missing.
STALE_PROXY_RETRY_S = 120


def _plan_retrying(uri: str, root_password: str, app_user: str | None, app_password: str | None,
                   collections: list[str], fix: bool) -> list[str]:
    deadline = time.monotonic() + STALE_PROXY_RETRY_S
    while True:
        try:
            return plan(uri, root_password, app_user, app_password, collections, fix)
        except Exception as exc:  # noqa: BLE001 - pymilvus's MilvusException; anything else is raised again
            if not fix or "CredentialCache" not in str(exc) or time.monotonic() > deadline:
                raise
            print(f"milvus users: a proxy of an earlier Milvus process is still registered ({str(exc)[:80]}); "
                  "trying again in 10 s", file=sys.stderr)
            time.sleep(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpufleet.milvus_users")
    parser.add_argument("action", choices=["check", "apply"])
    parser.add_argument("--uri", required=True, help="Milvus's URI; '-': the first line of stdin, read once the "
                                                    "Milvus client is imported (the caller opens the tunnel meanwhile)")
    parser.add_argument("--root-password-file", required=True)
    parser.add_argument("--app-user")
    parser.add_argument("--app-password-file")
    parser.add_argument("--collection", action="append", default=[])
    args = parser.parse_args(argv)
    if args.uri == "-":
        client_class(changes=args.action == "apply")  # its import: the slow part of this process's start

        args.uri = sys.stdin.readline().strip()
        if not args.uri:
            return 0  # the caller gave up before it had a URI (Milvus not healthy): nothing asked
    global _timeout
    _timeout = TIMEOUT_S[args.action]
    app_password = read_password(args.app_password_file) if args.app_user else None
    try:
        changes = _plan_retrying(args.uri, read_password(args.root_password_file), args.app_user, app_password,
                                 args.collection, fix=args.action == "apply")
    except Refused:
        raise
    except Exception as exc:  # noqa: BLE001 - Milvus down or not answering: say so, without the traceback
        if args.action == "check":
            print(json.dumps({"unreachable": type(exc).__name__}))
            return 0
        raise Refused(f"Milvus at {args.uri}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    print(json.dumps({"changes": changes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
