"""The ``gpufleet`` command: thin click wrappers; all logic lives in the library modules."""

from __future__ import annotations

# pyinfra's API needs gevent's monkey-patching before anything opens a socket (pyinfra_cli does the
# same); doing it first here keeps `gpufleet` and `pyinfra` behaving alike.
from gevent import monkey

monkey.patch_all()

import click  # noqa: E402

from gpufleet.commands import inventory as inventory_cmd  # noqa: E402
from gpufleet.commands import lab as lab_cmd  # noqa: E402
from gpufleet.commands import validate as validate_cmd  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Provision and operate dual-RTX-5090 vLLM hosts with pyinfra."""


main.add_command(inventory_cmd.inventory)
main.add_command(validate_cmd.validate)
main.add_command(lab_cmd.lab)

# Commands contributed by optional modules register themselves only if present.
for _module in ("plan", "verify", "drift", "rollout", "doctor", "bench"):
    try:
        _mod = __import__(f"gpufleet.commands.{_module}", fromlist=[_module])
    except ModuleNotFoundError as exc:  # pragma: no cover - only while a command is being built
        if exc.name != f"gpufleet.commands.{_module}":
            raise
    else:
        main.add_command(getattr(_mod, _module))
