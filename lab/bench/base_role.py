"""The base role alone, for `make bench-scale` (gpufleet/bench_scale.py): what deploy.py runs on
every host before any role, with the same operations and the same settings from group_data.

The scale bench's light stand-in hosts (sshd, apt and systemd; no Docker, no vLLM) are in no role
group, which deploy.py's fleet validation refuses on purpose (a host in none gets no role), so
this file builds each host's settings itself (gpufleet.settings.validate_host_data) and runs
deploy.py's "every host" block: the deploy lock, the remembered facts in one round trip, the
supported-OS preflight and the base packages. Keep it in step with deploy.py.
"""

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError

from gpufleet.settings import format_issues, validate_host_data
from operations import pinned_apt, preflight
from operations.deploy_lock import take_deploy_lock
from operations.fact_prefetch import prefetch_facts

settings, issues = validate_host_data(host.name, host.data.dict())
if settings is None:
    raise PyinfraError(format_issues(issues))
take_deploy_lock("pyinfra deploy (bench-scale)", wait_s=settings.deploy_lock_wait_s)
prefetch_facts()
preflight.supported_os(name="Preflight: supported OS", supported=settings.supported_os)
pinned_apt.packages(name="Base packages", packages=settings.base_packages)
