"""Arguments of deploy.py's operations, built from gpufleet's settings and Fleet.

The operations (operations/*) take plain values, so that anyone's deploy can call them; the
mapping from a host's settings and the inventory to those values is gpufleet's and lives here,
where the control side (the rollout's prepare, its lb steps) builds the very same arguments.
"""

from __future__ import annotations

from typing import Any

from gpufleet.fleet import Fleet
from gpufleet.settings import HostSettings


def vllm_image_args(settings: HostSettings) -> dict[str, Any]:
    """``operations.vllm.image`` arguments for a node: the image deploy.py builds and the rollout prepares."""
    from operations import vllm

    return {"base_image": settings.vllm_image, "nccl_version": settings.nccl_version,
            "pip_install_args": settings.pip_install_args, "build_dir": settings.vllm_build_dir,
            "require_arch": vllm.arch_of(settings.gpu_compute_capability)}


def weights_args(settings: HostSettings) -> dict[str, Any]:
    """``operations.weights.stage`` arguments for a node: what deploy.py stages and the rollout prepares."""
    from operations import vllm

    return {"source": settings.vllm_model_source, "model": settings.vllm_model, "revision": settings.vllm_model_revision,
            "url": settings.vllm_model_url, "sha256": settings.vllm_model_sha256, "models_dir": settings.vllm_models_dir,
            "hf_cache_dir": settings.vllm_hf_cache_dir,
            "image": vllm.image_tag(settings.vllm_image, settings.nccl_version, settings.pip_install_args),
            "hf_token_file": settings.vllm_hf_token_file, "hf_endpoint": settings.vllm_env.get("HF_ENDPOINT"),
            "script_dir": settings.vllm_build_dir, "timeout_s": settings.vllm_stage_timeout_s}


def replica_model_args(settings: HostSettings) -> dict[str, Any]:
    """What a replica serves: the hub model at its revision, a staged archive's directory, or a path
    in the image; offline whenever the weights were staged."""
    from operations import weights

    model_dir = (weights.url_dir(settings.vllm_models_dir, settings.vllm_model_sha256)
                 if settings.vllm_model_source == "url" and settings.vllm_model_sha256 else None)
    return {"model": settings.vllm_model, "revision": settings.vllm_model_revision, "model_dir": model_dir,
            "offline": settings.serves_staged_weights()}


# --- load balancer hosts: nginx, Prometheus, Alertmanager over the whole fleet -----------------

def lb_options(settings: HostSettings) -> dict[str, Any]:
    """``options`` of operations.loadbalancer's nginx/drain/undrain from an lb host's settings."""
    return {
        "listen_port": settings.lb_port, "status_port": settings.lb_status_port,
        "max_fails": settings.lb_max_fails, "fail_timeout_s": settings.lb_fail_timeout_s,
        "connect_timeout_s": settings.lb_connect_timeout_s, "read_timeout_s": settings.lb_read_timeout_s,
        "next_upstream_tries": settings.lb_next_upstream_tries,
        "next_upstream_timeout_s": settings.lb_next_upstream_timeout_s,
        "client_max_body_size": settings.lb_client_max_body_size, "keepalive": settings.lb_upstream_keepalive,
        "keepalive_timeout_s": settings.lb_upstream_keepalive_timeout_s,
        "worker_connections": settings.lb_worker_connections,
        "tls_cert_file": settings.lb_tls_cert_file, "tls_key_file": settings.lb_tls_key_file,
        "api_key_file": settings.vllm_api_key_file if settings.lb_require_api_key else None,
        "app_listen_port": settings.lb_app_port,
    }


def lb_args(fleet: Fleet, host_name: str) -> dict[str, Any]:
    """``replicas`` (every vLLM replica, then every node's RAG app) and ``options`` for
    nginx/drain/undrain on one lb host of a gpufleet Fleet."""
    from operations.loadbalancer import members

    return {"replicas": members(fleet.replicas) + members(fleet.app_members),
            "options": lb_options(fleet.hosts[host_name].settings)}


def prometheus_args(fleet: Fleet, host_name: str) -> dict[str, Any]:
    """``replicas``, ``nodes``, ``options`` (and ``rules`` where the fleet tunes alert hold times) for
    ``prometheus`` on one lb host of a gpufleet Fleet."""
    from operations.monitoring import ALERTMANAGER_LISTEN, alert_rules

    s = fleet.hosts[host_name].settings
    # A node's row names the exporters it runs; the Milvus host (a node, or a host of its own) adds Milvus's.
    # Each is scraped where it listens: the exporters on metrics_listen_address, Milvus on its bind
    # address (the private address where those are unset or every interface).
    nodes = []
    for h in fleet.hosts.values():
        row: dict[str, Any] = {"name": h.name, "address": h.metrics_address}
        if h.is_gpu_node:
            row.update(dcgm_exporter_port=h.settings.dcgm_exporter_port, gpu_monitor_port=h.settings.gpu_monitor_port)
        if h.is_vector_db:
            row.update(milvus_metrics_port=h.settings.milvus_health_port, milvus_address=h.milvus_address)
        if len(row) > 2:
            nodes.append(row)
    replicas = [{"name": r.name, "node": r.node, "address": r.address, "port": r.port} for r in fleet.replicas]
    hosts = [{"name": h.name, "address": h.metrics_address, "port": h.settings.node_exporter_port}
             for h in fleet.hosts.values() if h.is_gpu_node or h.is_lb or h.is_vector_db]
    return {"replicas": replicas, "nodes": nodes, "hosts": hosts,
            "options": {"port": s.prometheus_port, "scrape_interval_s": s.prometheus_scrape_interval_s,
                        "retention": s.prometheus_retention,
                        # Like the exporters: the lb's private address unless metrics_listen_address says otherwise.
                        "listen_address": s.metrics_listen_address or fleet.hosts[host_name].address,
                        "alertmanager": ALERTMANAGER_LISTEN if s.alertmanager_webhook_url_file else None},
            # The shipped rules unless the fleet tunes hold times (the operation's default is the file).
            **({"rules": alert_rules(s.alert_hold_for)} if s.alert_hold_for else {})}


def alertmanager_args(fleet: Fleet, host_name: str) -> dict[str, Any]:
    """``webhook_url_file``, ``group_wait`` and ``group_interval`` for ``alertmanager`` on one lb host."""
    s = fleet.hosts[host_name].settings
    return {"webhook_url_file": s.alertmanager_webhook_url_file, "group_wait": s.alertmanager_group_wait,
            "group_interval": s.alertmanager_group_interval}
