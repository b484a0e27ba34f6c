"""The RAG application container on a GPU node, wired to vLLM and Milvus by URL; and its health gate.

The image is the operator's (``app_image``); the deploy gives it, as environment:

- ``VLLM_API_URL``: ``http://<node>:<replica port>/v1`` (``app_vllm_target="node"``: the node's own
  first replica, no network hop) or ``http://<load balancer>:<lb_port>/v1`` (``"lb"``: survives a
  rollout of the local replica, at the price of a hop);
- ``VLLM_MODEL``: the served model name (``vllm_served_model_name``);
- ``MILVUS_URI``: ``http://<the vector_db host>:<milvus_port>``: one Milvus every replica shares;
- ``APP_PORT``, ``MILVUS_COLLECTION``, ``RAG_TOP_K``; plus ``app_env`` (non-secret extras);
- with an API key (``vllm_api_key_file``): its own root-only env file, /etc/gpufleet/<name>.env
  (:func:`operations.secrets.env_file`: 0600, atomic, never shown), passed with ``--env-file``,
  holding ``VLLM_API_KEY`` (the app sends it to vLLM as ``Authorization: Bearer``) and
  ``APP_API_KEY`` (the same key: the app then refuses every request but ``GET /health`` without
  it, so :8080 is no unauthenticated way around vLLM's key). The key never goes on a command line.
- with Milvus authentication (``milvus_user``/``milvus_password_file``: the Milvus host's
  ``milvus_app_user``/``milvus_app_password_file``): ``MILVUS_USER`` in its environment (a name,
  not a secret) and ``MILVUS_PASSWORD`` in that same root-only env file. The app logs in to Milvus
  with them (the lab's app: ``MilvusClient(user=..., password=...)``); the user and its grants are
  made on Milvus by operations/milvus_users.py.

Every address is resolved on the host to an IP before it goes into the container: the app runs in
the host's Docker, whose containers need not resolve the fleet's host names (the lab's do not).
The app publishes its port on the node's private address only, like Milvus (see operations/milvus.py).
The container is recreated when any of this changes (operations.containers spec digest) — an LB
whose address changed, for one, after the next deploy.

The app sits behind the load balancers (upstream ``rag_app``, operations/loadbalancer.py), and a
rollout drains it with its node's replicas; on SIGTERM it must finish what it is answering within
its 30 s stop timeout (the lab's app does: lab/images/rag-app/app.py).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation

from operations import secrets
from operations.containers import ContainerSpec
from operations.containers import container as _container
from operations.facts.net import HttpOk
from operations.milvus import bind_address, wait_commands

APP = "rag-app"
CONTAINER_PORT = 8080
# The app's own env file holds these (both the key from vllm_api_key_file): outgoing, incoming.
API_KEY_VARIABLES = ("VLLM_API_KEY", "APP_API_KEY")
MILVUS_PASSWORD_VARIABLE = "MILVUS_PASSWORD"  # from milvus_app_password_file, in the same env file


def env_file_path(name: str = APP) -> str:
    """The app container's root-only env file on the host."""
    return f"{secrets.SECRETS_DIR}/{name}.env"


def vllm_url(target: str, node_address: str, replica_port: int, lb_address: str | None = None,
             lb_port: int = 80) -> tuple[str, int]:
    """(address, port) of the vLLM endpoint the app uses; the caller resolves the address."""
    if target == "node":
        return node_address, replica_port
    if target == "lb":
        if not lb_address:
            raise ValueError("app_vllm_target='lb' needs a load balancer in the inventory")
        return lb_address, lb_port
    raise ValueError(f"app_vllm_target {target!r}: expected 'node' or 'lb'")


def app_spec(image: str, bind_ip: str, port: int, vllm_api_url: str, model: str, milvus_uri: str,
             collection: str = "gpufleet_docs", top_k: int = 4, env: dict[str, str] | None = None,
             name: str = APP, env_files: dict[str, str] | None = None,
             milvus_user: str | None = None) -> ContainerSpec:
    """The app's container (pure: every address is already an IP; env_files: path -> content digest)."""
    user = {"MILVUS_USER": milvus_user} if milvus_user else {}
    return ContainerSpec(
        name=name, image=image, ports=[f"{bind_ip}:{port}:{CONTAINER_PORT}"],
        env={**(env or {}), "VLLM_API_URL": vllm_api_url, "VLLM_MODEL": model, "MILVUS_URI": milvus_uri,
             "APP_PORT": str(CONTAINER_PORT), "MILVUS_COLLECTION": collection, "RAG_TOP_K": str(top_k), **user},
        env_files=dict(env_files or {}),
        labels={"io.gpufleet.role": "rag-app"}, stop_timeout=30,
    )


@operation()
def container(image: str, address: str, port: int, vllm_address: str, vllm_port: int, model: str,
              milvus_address: str, milvus_port: int = 19530, collection: str = "gpufleet_docs", top_k: int = 4,
              env: dict[str, str] | None = None, name: str = APP, api_key_file: str | None = None,
              milvus_user: str | None = None, milvus_password_file: str | None = None):
    """
    Run the RAG application, wired to vLLM and Milvus.

    + image: the app image (``app_image``)
    + address: where to publish the app's port (an IP, or a name resolved on the host; not loopback)
    + port: the host port (``app_port``); the app listens on 8080 inside
    + vllm_address / vllm_port: the vLLM endpoint (see :func:`vllm_url`); ``/v1`` is appended
    + model: the served model name
    + milvus_address / milvus_port: Milvus's gRPC/REST endpoint
    + collection / top_k / env: the app's collection, retrieval depth and extra environment
    + api_key_file: *control-side* file with vLLM's API key (``vllm_api_key_file``). The app gets it
      from its own env file (/etc/gpufleet/<name>.env, root, 0600) as ``VLLM_API_KEY`` (sent to
      vLLM) and ``APP_API_KEY`` (required from the app's clients)
    + milvus_user / milvus_password_file: the app's Milvus user, and the *control-side* file with its
      password (``MILVUS_PASSWORD`` in the same env file); None: Milvus without authentication.
      With neither a key nor a Milvus password, the env file is removed

    **Example:**

    .. code:: python

        app.container(name="RAG app", image="registry.internal/rag-app:1.4.2", address="10.0.0.5",
                      port=8080, vllm_address="10.0.0.5", vllm_port=8000, model="qwen3-32b-awq",
                      milvus_address="10.0.0.5", api_key_file="~/.config/gpufleet/vllm-api-key")
    """
    # Every refusal (an address, an unreadable key file) comes before the first change.
    ips = [bind_address(a) for a in (address, vllm_address, milvus_address)]
    env_file = env_file_path(name)
    variables = dict.fromkeys(API_KEY_VARIABLES, api_key_file) if api_key_file else {}
    if milvus_user and milvus_password_file:
        variables[MILVUS_PASSWORD_VARIABLE] = milvus_password_file
    env_files = {env_file: secrets.content_digest(secrets.env_text(variables))} if variables else None
    spec = app_spec(image, ips[0], port, f"http://{ips[1]}:{vllm_port}/v1", model, f"http://{ips[2]}:{milvus_port}",
                    collection, top_k, env, name, env_files=env_files,
                    milvus_user=milvus_user if milvus_password_file else None)
    yield from secrets.env_file._inner(dest=env_file, variables=variables)
    yield from _container._inner(spec=spec)


@operation()
def ready(address: str, port: int, timeout: int = 180, container: str = APP):
    """
    Wait until the app answers ``GET /health`` (documents indexed in Milvus), or fail with its last log lines.

    Healthy now: no command. Gate-able: ``_if=app.did_change``.
    """
    ip = bind_address(address)
    ip = "127.0.0.1" if ip == "0.0.0.0" else ip
    url = f"http://{ip}:{port}/health"
    if host.get_fact(HttpOk, url=url):
        host.noop(f"rag app healthy at {url}")
        return
    yield wait_commands(url, container, timeout, "rag app")
