"""The one deploy: ``pyinfra inventory/prod.py deploy.py`` (or inventory/lab.py).

Every host's data is validated first (gpufleet.settings); a bad inventory stops the run before
any operation is added for any host. Then each host gets the roles of its groups, in order:
every host: preflight, base packages; ``gpu_nodes``: the GPU stack; ``lb``: the load balancer.
"""

from pyinfra import host, inventory

from gpufleet.deploying import fleet_for
from operations import apt, preflight

fleet = fleet_for(inventory)
settings = fleet.hosts[host.name].settings

# --- every host -----------------------------------------------------------------------------------
preflight.supported_os(name="Preflight: supported OS", supported=settings.supported_os)
apt.packages(name="Base packages", packages=settings.base_packages)
