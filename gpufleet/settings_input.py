"""Refusals of input that used to pass validation and fail half-way through a deploy: a mixin of gpufleet.settings.HostSettings.

Each check stands for a way a deploy stopped after drivers, Docker and reboots had already run,
or silently did something other than what the data said. The validators name the fields of the
other settings modules with ``check_fields=False``: they run on HostSettings, where every field
exists.

- **Addresses** are IP literals: ``private_address`` (Docker publishes ports on addresses, and
  every host must reach a node the same way) and ``metrics_listen_address``. Whether a role host
  may omit ``private_address`` is a fleet check (gpufleet/fleet_checks.py).
- **Names** that end up on command lines are not empty: ``vllm_model``, ``vllm_served_model_name``;
  the served name is letters, digits and ``._/:-`` only (the readiness probe's script carries it too).
- **Secrets never travel as data.** ``vllm_extra_args`` may not carry ``--api-key``/``--hf-token``
  (spelt with ``_`` too, as vLLM reads them: :func:`arg_flag`) or a secret-looking value, and
  ``vllm_env``/``app_env`` no secret-named variable (operations/secrets.py ``SECRET_NAME``:
  ``PGPASSWORD``, ``MYSQL_PWD``, ``*_KEY``...) or secret-looking value: all of them show in ``ps``,
  ``docker inspect``, pyinfra's output and drift reports. Secrets go in the control-side files
  ``vllm_hf_token_file`` and ``vllm_api_key_file``, which must exist, be readable and hold one
  non-empty line, at an absolute or ``~/`` path (never a path inside the checkout, one ``git add``
  from a commit).
- **Flags with their own setting** (``--port``, ``--host``, ``--tensor-parallel-size``...) are
  refused in ``vllm_extra_args``: the deploy sets them, and vLLM would get them twice.
- **Debugging settings are errors unless ``allow_debug_settings``.** ``CUDA_LAUNCH_BLOCKING``
  serialises every kernel launch; ``NCCL_DEBUG=INFO``/``TRACE`` logs every communicator set-up or
  every collective; ``VLLM_TEST_*`` switches vLLM into test-suite code paths; ``NCCL_P2P_LEVEL``
  overrides NCCL's topology detection, and forcing P2P between GeForce cards that have none hangs
  or corrupts the all-reduce (the cure for NCCL hangs is ACS/IOMMU, see DESIGN.md). A fleet tool
  applies data to every node, so these are errors, not warnings; a debugging session says so
  out loud with ``--data allow_debug_settings=true`` and then gets them as warnings.
  ``--enforce-eager`` stays a warning (the lab's CPU engine needs it; it only costs speed).
- **The model is one the planner can check.** A ``vllm_model`` the planner has no preset for is
  refused unless ``vllm_model_config`` describes it: the path of its config.json on the control
  host (absolute, ``~/``, or relative to the repository root) or the config.json fields themselves
  (``hidden_size``, ``num_attention_heads``, ``num_hidden_layers``, ``vocab_size``, and the rest
  the planner reads). The fit check never skips silently.
- **Lists that must not be empty**: ``supported_os`` (preflight would refuse every host) and
  ``vllm_replicas`` (``[]`` is a GPU node that serves nothing; None is one replica over the first
  TP GPUs). ``docker_daemon_config`` holds only keys and types dockerd accepts
  (gpufleet/settings_daemon.py).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator

from gpufleet.settings_daemon import daemon_config_problems
from operations.secrets import SECRET_NAME, SECRET_VALUE

# vllm_extra_args flags that carry a secret: on a command line they show in `ps` and `docker inspect`.
SECRET_ARGS = {"--api-key": "vllm_api_key_file", "--hf-token": "vllm_hf_token_file"}
# Flags the deploy sets from a setting of their own (operations/vllm.py replica_spec).
OWN_SETTING_ARGS = {
    "--port": "vllm_port / vllm_replicas", "--host": "vllm_bind_address (the container listens on 0.0.0.0)",
    "--model": "vllm_model", "--served-model-name": "vllm_served_model_name",
    "--tensor-parallel-size": "vllm_tensor_parallel_size", "-tp": "vllm_tensor_parallel_size",
    "--max-model-len": "vllm_max_model_len", "--gpu-memory-utilization": "vllm_gpu_memory_utilization",
    "--quantization": "vllm_quantization", "-q": "vllm_quantization", "--shutdown-timeout": "vllm_shutdown_timeout",
}
COMMIT = re.compile(r"[0-9a-f]{40}")
# Never part of a URL setting: each would end a line of a config file or mean something to a shell.
_NOT_IN_URL = re.compile(r"[\s\x00-\x1f\x7f\"'`$\\]")
# What clients ask for (Qwen/Qwen3-32B-AWQ, qwen3-tiny); a leading "-" would read as a flag to vLLM.
SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:-]*")

# Debugging environment: name -> (is it set to a debugging value?, why it is not for production).
DEBUG_ENV = {
    "CUDA_LAUNCH_BLOCKING": (lambda v: v.strip() not in ("", "0"),
                             "serialises every CUDA kernel launch (throughput collapses)"),
    "NCCL_DEBUG": (lambda v: v.strip().upper() in ("INFO", "TRACE"),
                   "INFO logs every communicator set-up, TRACE every collective (WARN is fine)"),
    "NCCL_P2P_LEVEL": (lambda v: True, "overrides NCCL's topology detection; forcing P2P between RTX 5090s, "
                                       "which have none, hangs or corrupts the all-reduce (fix ACS/IOMMU instead)"),
    "VLLM_LOGGING_LEVEL": (lambda v: v.strip().upper() == "DEBUG", "debug logging on every request"),
    "VLLM_TRACE_FUNCTION": (lambda v: v.strip() not in ("", "0"), "traces every Python call (very slow)"),
}
DEBUG_ENV_PREFIXES = {"VLLM_TEST_": "a vLLM test-suite switch: code paths production does not run"}
DEBUG_ARGS = {"--enforce-eager": "disables CUDA graphs: a debugging setting, slower in production"}


def ipv4_address(v: str, what: str) -> str:
    """``v`` when it is an IPv4 address literal; else a ValueError saying ``what`` was expected.

    The one address rule of the settings (private_address, metrics_listen_address and the bind
    addresses of vLLM, Milvus and the app): Docker publishes ports on addresses, not names, and
    nginx members and health URLs are written ``ADDR:PORT``.
    """
    try:
        address = ipaddress.ip_address(v)
    except ValueError:
        raise ValueError(what) from None
    if address.version == 6:
        # nginx members ("server ADDR:PORT") and every health URL would need brackets: not done yet.
        raise ValueError(f"{what}; IPv4 only for now (IPv6 addresses are not supported yet)")
    return v


def plain_http_url(v: str, what: str, why: str) -> str:
    """``v`` when it is an http(s) URL with a host and no credentials, holding nothing that a shell
    or a config line would read as more than text (whitespace, control characters, quotes, ``$``,
    backquote, backslash); else a ValueError saying a URL ``what`` was expected, and ``why``.

    The one URL rule of the settings: ``apt_mirror`` goes into a sources file and a shell command,
    ``vllm_model_url`` into plans and the staged marker.
    """
    try:
        parts = urlsplit(v)
        host = parts.hostname
    except ValueError:  # a bad [IPv6] host
        parts, host = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host or _NOT_IN_URL.search(v):
        raise ValueError(f"an http:// or https:// URL {what}, without spaces, quotes, $, ` or \\ ({why})")
    if parts.username or parts.password:
        raise ValueError(f"an http:// or https:// URL {what} without credentials ({why})")
    return v


def read_control_file(path: str) -> str:
    """The text of a control-side file given as an absolute or ``~/`` path (secrets and keys are
    never in the checkout); a ValueError saying what was expected otherwise. Never shows the text."""
    if not (path.startswith("/") or path.startswith("~")):
        raise ValueError("an absolute or ~/ path outside the repository (secrets are never in the checkout)")
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError("a file that exists on the control host (not found)") from None
    except IsADirectoryError:
        raise ValueError("a file, not a directory") from None
    except PermissionError:
        raise ValueError("a file this user can read (permission denied)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"a readable UTF-8 file ({type(exc).__name__})") from None


def check_control_file(path: str) -> Path:
    """A control-side secret file: absolute or ``~/``, a readable file of one non-empty line. Never shows it."""
    text = read_control_file(path)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise ValueError("a file holding the secret on one line (it is empty)")
    if len(lines) > 1:
        raise ValueError(f"a file holding the secret on one line (it has {len(lines)})")
    return Path(path).expanduser()


def arg_flag(arg: str) -> str:
    """The flag of one ``vllm_extra_args`` item as vLLM reads it: its parser takes ``_`` for ``-`` in
    long flags, so ``--api_key=x`` is ``--api-key``. The refusals and :func:`redact` both read it so."""
    flag = arg.split("=", 1)[0]
    return "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag


def redact(value: Any) -> Any:
    """``value`` with every secret-looking part replaced by ``***``, for error messages and reports."""
    if isinstance(value, dict):
        return {k: "***" if isinstance(k, str) and SECRET_NAME.search(k.upper()) else redact(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out, hide_next = [], False
        for item in value:
            flag = arg_flag(item) if isinstance(item, str) else ""
            if hide_next:
                out.append("***")
            elif flag in SECRET_ARGS and "=" in item:
                out.append(item.split("=", 1)[0] + "=***")  # the flag as it was written
            else:
                out.append(redact(item))
            hide_next = flag in SECRET_ARGS and "=" not in item
        return type(value)(out) if isinstance(value, tuple) else out
    if isinstance(value, str) and SECRET_VALUE.search(value):
        return "***"
    return value


class InputSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # True where the private network resolves inventory names (the lab's Docker network): role
    # hosts may then leave private_address unset. Production gives every node and LB an IP.
    private_address_from_name: bool = False
    # True for a debugging session only (`--data allow_debug_settings=true`): debugging settings
    # in vllm_env become warnings instead of errors.
    allow_debug_settings: bool = False

    # ------------------------------------------------------------------ addresses, names ---------
    @field_validator("private_address", check_fields=False)
    @classmethod
    def _private_ip(cls, v: str | None) -> str | None:
        return None if v is None else ipv4_address(v, "an IP address literal such as 10.40.1.11 (or leave it unset "
                                              "where names resolve: private_address_from_name)")

    @field_validator("metrics_listen_address", check_fields=False)
    @classmethod
    def _metrics_ip(cls, v: str | None) -> str | None:
        return None if v is None else ipv4_address(v, "an IP address literal (the exporters bind to it)")

    @field_validator("vllm_model", check_fields=False)
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip() or v != v.strip() or any(c.isspace() for c in v):
            raise ValueError("a non-empty name without spaces (it goes on vLLM's command line)")
        return v

    @field_validator("vllm_served_model_name", check_fields=False)
    @classmethod
    def _served_name(cls, v: str) -> str:
        if not SERVED_NAME.fullmatch(v):
            raise ValueError("a non-empty name without spaces, of letters, digits and . _ / : - (a letter or digit "
                             "first), such as Qwen/Qwen3-32B-AWQ: it goes on vLLM's command line and into the "
                             "readiness probe's script and JSON")
        return v

    # ------------------------------------------------------------------ secrets ------------------
    @field_validator("vllm_extra_args", check_fields=False)
    @classmethod
    def _args_no_secrets_no_owned_flags(cls, v: list[str]) -> list[str]:
        bad, after_secret_flag = [], False
        for arg in v:
            flag = arg_flag(arg)
            if after_secret_flag:  # the secret itself: already refused with its flag
                after_secret_flag = False
                continue
            after_secret_flag = flag in SECRET_ARGS and "=" not in arg
            if flag in SECRET_ARGS:
                bad.append(f"no {flag} (a secret on a command line shows in `ps` and `docker inspect`; "
                           f"use {SECRET_ARGS[flag]})")
            elif flag in OWN_SETTING_ARGS:
                bad.append(f"no {flag} (set by the deploy from {OWN_SETTING_ARGS[flag]})")
            elif SECRET_VALUE.search(arg):
                bad.append("no secret-looking value (a token or key on a command line shows in `ps`)")
        if bad:
            raise ValueError("; ".join(dict.fromkeys(bad)))
        return v

    @field_validator("vllm_env", "app_env", check_fields=False)
    @classmethod
    def _env_no_secrets(cls, v: dict[str, str], info) -> dict[str, str]:
        named = sorted(k for k in v if SECRET_NAME.search(k.upper()))
        valued = sorted(k for k, val in v.items() if k not in named and SECRET_VALUE.search(str(val)))
        if named or valued:
            where = ("vllm_hf_token_file / vllm_api_key_file" if info.field_name == "vllm_env"
                     else "a secret file, not app_env")
            raise ValueError(f"no secrets ({', '.join(named + valued)}): environment shows in `docker inspect`, "
                             f"pyinfra's output and drift reports; use {where}")
        return v

    @field_validator("vllm_hf_token_file", "vllm_api_key_file", check_fields=False)
    @classmethod
    def _secret_file(cls, v: str | None) -> str | None:
        if v is not None:
            check_control_file(v)
        return v

    # ------------------------------------------------------------------ lists, daemon.json --------
    @field_validator("supported_os", check_fields=False)
    @classmethod
    def _supported_os(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one 'Name major[.minor]' such as 'Debian 12' (preflight refuses every "
                             "other OS, so [] refuses every host)")
        loose = [s for s in v if not re.fullmatch(r"[A-Z][A-Za-z ]*[A-Za-z] \d+(\.\d+)?", s)]
        if loose:
            raise ValueError(f"entries like 'Debian 12' or 'Ubuntu 24.04', not {loose}")
        return v

    @field_validator("vllm_replicas", check_fields=False)
    @classmethod
    def _replicas_not_empty(cls, v: list | None) -> list | None:
        if v is not None and not v:
            raise ValueError("at least one replica, or None for one replica over the first "
                             "vllm_tensor_parallel_size GPUs ([] is a node that serves nothing)")
        return v

    @field_validator("docker_daemon_config", check_fields=False)
    @classmethod
    def _daemon_config(cls, v: dict[str, Any]) -> dict[str, Any]:
        problems = daemon_config_problems(v)
        if problems:
            raise ValueError("; ".join(problems))
        return v

    # ------------------------------------------------------------------ derived ------------------
    def input_problems(self) -> list[tuple[str, Any, str]]:
        """Errors this mixin finds in combinations (reported by HostSettings.consistency_problems)."""
        from gpufleet.model_presets import find_preset, known_names

        problems: list[tuple[str, Any, str]] = []
        model = self.vllm_model  # type: ignore[attr-defined]
        if self.gpu_count and self.vllm_model_config is None and find_preset(model) is None:  # type: ignore[attr-defined]
            problems.append(("vllm_model", model,
                             f"one of the planner's {len(known_names())} models (`gpufleet plan --list-models`), "
                             "or vllm_model_config: its config.json path or fields; the fit check is never skipped"))
        problems += self._revision_problems()
        if not self.allow_debug_settings:
            problems += [("vllm_env", shown, f"unset in production: {why} "
                          "(a debugging session: --data allow_debug_settings=true)")
                         for shown, why in self._debug_env()]
        return problems

    def _revision_problems(self) -> list[tuple[str, Any, str]]:
        """A revision is a commit: a branch or tag name is refused (no revision: a warning)."""
        revision = self.vllm_model_revision  # type: ignore[attr-defined]
        if revision is not None and not COMMIT.fullmatch(revision):
            return [("vllm_model_revision", revision, "a commit of the model's repository (40 hex digits, from "
                     "`git ls-remote` or the hub's 'Files' tab): a branch or tag moves under a running fleet")]
        return []

    def _revision_warnings(self) -> list[tuple[str, Any, str]]:
        # Not an error (yet): the repository cannot look the commit up for its own default model
        # (no hub access where it is built); every validate and deploy says so until it is set.
        model = self.vllm_model  # type: ignore[attr-defined]
        if (self.vllm_model_revision is None and self.vllm_model_source == "hub"  # type: ignore[attr-defined]
                and not model.startswith(("/", "./", "~")) and self.gpu_count):  # type: ignore[attr-defined]
            return [("vllm_model_revision", None, f"set the commit of {model} to serve (40 hex digits): "
                     "without it each node serves whatever the hub's default branch is when it downloads")]
        return []

    def input_warnings(self) -> list[tuple[str, Any, str]]:
        """Allowed, shown on every validate and deploy, never fatal."""
        found = [("vllm_env", shown, f"debugging session: {why}") for shown, why in self._debug_env()
                 if self.allow_debug_settings]
        args = self.vllm_extra_args  # type: ignore[attr-defined]
        found += [("vllm_extra_args", a, f"unset in production: {why}") for a, why in DEBUG_ARGS.items() if a in args]
        return found + self._revision_warnings()

    def _debug_env(self) -> list[tuple[str, str]]:
        env = self.vllm_env  # type: ignore[attr-defined]
        found = [(f"{k}={env[k]}", why) for k, (is_debug, why) in DEBUG_ENV.items() if k in env and is_debug(env[k])]
        found += [(f"{k}={v}", why) for k, v in env.items() for p, why in DEBUG_ENV_PREFIXES.items()
                  if k.startswith(p)]
        return found
