"""The base role alone, for `make bench-scale` (gpufleet/bench_scale.py): what deploy.py runs on
every host before any role, with the same operations and the same settings from group_data.

The scale bench's light stand-in hosts (sshd, apt and systemd; no Docker, no vLLM) are in no role
group, which deploy.py's fleet validation refuses on purpose (a host in none gets no role), so
this file builds each host's settings itself (gpufleet.settings.validate_host_data) and calls the
function deploy.py calls on every host (operations/base_role.every_host_first): the deploy lock,
the remembered facts in one round trip, the supported-OS preflight and the base packages.
"""

from pyinfra import host
from pyinfra.api.exceptions import PyinfraError

from gpufleet.settings import format_issues, validate_host_data
from operations.base_role import every_host_first

settings, issues = validate_host_data(host.name, host.data.dict())
if settings is None:
    raise PyinfraError(format_issues(issues))
every_host_first(settings, what="pyinfra deploy (bench-scale)")
