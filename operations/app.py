"""The RAG application container on a GPU node, wired to vLLM and Milvus by URL; and its health gate.

The image is the operator's (``app_image``); the deploy gives it, as environment:

- ``VLLM_API_URL``: ``http://<node>:<replica port>/v1`` (``app_vllm_target="node"``: the node's own
  first replica, no network hop) or ``http://<load balancer>:<lb_port>/v1`` (``"lb"``: survives a
  rollout of the local replica, at the price of a hop);
- ``VLLM_MODEL``: the served model name (``vllm_served_model_name``);
- ``MILVUS_URI``: ``http://<node>:<milvus_port>``;
- ``APP_PORT``, ``MILVUS_COLLECTION``, ``RAG_TOP_K``; plus ``app_env`` (non-secret extras).

Every address is resolved on the host to an IP before it goes into the container: the app runs in
the host's Docker, whose containers need not resolve the fleet's host names (the lab's do not).
The app publishes its port on the node's private address only, like Milvus (see operations/milvus.py).
The container is recreated when any of this changes (operations.containers spec digest) — an LB
whose address changed, for one, after the next deploy.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import operation

from operations.containers import ContainerSpec
from operations.containers import container as _container
from operations.facts.net import HttpOk
from operations.milvus import bind_address, wait_commands

APP = "rag-app"
CONTAINER_PORT = 8080


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
             name: str = APP) -> ContainerSpec:
    """The app's container (pure: every address is already an IP)."""
    return ContainerSpec(
        name=name, image=image, ports=[f"{bind_ip}:{port}:{CONTAINER_PORT}"],
        env={**(env or {}), "VLLM_API_URL": vllm_api_url, "VLLM_MODEL": model, "MILVUS_URI": milvus_uri,
             "APP_PORT": str(CONTAINER_PORT), "MILVUS_COLLECTION": collection, "RAG_TOP_K": str(top_k)},
        labels={"io.gpufleet.role": "rag-app"}, stop_timeout=30,
    )


@operation()
def container(image: str, address: str, port: int, vllm_address: str, vllm_port: int, model: str,
              milvus_address: str, milvus_port: int = 19530, collection: str = "gpufleet_docs", top_k: int = 4,
              env: dict[str, str] | None = None, name: str = APP):
    """
    Run the RAG application, wired to vLLM and Milvus.

    + image: the app image (``app_image``)
    + address: where to publish the app's port (an IP, or a name resolved on the host; not loopback)
    + port: the host port (``app_port``); the app listens on 8080 inside
    + vllm_address / vllm_port: the vLLM endpoint (see :func:`vllm_url`); ``/v1`` is appended
    + model: the served model name
    + milvus_address / milvus_port: Milvus's gRPC/REST endpoint
    + collection / top_k / env: the app's collection, retrieval depth and extra environment

    **Example:**

    .. code:: python

        app.container(name="RAG app", image="registry.internal/rag-app:1.4.2", address="10.0.0.5",
                      port=8080, vllm_address="10.0.0.5", vllm_port=8000, model="qwen3-32b-awq",
                      milvus_address="10.0.0.5")
    """
    spec = app_spec(image, bind_address(address), port,
                    f"http://{bind_address(vllm_address)}:{vllm_port}/v1", model,
                    f"http://{bind_address(milvus_address)}:{milvus_port}", collection, top_k, env, name)
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
