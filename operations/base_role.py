"""What every host gets first, before any role: one function for deploy.py and the scale bench.

deploy.py and lab/bench/base_role.py (``make bench-scale``: the base role alone, on stand-in
hosts in no role group) both call :func:`every_host_first`, so the bench measures exactly what a
deploy runs on every host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pyinfra import host, state

from operations import pinned_apt, preflight
from operations.deploy_lock import DeployLock
from operations.fact_prefetch import prefetch_facts

if TYPE_CHECKING:
    from gpufleet.settings import HostSettings


def every_host_first(settings: HostSettings, role_preflight: Callable[[], None] | None = None,
                     what: str | None = None, reads_ahead: Callable[[], None] | None = None) -> None:
    """Call in a deploy file, for the current host, before any role's operations:

    1. the deploy lock (operations/deploy_lock.py): before any fact is read; ``what`` names the run
       in the holder record (default: ``rollout <id>`` in a rollout, else ``pyinfra deploy``);
    2. the facts this host's last plans asked, in one round trip (operations/fact_prefetch.py)
       that the lock leads (no round trip of the lock's own),
       with ``reads_ahead()``, if given, beside it: it starts the role's slow reads from the
       control host (``fact_prefetch.read_ahead``), which then run while the plan is made (their
       commands on the host wait for the lock);
    3. the supported-OS preflight ("Preflight: supported OS");
    4. ``role_preflight()``, if given: the host's role's own preflight (reads only), so that a host
       that cannot take its role is stopped before the first package is installed on it;
    5. the base packages ("Base packages").

    + settings: the host's validated settings (gpufleet.settings.HostSettings)
    + role_preflight: a function adding the role's preflight operations, or None
    + what: the run, as the deploy lock's holder record names it
    + reads_ahead: a function starting the role's slow control-side reads, or None

    **Example** (deploy.py)::

        def gpu_node_preflight():
            preflight.gpu_node(name="Preflight: GPU node", gpu_count=settings.gpu_count, ...)

        every_host_first(settings, role_preflight=gpu_node_preflight if "gpu_nodes" in host.groups else None)
    """
    if what is None:
        what = f"rollout {settings.rollout_id}" if settings.rollout_id else "pyinfra deploy"
    # The lock leads the prefetch's one command: taken before any read, without a round trip of its own.
    prefetch_facts(reads_ahead, first=DeployLock(state, host, what, wait_s=settings.deploy_lock_wait_s))
    preflight.supported_os(name="Preflight: supported OS", supported=settings.supported_os)
    if role_preflight is not None:
        role_preflight()
    pinned_apt.packages(name="Base packages", packages=settings.base_packages)
