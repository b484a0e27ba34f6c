"""A Milvus stand-in for the users check: grpcio serving pymilvus's generated MilvusService with an
in-memory RBAC state, and Milvus 2.3's refusal of a bad login (UNAUTHENTICATED, "auth check failure").

Run as its own process (the unit tests' process runs under gevent, which gRPC does not)::

    python tests/unit/fake_milvus_rbac.py '{"passwords": {...}, "grants": [[kind, name, privilege]], "app_roles": [...],
                                          "refuse_list_users": false}'

prints the port it serves on, then serves until its stdin closes.
"""

from __future__ import annotations

import base64
import json
import sys
from concurrent import futures

import grpc
import pymilvus  # noqa: F401 - the real package: gpufleet.milvus_rpc.stubs() then loads its stubs as usual

from gpufleet.milvus_rpc import stubs


def serve(state: dict) -> None:
    pb, grpc_stubs = stubs()
    from pymilvus.grpc_gen import common_pb2

    passwords = state["passwords"]

    class FakeMilvus(grpc_stubs.MilvusServiceServicer):
        def _login(self, context) -> None:
            header = dict(context.invocation_metadata()).get("authorization", "")
            user, _, password = base64.b64decode(header).decode().partition(":")
            if not user or passwords.get(user) != password:
                context.abort(grpc.StatusCode.UNAUTHENTICATED,
                              "auth check failure, please check username and password are correct")

        def ShowCollections(self, request, context):
            self._login(context)
            return pb.ShowCollectionsResponse(collection_names=["gpufleet_docs"])

        def ListCredUsers(self, request, context):
            self._login(context)
            if state.get("refuse_list_users"):  # an error status in the answer, not a gRPC error
                return pb.ListCredUsersResponse(status=common_pb2.Status(error_code=1, code=1,
                                                                         reason="list users refused"))
            return pb.ListCredUsersResponse(usernames=sorted(passwords))

        def SelectRole(self, request, context):
            self._login(context)
            return pb.SelectRoleResponse(results=[pb.RoleResult(role=pb.RoleEntity(name=n))
                                                  for n in ("admin", "public", "gpufleet_app_role")])

        def SelectUser(self, request, context):
            self._login(context)
            if request.user.name not in passwords:
                return pb.SelectUserResponse()
            roles = state["app_roles"] if request.user.name == "gpufleet_app" else ["admin"]
            return pb.SelectUserResponse(results=[pb.UserResult(user=pb.UserEntity(name=request.user.name),
                                                                roles=[pb.RoleEntity(name=r) for r in roles])])

        def SelectGrant(self, request, context):
            self._login(context)
            return pb.SelectGrantResponse(entities=[
                pb.GrantEntity(role=request.entity.role, object=pb.ObjectEntity(name=kind), object_name=name,
                               db_name="default", grantor=pb.GrantorEntity(user=pb.UserEntity(name="root"),
                                                                           privilege=pb.PrivilegeEntity(name=priv)))
                for kind, name, priv in (state["grants"] if request.entity.role.name == "gpufleet_app_role" else [])])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    grpc_stubs.add_MilvusServiceServicer_to_server(FakeMilvus(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
