"""The one deploy: ``pyinfra inventory/prod.py deploy.py`` (or inventory/lab.py).

Every host's data is validated first (gpufleet.settings); a bad inventory stops the run before
any operation is added for any host. Then each host gets the roles of its groups, in order:
every host: preflight, base packages; ``gpu_nodes``: the GPU stack; ``lb``: the load balancer.
"""

from pyinfra import host, inventory
from pyinfra.operations import server, systemd
from pyinfra.operations.util import any_changed

from gpufleet.deploying import fleet_for
from operations import apt, docker, nvidia, preflight

fleet = fleet_for(inventory)
settings = fleet.hosts[host.name].settings

# --- every host -----------------------------------------------------------------------------------
preflight.supported_os(name="Preflight: supported OS", supported=settings.supported_os)
apt.packages(name="Base packages", packages=settings.base_packages)

# --- GPU nodes: driver, Docker with the Container Toolkit, NCCL ----------------------------------
if "gpu_nodes" in host.groups:
    nvidia.cuda_repository(name="NVIDIA CUDA repository", apt_mirror=settings.apt_mirror,
                           key_name=settings.nvidia_repo_key_name)
    nvidia.no_unattended_upgrades(name="Keep unattended-upgrades off NVIDIA packages",
                                  patterns=settings.unattended_upgrades_blacklist)
    nouveau = nvidia.blacklist_nouveau(name="Blacklist nouveau")
    server.shell(name="Rebuild initramfs without nouveau", _if=nouveau.did_change,
                 commands=["if command -v update-initramfs >/dev/null; then update-initramfs -u; fi"])
    nvidia.driver(name="NVIDIA driver (open modules)", version=settings.nvidia_driver_version,
                  packages=settings.nvidia_driver_packages, revision=settings.nvidia_driver_package_revision,
                  kernel_modules=settings.nvidia_kernel_modules, kernel_headers=settings.nvidia_kernel_headers)
    systemd.service(name="NVIDIA persistence daemon", service="nvidia-persistenced", running=True, enabled=True)

    engine = apt.packages(name="Docker engine",
                          packages={settings.docker_engine_package: settings.docker_engine_version},
                          hold=settings.docker_engine_version is not None)
    systemd.service(name="Docker running", service="docker", running=True, enabled=True)
    toolkit = nvidia.container_toolkit(name="NVIDIA Container Toolkit", version=settings.container_toolkit_version)
    daemon_json = docker.daemon_config(name="Docker daemon.json: nvidia runtime",
                                       wanted={**settings.docker_daemon_config, "runtimes": docker.NVIDIA_RUNTIME})
    # Docker finds the toolkit's hook and reads daemon.json only at start-up.
    systemd.service(name="Restart Docker for the toolkit", service="docker", restarted=True,
                    _if=any_changed(toolkit, daemon_json))

    nvidia.nccl(name="NCCL pin on the host", version=settings.nccl_version, cuda_version=settings.nccl_cuda_version)
    nvidia.reboot_if_driver_stale(name="Reboot if the loaded driver is not the pinned one",
                                  version=settings.nvidia_driver_version,
                                  proc_version_path=settings.nvidia_proc_version_path, _serial=True)
