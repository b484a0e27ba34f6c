"""Milvus's user and role reads over gRPC, for the users check, without importing pymilvus.

``python -m gpufleet.milvus_users check`` runs in every deploy and drift check of the Milvus host,
and the host's plan waits for it. With pymilvus it spent 0.75 s of its 1 s importing: pymilvus's
package imports its ORM, and the ORM imports pandas, numpy and minio. The check needs five read
calls, and this module makes them with grpcio and the stubs pymilvus ships (``pymilvus.grpc_gen``,
generated from milvus-proto), loaded without running ``pymilvus/__init__.py``: about 0.1 s.
Changing users (``apply``) keeps pymilvus's client: it is rare, and its retries are worth the
second.

:class:`ReadClient` answers as pymilvus 2.3.8's ``MilvusClient`` does for the calls the check
makes (pymilvus is pinned exactly in pyproject.toml): ``list_collections`` (the login check),
``list_users``, ``list_roles``, ``describe_user`` and ``describe_role``. It does not retry as
pymilvus does (``retry_on_rpc_failure``) beyond waiting for the channel: a call that fails makes
the check answer "unreachable", and the deploy then plans the apply, which retries with pymilvus. The lab test
tests/lab/test_data_tier.py compares the check's findings from both clients on the lab's Milvus,
with a grant revoked and a role taken away.

Example::

    client = ReadClient(uri="http://127.0.0.1:19530", user="root", password=password, timeout=8)
    client.list_collections()  # the login: a refused password raises grpc's UNAUTHENTICATED
    client.list_users()  # ["gpufleet_app", "root"]
"""

from __future__ import annotations

import base64
import importlib.util
import sys
import types
from typing import Any
from urllib.parse import urlsplit


def stubs() -> tuple[Any, Any]:
    """``(milvus_pb2, milvus_pb2_grpc)`` from pymilvus's package, without its ``__init__``.

    In a process that has not imported pymilvus, its name is given a bare package module whose
    path is pymilvus's, so that ``pymilvus.grpc_gen`` loads alone: such a process must not import
    pymilvus itself afterwards (the users check's child does not).
    """
    if "pymilvus" not in sys.modules:
        spec = importlib.util.find_spec("pymilvus")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("pymilvus is not installed")
        package = types.ModuleType("pymilvus")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["pymilvus"] = package
    from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

    return milvus_pb2, milvus_pb2_grpc


class MilvusRefused(Exception):
    """A call Milvus answered with an error status (pymilvus raises MilvusException for it)."""


class ReadClient:
    """One user's session with Milvus for the read calls of the users check (see the module)."""

    def __init__(self, uri: str, user: str = "", password: str = "", timeout: float = 10):
        # MilvusClient's keywords: gpufleet.milvus_users.client_class() returns either class.
        import grpc

        self._pb, grpc_stubs = stubs()
        parts = urlsplit(uri if "://" in uri else f"http://{uri}")
        if parts.scheme not in ("http", "tcp") or not parts.hostname:
            raise ValueError(f"not a plain Milvus URI: {uri!r} (expected http://host:port)")
        self._channel = grpc.insecure_channel(f"{parts.hostname}:{parts.port or 19530}")
        self._stub = grpc_stubs.MilvusServiceStub(self._channel)
        # pymilvus's authorization header: base64 of "user:password".
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._metadata = (("authorization", token),) if user and password else ()
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request):
        response = getattr(self._stub, method)(request, metadata=self._metadata, timeout=self._timeout,
                                               wait_for_ready=True)
        status = response.status if hasattr(response, "status") else response
        if status.code != 0 or status.error_code != 0:  # pymilvus's check_status
            raise MilvusRefused(f"{method}: {status.reason} (code {status.code}, error code {status.error_code})")
        return response

    def list_collections(self) -> list[str]:
        return list(self._call("ShowCollections", self._pb.ShowCollectionsRequest()).collection_names)

    def list_users(self) -> list[str]:
        return list(self._call("ListCredUsers", self._pb.ListCredUsersRequest()).usernames)

    def list_roles(self) -> list[str]:
        response = self._call("SelectRole", self._pb.SelectRoleRequest(include_user_info=False))
        return [result.role.name for result in response.results]

    def describe_user(self, user_name: str) -> dict:
        request = self._pb.SelectUserRequest(user=self._pb.UserEntity(name=user_name), include_role_info=True)
        results = self._call("SelectUser", request).results
        if not results:
            return {}
        return {"user_name": user_name, "roles": tuple(role.name for role in results[0].roles)}

    def describe_role(self, role_name: str) -> dict:
        request = self._pb.SelectGrantRequest(entity=self._pb.GrantEntity(role=self._pb.RoleEntity(name=role_name),
                                                                         db_name=""))
        entities = self._call("SelectGrant", request).entities
        return {"role": role_name, "privileges": [
            {"object_type": e.object.name, "object_name": e.object_name, "db_name": e.db_name,
             "role_name": e.role.name, "privilege": e.grantor.privilege.name, "grantor_name": e.grantor.user.name}
            for e in entities]}
