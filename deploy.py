"""The one deploy: ``pyinfra inventory/prod.py deploy.py`` (or inventory/lab.py).

Every host's data is validated first (gpufleet.settings); a bad inventory stops the run before
any operation is added for any host. Then each host gets the roles of its groups, in order:
every host: the deploy lock, preflight, base packages (operations/base_role.py); ``gpu_nodes``:
the GPU stack; ``vector_db``: Milvus (on a GPU node or a host of its own); ``gpu_nodes``: the RAG
app and the vLLM replicas; ``lb``: the load balancer (nginx over every replica and every app,
Prometheus).
"""

from pyinfra import host, inventory
from pyinfra.operations import server, systemd
from pyinfra.operations.util import any_changed

from gpufleet.deploy_args import (alertmanager_args, lb_args, prometheus_args, replica_model_args, vllm_image_args,
                                  weights_args)
from gpufleet.deploying import fleet_for, host_settings
from gpufleet.fleet import replicas_of
from operations import (app, distro_packages, docker_daemon, loadbalancer, milvus, milvus_users, monitoring,
                        node_exporter, nvidia, preflight, vllm, weights)
from operations.base_role import every_host_first
from operations.serving_gate import REPLICAS, ServingGate, refuse_other_rollouts

fleet = fleet_for(inventory)
settings = host_settings(fleet, host)
# The Milvus host sets root's password and the app's user through Milvus's API, when authentication is on.
sets_milvus_users = "vector_db" in host.groups and bool(settings.milvus_root_secret())


def gpu_node_preflight():
    # Reads only: a host that cannot be a node (GPUs, PCIe width, Secure Boot, disk, headers) is
    # stopped here, before the first package is installed on it.
    preflight.gpu_node(name="Preflight: GPU node", gpu_count=settings.gpu_count, device_id=settings.gpu_pci_device_id,
                       min_link_width=settings.pcie_min_link_width,
                       module_signing=settings.secure_boot_module_signing,
                       docker_data_root=settings.docker_data_root(), min_free_gib=settings.preflight_disk_gib(),
                       kernel_headers=settings.nvidia_kernel_headers, pci_dump_file=settings.pci_dump_file)


def milvus_users_args() -> dict:
    """Milvus's users as this host's data declares them (operations/milvus_users.py)."""
    app_collections = sorted({n.settings.app_collection for n in fleet.nodes if n.settings.app_image})
    return dict(address=fleet.hosts[host.name].milvus_address, port=settings.milvus_port,
                root_password_file=settings.milvus_root_secret(),
                app_user=settings.milvus_app_user if app_collections else None,
                app_password_file=settings.milvus_app_secret(), collections=app_collections,
                health_port=settings.milvus_health_port)


def milvus_users_ahead():
    # The Milvus users check is a child process on the control host (about a second): started beside
    # the facts' round trip, it is done when the plan gets to it, instead of holding the plan there.
    milvus_users.ask_ahead(**milvus_users_args())


# --- every host (operations/base_role.py) ---------------------------------------------------------
# The deploy lock (one run of deploy.py per host at a time, from plan to end: taken before any fact
# is read, released when this run's SSH connection closes), the facts this host's last plans asked
# in one round trip, the supported-OS preflight, a GPU node's own preflight, the base packages.
every_host_first(settings, role_preflight=gpu_node_preflight if "gpu_nodes" in host.groups else None,
                 reads_ahead=milvus_users_ahead if sets_milvus_users else None)

# --- GPU nodes: driver, Docker with the Container Toolkit, NCCL ----------------------------------
if "gpu_nodes" in host.groups:
    # Refuses, before anything runs, a node another rollout holds, and any step below that would
    # interrupt live replicas outside a rollout (operations/serving_gate.py).
    gate = ServingGate(allow=settings.allow_serving_disruption, rollout_id=settings.rollout_id)
    nvidia.cuda_repository(name="NVIDIA CUDA repository", apt_mirror=settings.apt_mirror,
                           key_name=settings.nvidia_repo_key_name,
                           key_fingerprint=settings.nvidia_repo_key_fingerprint)
    nvidia.no_unattended_upgrades(name="Keep unattended-upgrades off NVIDIA packages",
                                  patterns=settings.unattended_upgrades_blacklist)
    nouveau = nvidia.blacklist_nouveau(name="Blacklist nouveau")
    server.shell(name="Rebuild initramfs without nouveau", _if=nouveau.did_change,
                 commands=["if command -v update-initramfs >/dev/null; then update-initramfs -u; fi"])
    driver = nvidia.driver(name="NVIDIA driver (open modules)", version=settings.nvidia_driver_version,
                           packages=settings.nvidia_driver_packages, revision=settings.nvidia_driver_package_revision,
                           kernel_modules=settings.nvidia_kernel_modules, kernel_headers=settings.nvidia_kernel_headers)
    gate.check(driver, "NVIDIA driver (open modules)")
    # Right after the driver: nothing below needs a loaded driver before this reboot loads it
    # (persistenced, the toolkit's hook and every GPU container fail with "driver not loaded").
    reboot = nvidia.reboot_if_driver_stale(name="Reboot if the loaded driver is not the pinned one",
                                           version=settings.nvidia_driver_version,
                                           proc_version_path=settings.nvidia_proc_version_path, _serial=True)
    gate.check(reboot, "Reboot")
    systemd.service(name="NVIDIA persistence daemon", service="nvidia-persistenced", running=True, enabled=True)

    engine = distro_packages.install(
        name="Docker engine", packages={settings.docker_engine_package: settings.docker_engine_min_version},
        preferences_name="gpufleet-docker")
    gate.check(engine, "Docker engine")
    systemd.service(name="Docker running", service="docker", running=True, enabled=True)
    toolkit = nvidia.container_toolkit(name="NVIDIA Container Toolkit", version=settings.container_toolkit_version)
    daemon_json = docker_daemon.daemon_config(name="Docker daemon.json: nvidia runtime",
                                       wanted={**settings.docker_daemon_config, "runtimes": docker_daemon.NVIDIA_RUNTIME})
    gate.check(toolkit, "NVIDIA Container Toolkit")
    gate.check(daemon_json, "Docker daemon.json (restarts Docker)")
    # Docker finds the toolkit's hook and reads daemon.json only at start-up.
    systemd.service(name="Restart Docker for the toolkit", service="docker", restarted=True,
                    _if=any_changed(toolkit, daemon_json))

    # Monitoring before any GPU container: a unit change later needs a daemon-reload, which is
    # refused while GPU containers run (operations/docker_daemon.py). The exporters listen on the private
    # address only, unless the data says otherwise.
    metrics_address = settings.metrics_listen_address or fleet.hosts[host.name].address
    # Its install reloads systemd: refused by the operation itself under live GPU containers.
    node_exporter.node_exporter(name="node_exporter (host and drift metrics)", listen_address=metrics_address,
                                port=settings.node_exporter_port, min_version=settings.node_exporter_min_version)
    monitoring.gpu_monitor(name="gpu_monitor (NVML metrics)", gpu_count=settings.gpu_count,
                           requirements=settings.gpu_monitor_requirements,
                           pip_install_args=settings.monitor_pip_install_args, port=settings.gpu_monitor_port,
                           listen_address=metrics_address, interval_s=settings.gpu_monitor_interval_s)
    monitoring.dcgm_exporter(name="DCGM exporter", image=settings.dcgm_exporter_image, gpu_count=settings.gpu_count,
                             port=settings.dcgm_exporter_port, listen_address=metrics_address)

    nvidia.nccl(name="NCCL pin on the host", version=settings.nccl_version, cuda_version=settings.nccl_cuda_version)

# --- the Milvus host (group vector_db): a GPU node, or a host of its own ---------------------------
# Before every node's RAG app: the apps index into it when they start (pyinfra runs each operation
# on every host before the next one).
if "vector_db" in host.groups:
    if "gpu_nodes" not in host.groups:
        # `gpufleet rollout` locks it too while it backs Milvus up and updates it: nobody else may change it.
        refuse_other_rollouts(settings.rollout_id)
        # A host of its own: the distribution's Docker, no GPU runtime. live-restore keeps Milvus
        # running while dockerd restarts (a daemon.json change, a patch-release upgrade).
        distro_packages.install(
            name="Docker engine", packages={settings.docker_engine_package: settings.docker_engine_min_version},
            preferences_name="gpufleet-docker")
        db_daemon_json = docker_daemon.daemon_config(name="Docker daemon.json: live-restore",
                                                     wanted={**settings.docker_daemon_config, "live-restore": True})
        systemd.service(name="Docker running", service="docker", running=True, enabled=True)
        systemd.service(name="Restart Docker for daemon.json", service="docker", restarted=True,
                        _if=db_daemon_json.did_change)
        node_exporter.node_exporter(name="node_exporter (host and drift metrics)",
                                    listen_address=settings.metrics_listen_address or fleet.hosts[host.name].address,
                                    port=settings.node_exporter_port, min_version=settings.node_exporter_min_version)
    milvus_address = settings.milvus_bind_address or fleet.hosts[host.name].address
    milvus.standalone(name=f"Milvus ({settings.milvus_mode})", mode=settings.milvus_mode,
                      image=settings.milvus_image, address=milvus_address, port=settings.milvus_port,
                      health_port=settings.milvus_health_port, etcd_image=settings.milvus_etcd_image,
                      minio_image=settings.milvus_minio_image, volume=settings.milvus_volume,
                      etcd_volume=settings.milvus_etcd_volume, minio_volume=settings.milvus_minio_volume,
                      network=settings.milvus_network,
                      credentials_generation=settings.milvus_minio_credentials_generation,
                      seccomp_unconfined=settings.milvus_seccomp_unconfined,
                      root_password_file=settings.milvus_root_secret(),  # None: authentication off
                      # Recreating a running Milvus goes through the rollout (backup, row check) or a window.
                      allow_interruption=settings.allow_serving_disruption or settings.rollout_id is not None)
    milvus.ready(name="Milvus healthy (/healthz)", address=milvus_address,
                 health_port=settings.milvus_health_port, timeout=settings.milvus_ready_timeout_s)
    if sets_milvus_users:
        # Root's password and the app's user live in Milvus's metadata: set through its API, from the
        # control host (operations/milvus_users.py), once Milvus answers.
        milvus_users.users(name="Milvus users: root and the RAG app's", **milvus_users_args())

# --- GPU nodes: the RAG app, then the vLLM replicas -----------------------------------------------
if "gpu_nodes" in host.groups:
    node = fleet.hosts[host.name]
    # The app first: it does not need the replicas (it asks vLLM per query), and a rollout that
    # recreates a replica then ends its drained node's deploy when the replica is ready, instead of
    # re-reading the app's state while the node is out of rotation.
    if settings.app_image:
        lb = fleet.load_balancers[0] if fleet.load_balancers else None
        replica_address = node.reached_at(settings.vllm_bind_address)
        vllm_address, vllm_port = app.vllm_url(
            settings.app_vllm_target, replica_address, settings.replicas_declared()[0].port,
            lb.address if lb else None, lb.settings.lb_port if lb else 80)
        app_address = settings.app_bind_address or node.address
        db = fleet.vector_db  # validated: present wherever the app is on
        app.container(name="RAG app", image=settings.app_image, address=app_address, port=settings.app_port,
                      vllm_address=vllm_address, vllm_port=vllm_port, model=settings.vllm_served_model_name,
                      milvus_address=db.milvus_address, milvus_port=db.settings.milvus_port,
                      collection=settings.app_collection, top_k=settings.app_top_k, env=settings.app_env,
                      api_key_file=settings.vllm_api_key_file,
                      # The Milvus host's settings hold Milvus's users (validated: a password file when auth is on).
                      milvus_user=db.settings.milvus_app_user if db.settings.milvus_app_secret() else None,
                      milvus_password_file=db.settings.milvus_app_secret())
        app.ready(name="RAG app healthy (/health)", address=app_address, port=settings.app_port,
                  timeout=settings.app_ready_timeout_s)

    vllm.image(name="vLLM image (NCCL pinned inside)", **vllm_image_args(settings))
    vllm_tag = vllm.image_tag(settings.vllm_image, settings.nccl_version, settings.pip_install_args)
    # Before any replica that serves them: verified, so the replicas run offline.
    weights.stage(name="Model weights staged", **weights_args(settings))
    # First: a removed replica frees its GPUs and port for the ones below.
    retired = vllm.retire_replicas(name="vLLM replicas removed from the inventory",
                                   keep=[f"vllm-{r.name}" for r in replicas_of(node)],
                                   stop_timeout=settings.vllm_stop_timeout_effective(),
                                   cache_dir=settings.vllm_cache_dir)
    gate.check(retired, "vLLM replicas removed from the inventory (stop and remove)", kind=REPLICAS)
    for r in host.loop(replicas_of(node)):
        replica = vllm.replica(
            name=f"vLLM replica {r.name}", container=f"vllm-{r.name}", image=vllm_tag, **replica_model_args(settings),
            served_model_name=settings.vllm_served_model_name, port=r.port, gpus=r.gpus,
            bind_address=settings.vllm_bind_address or r.address,
            tensor_parallel_size=settings.vllm_tensor_parallel_size, max_model_len=settings.vllm_max_model_len,
            gpu_memory_utilization=settings.vllm_gpu_memory_utilization, quantization=settings.vllm_quantization,
            extra_args=settings.vllm_extra_args, env=settings.vllm_env,
            shm_size=settings.vllm_shm_size,
            hf_cache_dir=settings.vllm_hf_cache_dir, cache_dir=settings.vllm_cache_dir,
            hf_token_file=settings.vllm_hf_token_file, api_key_file=settings.vllm_api_key_file, shutdown_timeout=settings.vllm_shutdown_timeout,
            stop_timeout=settings.vllm_stop_timeout_effective(), restart=settings.vllm_restart_policy)
        gate.check(replica, f"vLLM replica {r.name} (recreate)", kind=REPLICAS)
        vllm.ready(name=f"vLLM replica {r.name} ready", container=f"vllm-{r.name}",
                   url=f"http://{r.address}:{r.port}", served_model_name=settings.vllm_served_model_name,
                   timeout=settings.vllm_ready_timeout, api_key=settings.vllm_api_key_file is not None,
                   _if=replica.did_change)

    if settings.vllm_model_source == "url" and settings.vllm_model_sha256:
        weights.retain(name="Staged model archives no replica needs removed", models_dir=settings.vllm_models_dir,
                       keep=settings.vllm_model_sha256)

# --- load balancers: nginx over every replica in the inventory, Prometheus over every target ------
if "lb" in host.groups:
    distro_packages.install(name="nginx and Prometheus",
                            packages={"nginx": settings.lb_nginx_min_version,
                                      "prometheus": settings.prometheus_min_version},
                            preferences_name="gpufleet-lb")
    # A maintenance window recreates the replicas in this run: a member whose port moved moves now.
    loadbalancer.nginx(name="nginx: a member per vLLM replica and per RAG app", **lb_args(fleet, host.name),
                       move_at_once=settings.allow_serving_disruption)
    systemd.service(name="nginx running", service="nginx", running=True, enabled=True)
    monitoring.alertmanager(name="Alertmanager: webhook receiver", **alertmanager_args(fleet, host.name))
    monitoring.prometheus(name="Prometheus: scrape jobs from the inventory", **prometheus_args(fleet, host.name))
    systemd.service(name="Prometheus running", service="prometheus", running=True, enabled=True)
    node_exporter.node_exporter(name="node_exporter (host and drift metrics)",
                                listen_address=settings.metrics_listen_address or fleet.hosts[host.name].address,
                                port=settings.node_exporter_port, min_version=settings.node_exporter_min_version)
    loadbalancer.tls_expiry_metric(name="TLS certificate expiry for Prometheus", cert_file=settings.lb_tls_cert_file)
