"""Helpers shared by several operation modules."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import jinja2

# Strict: a name the template uses and the caller did not pass is an error, never an empty string.
_TEMPLATES = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


@functools.lru_cache(maxsize=32)
def _compiled(text: str) -> jinja2.Template:
    return _TEMPLATES.from_string(text)


def render_file(path: Path, **values) -> str:
    """A jinja2 template file (files/) rendered strictly, its final newline kept.

    The file is read at every call and compiled once per distinct text: a plan renders nginx.conf
    and Prometheus's files for every host that gets them (and a rollout plans many times), and
    compiling cost more than rendering.

    >>> import tempfile
    >>> template = Path(tempfile.mkdtemp()) / "t.j2"
    >>> _ = template.write_text("listen {{ port }};")
    >>> render_file(template, port=8080)
    'listen 8080;'
    >>> render_file(template)
    Traceback (most recent call last):
    ...
    jinja2.exceptions.UndefinedError: 'port' is undefined
    >>> _ = template.write_text("listen {{ port }} ssl;")  # an edited file is compiled again
    >>> render_file(template, port=8443)
    'listen 8443 ssl;'
    """
    return _compiled(path.read_text()).render(**values)


def put_text(dest: str, text: str, mode: str = "644"):
    """Yield the commands that make root-owned `dest` hold `text` (nothing when it already does).

    Operations call it with ``yield from put_text(...)``; it is pyinfra's ``files.put`` on an
    in-memory source, so the content is compared by hash on the host.
    """
    from pyinfra.operations import files

    yield from files.put._inner(src=StringIO(text), dest=dest, user="root", group="root", mode=mode)


def sudo_arguments(host) -> dict[str, bool]:
    """``{"_sudo": True}`` when the host's data asks for sudo, else ``{}``.

    Operations get ``_sudo`` from host data through pyinfra; raw ``host.run_shell_command`` calls
    (callbacks after a reboot, readiness probes, the rollout's steps) do not, so they pass this.

    **Example:** ``host.run_shell_command(StringCommand("docker ps"), **sudo_arguments(host))``
    """
    return {"_sudo": True} if host.data.get("_sudo") else {}


@dataclass(frozen=True)
class Staged:
    """A config file the swap script replaces: the new copy uploaded beside the live one, the old kept.

    + new: where the new copy was uploaded (``staged``) for the swap
    + live: the file the service reads
    + old: where the live file is kept until the service runs the new one
    + staged: a new copy is in ``new`` (False: the file stays, only its leftover ``old`` copy is handled)
    + optional: the live file may be absent; a roll-back then removes it again
    """

    new: str
    live: str
    old: str
    staged: bool = True
    optional: bool = False


def swap_script(files: list[Staged], checks: list[str], reload: str, probe: str, tries: int, interval: str,
                failed: str, start: str = "") -> str:
    """Shell text: check the new files, swap them in, reload, wait until the service runs them; roll back.

    The one write -> test -> swap -> reload -> roll-back transaction of the lb's nginx, Prometheus
    and Alertmanager (operations/loadbalancer.py, operations/monitoring.py), as dstack's
    ``write_conf`` with the test first.

    + files: the config files, in the order they are swapped in (rolled back in reverse)
    + checks: shell lines run first; each removes the uploaded copies and exits 1 when it rejects one
    + reload: the command that makes the service read its files (``systemctl reload-or-restart nginx``)
    + probe: shell run every ``interval`` seconds, up to ``tries`` times, after ``reload``: it sets
      ``ok=1`` and breaks when the service runs the new files
    + failed: what did not happen, for the roll-back message
    + start: shell run just before ``reload`` (``since=$(date +%s)`` for a probe that compares times)

    With nothing staged the script reloads and waits; a roll-back then puts back a kept copy that
    a run cut off after its swap left behind (the last config that was live before it).

    Each step stops the script when it fails (no ``set -e``: explicit ``||``): a live file that
    cannot be copied aside (a full disk) ends it before anything is swapped, its partial copy and
    the uploaded files removed; a new file that cannot be moved in skips the reload and rolls
    back what was moved.
    """
    steps = ["set -u", *checks]
    staged = [f for f in files if f.staged]
    uploaded = " ".join(f.new for f in staged)
    # Every live file is copied aside before any is replaced: a copy that fails leaves all of them as they were.
    for f in staged:
        keep = f"else rm -f {f.old}; " if f.optional else ""
        steps.append(f"if [ -e {f.live} ]; then cp -p {f.live} {f.old} || {{ rm -f {f.old} {uploaded}; "
                     f'echo "gpufleet: cannot copy {f.live} to {f.old}, nothing changed" >&2; exit 1; }}; {keep}fi')
    kept = [f for f in reversed(files) if f.staged or not f.optional]
    moved = ""
    if staged:
        # A new file that cannot be moved in: no reload, and what was moved goes back (below).
        steps.append(f"moved=0; if {' && '.join(f'mv -f {f.new} {f.live}' for f in staged)}; then moved=1; "
                     'else echo "gpufleet: cannot move the new files in" >&2; fi')
        moved = '[ "$moved" = 1 ] && '
    steps += [
        f"{start}; ok=0" if start else "ok=0",
        f"if {moved}{reload}; then for i in $(seq 1 {int(tries)}); do {probe}; sleep {interval}; done; fi",
        f'if [ "$ok" = 1 ]; then rm -f {" ".join(f.old for f in kept)}; exit 0; fi',
        f'echo "gpufleet: {failed}; rolling back" >&2',
    ]
    back = [f for f in reversed(files) if f.staged] or [f for f in reversed(files) if not f.optional]
    if len(back) == 1 and not back[0].optional:
        # One file that was there before: reload only when it was put back.
        steps.append(f"if [ -e {back[0].old} ]; then mv -f {back[0].old} {back[0].live}; {reload} || true; fi")
    else:
        steps += [f"if [ -e {f.old} ]; then mv -f {f.old} {f.live}; "
                  + (f"else rm -f {f.live}; fi" if f.optional else "fi") for f in back]
        steps.append(f"{reload} || true")
    steps.append("exit 1")
    return "\n".join(steps)
