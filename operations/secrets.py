"""Secret files on a host (tokens, API keys): compared by digest, written atomically, never shown.

pyinfra's ``files.put`` is the wrong tool for a secret: with ``--diff`` it prints the new content
and reads the old one back from the host to print it too; it uploads with the SFTP server's
default mode and chmods afterwards (a window, forever if the run is interrupted); and with
``_sudo`` it stages the file in /tmp, where it stays if the copy fails.

Here, instead:

- **compare by digest**: the sha256 of the wanted content against the host file's sha256
  (pyinfra's ``files.Sha256File``), and its owner and mode (``files.File``). The host file is
  never read back, so nothing old can be shown either.
- **one write command, content on stdin**: the content goes base64-encoded on the command's
  standard input, never on a command line (``ps``, ``docker inspect``, pyinfra's ``-v`` and
  ``--debug`` print commands, never their input; pyinfra's ``-vvv`` prints output, and the
  command prints none). The command runs without a pty, so nothing is echoed back.
- **atomic, final mode from the first byte**: ``umask 077``, ``mktemp`` *in the target's own
  directory* (never /tmp), decode into it, ``chown`` and ``chmod`` to the final owner and mode,
  then ``mv`` over the target. Readers see the old file or the new one, never a partial or a
  world-readable one. If any step fails (or the command is interrupted) a trap removes the
  temporary file; only a SIGKILL of the remote shell can leave one, and that one is
  ``.<name>.gpufleet-XXXXXX`` beside the target, root-only.
- **``--diff``** says "content differs (secret, not shown)"; drift (gpufleet.drift) says the same
  from :class:`SecretWrite`'s ``secret_dest``/``reason``.

Operations take *control-side file paths*, never values: pyinfra shows an operation's arguments
(its auto-generated name, ``--json`` "args", ``--debug-operations``). The values are read on the
control host when the operation runs. The digest compared is a plain sha256 of the file's content:
it is shown by ``-vvv`` (fact output), so a key must be a random string, not a guessable word.
"""

from __future__ import annotations
from operations.digests import short_digest

import base64
import hashlib
import posixpath
import re
import shlex
from pathlib import Path

from pyinfra import host, logger, state
from pyinfra.api import OperationError, OperationValueError, StringCommand, operation
from pyinfra.facts.files import File, Sha256File

SECRETS_DIR = "/etc/gpufleet"
TEMP_SUFFIX = ".gpufleet-XXXXXX"  # mktemp template: .<name>.gpufleet-XXXXXX beside the target
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODE = re.compile(r"0?[0-7]{3}")
# What looks like a secret, by name and by value: doctor's container facts mask such environment values,
# and gpufleet's settings refuse them as data and redact them from every message. Names (upper-cased) are
# searched for the secret words anywhere, not as whole words: PGPASSWORD, MYSQL_PWD, CLIENTSECRET. TOKEN
# only with no letter after it (VLLM_MAX_TOKENS, TOKENIZERS_PARALLELISM are settings), PWD but not the
# shell's own PWD/OLDPWD (directories).
SECRET_NAME = re.compile(r"PASSW|PASSPHRASE|^(?!(OLD)?PWD\Z).*PWD|SECRET|TOKEN(?![A-Z])|CREDENTIAL|API_?KEY|"
                         r"ACCESS_?KEY|PRIVATE_?KEY|_KEY\d*$")
# Hugging Face tokens, OpenAI-style keys, bearer headers, URLs with a password.
SECRET_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{20,}|\bsk-[A-Za-z0-9_-]{16,}|^Bearer\s|://[^/\s:@]+:[^/\s@]+@")


class SecretWrite(StringCommand):
    """The command that writes one secret file; the content is its stdin, never one of its bits.

    ``secret_dest`` and ``reason`` ("missing" or "content differs") let a reader (drift) say what
    would change without looking at the content.
    """

    def __init__(self, dest: str, reason: str, command: str, content: bytes):
        encoded = base64.b64encode(content).decode() + "\n"
        super().__init__(command, _stdin=encoded, _get_pty=False)
        self.secret_dest = dest
        self.reason = reason

    def __repr__(self) -> str:
        return f"SecretWrite({self.secret_dest}: {self.reason})"


def read_secret(path: str) -> str:
    """One secret from a control-side file (surrounding whitespace removed); errors never show it."""
    try:
        value = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise OperationValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise OperationValueError(f"secret file {path} is not UTF-8 text") from None
    if not value or "\n" in value:
        raise OperationValueError(f"secret file {path} must hold exactly one non-empty line")
    return value


def env_text(variables: dict[str, str]) -> str:
    """``docker --env-file`` content: one ``NAME=value`` line per variable, values read from files.

    ``variables`` maps a variable name to the control-side file holding its value.
    """
    values: dict[str, str] = {}
    lines = []
    for name, path in variables.items():
        if not _VARIABLE.fullmatch(name):
            raise OperationValueError(f"{name!r} is not an environment variable name")
        if path not in values:
            values[path] = read_secret(path)
        lines.append(f"{name}={values[path]}\n")
    return "".join(lines)


def content_digest(text: str) -> str:
    """Short digest of a secret file's content, for a container spec: a rotation recreates it."""
    return short_digest(text)


def write_command(dest: str, user: str = "root", group: str = "root", mode: str = "600") -> str:
    """Shell text that writes stdin (base64) to ``dest`` atomically, with its final owner and mode."""
    directory = posixpath.dirname(dest)
    template = shlex.quote(f"{directory}/.{posixpath.basename(dest)}{TEMP_SUFFIX}")
    return (f"mkdir -p {shlex.quote(directory)} && umask 077 && tmp=$(mktemp {template}) && "
            "trap 'rm -f \"$tmp\"' EXIT && trap 'exit 129' HUP INT TERM && "
            f"base64 -d > \"$tmp\" && chown {shlex.quote(f'{user}:{group}')} \"$tmp\" && "
            f"chmod {mode} \"$tmp\" && mv -f \"$tmp\" {shlex.quote(dest)}")


def _check_args(dest: str, mode: str) -> None:
    if not dest.startswith("/") or dest.endswith("/"):
        raise OperationValueError(f"secret file {dest!r}: an absolute file path")
    if not _MODE.fullmatch(str(mode)):
        raise OperationValueError(f"secret file mode {mode!r}: three octal digits such as 600")


def secret_file(dest: str, text: str, user: str = "root", group: str = "root", mode: str = "600",
                stage_at: str | None = None):
    """Yield what makes ``dest`` hold ``text`` with owner ``user:group`` and ``mode`` (nothing when it does).

    A helper for operations (``yield from secret_file(...)``), not an operation: its content is an
    argument. Returns the content digest (:func:`content_digest`).

    ``stage_at``: new content is written there (the same way: stdin, final owner and mode, atomic)
    instead of over ``dest``, for a script that checks it before swapping it in
    (operations/util.py ``swap_script``); the :class:`SecretWrite` still names ``dest``. An owner or
    mode fix of an unchanged ``dest`` is made in place.
    """
    _check_args(dest, mode)
    if stage_at is not None:
        _check_args(stage_at, mode)
    mode = str(mode).lstrip("0") or "0"
    current = host.get_fact(File, path=dest)
    if current is False:
        raise OperationError(f"{dest} exists and is not a regular file; a secret file will not replace it")
    wanted = hashlib.sha256(text.encode()).hexdigest()
    if not current or host.get_fact(Sha256File, path=dest) != wanted:
        reason = "missing" if not current else "content differs"
        if state.config.DIFF:
            logger.info(f"{host.print_prefix}{'Will create' if not current else 'Will modify'} {dest}: "
                        f"{reason} (secret, not shown)")
        yield SecretWrite(dest, reason, write_command(stage_at or dest, user, group, mode), text.encode())
        return content_digest(text)
    changed = False
    if str(current.get("mode")) != mode:
        yield f"chmod {mode} {shlex.quote(dest)}"
        changed = True
    if (current.get("user"), current.get("group")) != (user, group):
        yield f"chown {shlex.quote(f'{user}:{group}')} {shlex.quote(dest)}"
        changed = True
    if not changed:
        host.noop(f"{dest}: secret up to date (sha256 matches, {user}:{group} {mode})")
    return content_digest(text)


@operation()
def env_file(dest: str, variables: dict[str, str] | None, user: str = "root", group: str = "root",
             mode: str = "600"):
    """
    Make ``dest`` a root-only env file (``NAME=value`` lines for ``docker --env-file``), or remove it.

    + dest: absolute path on the host, e.g. ``/etc/gpufleet/vllm-api-key.env``
    + variables: ``{NAME: control-side file}``; each file holds one value on one line (the same
      file may serve several names). ``None`` or ``{}`` removes ``dest``
    + user, group, mode: the file's owner and mode, set before it appears under its name

    The content is compared by sha256 with the host's file, never read back or shown (not with
    ``--diff``, not with ``-v``); a write is atomic (see the module docstring). Used inside another
    operation, ``digest = yield from secrets.env_file._inner(...)`` gives the content digest (None
    when removed), to put in a container spec so that a rotated secret recreates the container.

    **Example:**

    .. code:: python

        secrets.env_file(name="vLLM API key", dest="/etc/gpufleet/vllm-api-key.env",
                         variables={"VLLM_API_KEY": "~/.config/gpufleet/vllm-api-key"})
    """
    _check_args(dest, mode)
    if not variables:
        if host.get_fact(File, path=dest) is None:
            host.noop(f"{dest}: absent")
            return None
        yield f"rm -f {shlex.quote(dest)}"
        return None
    return (yield from secret_file(dest, env_text(variables), user, group, mode))
