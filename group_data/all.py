"""Every version pin in the fleet, and the production choices that go with them.

Change a pin here and the next deploy (or rollout) moves every host to it. Values are exact:
gpufleet refuses wildcards and ranges, because a pin that matches several versions drifts. The
distribution's own packages (docker.io, nginx, prometheus) are the exception: their value is a
security floor, written as one exact version (see below).

Tunables (ports, context length, memory utilisation, tensor parallel size) are not restated here:
each has its one default in its component's settings module (gpufleet/settings_*.py). Set one
here only where the fleet deliberately differs from that default.
"""

from operations.ssh_no_delay import no_delay_transport

# pyinfra: verify SSH host keys. The lab writes its own known_hosts file (inventory/lab.py).
ssh_strict_host_key_checking = "yes"
# pyinfra's SSH connections with TCP_NODELAY: without it every command waits ~45 ms on the host's
# delayed ACK (operations/ssh_no_delay.py). Data that sets its own dict replaces this one: keep
# transport_factory in it (`gpufleet validate` warns when a host lacks it).
ssh_paramiko_connect_kwargs = {"transport_factory": no_delay_transport}

# --- NVIDIA stack -------------------------------------------------------------------------------
# Blackwell (RTX 5090, compute capability 12.0) needs the open kernel modules and branch >= 570.
nvidia_driver_branch = 580
nvidia_driver_version = "580.95.05"
nvidia_kernel_modules = "open"
nvidia_driver_packages = ["nvidia-open"]  # CUDA repository: the open-kernel-module driver
container_toolkit_version = "1.17.8-1"
# NCCL on the host, as libnccl2/libnccl-dev "<nccl_version>-1+cuda<nccl_cuda_version>".
# The NCCL vLLM actually loads is pinned inside the vLLM image (files/Dockerfile.vllm_rtx5090).
nccl_version = "2.27.7"
nccl_cuda_version = "12.9"

# --- Packages from the distribution's archive: security floors, not exact builds ---------------
# A Debian mirror keeps only the newest build of each suite, so an exact pin breaks a fresh deploy
# the day a security update lands. Each value is a floor: this build or a newer one of the same
# upstream version (operations/distro_packages.py, README "Version pins"). Installed builds are
# held; `gpufleet drift` reports a host behind the archive's security build as a `security` finding.
# On Ubuntu, set the floors `apt-cache policy <package>` shows for the release the fleet runs.

# --- Docker -------------------------------------------------------------------------------------
# The distribution's engine (no extra repository).
docker_engine_package = "docker.io"
docker_engine_min_version = "20.10.24+dfsg1-1+deb12u1+b6"
# Merged into /etc/docker/daemon.json with the nvidia runtime; other keys on a host are kept.
docker_daemon_config = {"log-driver": "json-file", "log-opts": {"max-size": "100m", "max-file": "3"}}

# --- load balancer hosts (Debian 12's packages, floors as above) --------------------------------
lb_nginx_min_version = "1.22.1-9+deb12u11"
prometheus_min_version = "2.42.0+ds-5+deb12u1"
node_exporter_min_version = "1.5.0-1+b6"  # prometheus-node-exporter, every host

# --- serving ------------------------------------------------------------------------------------
# A CUDA 12.9 build with sm_120 kernels and --shutdown-timeout (vLLM >= 0.18). The image gpufleet
# runs is built on it with NCCL pinned (files/Dockerfile.vllm_rtx5090); the build fails if the NCCL
# vLLM loads is not nccl_version, or if torch has no sm_120 kernels.
vllm_image = "vllm/vllm-openai:v0.21.0"
# The model, and what moves with it when it changes: its name to clients and its weights' format.
# Staged on each node from the hub before any replica starts, verified, served offline
# (operations/weights.py). An air-gapped site: vllm_model_source = "url", vllm_model_url and
# vllm_model_sha256 of an archive on its own mirror.
vllm_model = "Qwen/Qwen3-32B-AWQ"
vllm_served_model_name = "qwen3-32b-awq"
vllm_quantization = "awq_marlin"
# Milvus runs standalone (etcd + MinIO + Milvus, as Milvus's official compose): these three images.
milvus_image = "milvusdb/milvus:v2.6.11"
milvus_etcd_image = "quay.io/coreos/etcd:v3.5.25"
milvus_minio_image = "minio/minio:RELEASE.2024-05-28T17-19-04Z"
# Milvus authentication is on (gpufleet/settings_data.py): root's password and the RAG app's user's
# come from these control-side files (one random line each, e.g. `openssl rand -hex 24`, mode 0600).
# A fleet without them does not validate; milvus_authentication = False runs Milvus without, said out loud.
milvus_root_password_file = "~/.config/gpufleet/milvus-root-password"
milvus_app_password_file = "~/.config/gpufleet/milvus-app-password"

# --- monitoring on GPU nodes ---------------------------------------------------------------------
# NVIDIA's DCGM exporter (4.5.3 = DCGM, 4.8.2 = the exporter); the distroless build has no shell.
dcgm_exporter_image = "nvcr.io/nvidia/k8s/dcgm-exporter:4.5.3-4.8.2-distroless"
# gpu_monitor's venv (files/gpu_monitor.py): the same exact pins as pyproject.toml, where its unit
# tests run them.
gpu_monitor_requirements = ["nvidia-ml-py==13.615.71", "prometheus-client==0.23.1"]
# What `gpufleet verify` runs with --gpus all to prove the toolkit (`nvidia-smi -L` in it). A tag:
# it serves nothing and keeps no state; pin it by digest (ubuntu@sha256:...) where a mirror keeps one.
verify_toolkit_image = "ubuntu:24.04"

# --- base system --------------------------------------------------------------------------------
# Installed on every host by deploy.py ("Base packages", operations/pinned_apt.py); the GPU-node
# preflight reads the bus with pciutils, and the driver check reads /proc/modules (kmod loads them).
base_packages = ["ca-certificates", "curl", "gnupg", "jq", "kmod", "pciutils", "lsb-release"]
