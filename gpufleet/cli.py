"""The ``gpufleet`` command: thin click wrappers; all logic lives in the library modules."""

from __future__ import annotations

# pyinfra's API needs gevent's monkey-patching before anything opens a socket (pyinfra_cli does the
# same); doing it first here keeps `gpufleet` and `pyinfra` behaving alike.
from gevent import monkey

monkey.patch_all()

import click  # noqa: E402

from gpufleet.commands import backup as backup_cmd  # noqa: E402
from gpufleet.commands import bench as bench_cmd  # noqa: E402
from gpufleet.commands import doctor as doctor_cmd  # noqa: E402
from gpufleet.commands import drift as drift_cmd  # noqa: E402
from gpufleet.commands import inventory as inventory_cmd  # noqa: E402
from gpufleet.commands import lab as lab_cmd  # noqa: E402
from gpufleet.commands import plan as plan_cmd  # noqa: E402
from gpufleet.commands import rollout as rollout_cmd  # noqa: E402
from gpufleet.commands import validate as validate_cmd  # noqa: E402
from gpufleet.commands import verify as verify_cmd  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Provision and operate dual-RTX-5090 vLLM hosts with pyinfra."""


# Every command the CLI has, one line each (gpufleet/commands/<name>.py).
for command in (inventory_cmd.inventory, validate_cmd.validate, plan_cmd.plan, verify_cmd.verify, drift_cmd.drift,
                rollout_cmd.rollout, backup_cmd.backup, backup_cmd.restore, doctor_cmd.doctor, bench_cmd.bench,
                lab_cmd.lab):
    main.add_command(command)
