"""Redaction for what doctor writes: known values first, then patterns.

Patterns alone miss what matters most (a hostname is just a word; an API key is random text), so
a :class:`Redactor` is built from the values the fleet knows (:func:`from_fleet`): every inventory
host name, its ``ssh_hostname`` and addresses, the names the nodes report for themselves, and
the *contents* of the secret files the settings name (``vllm_hf_token_file``,
``vllm_api_key_file``, ``alertmanager_webhook_url_file``). Patterns then catch what no list
holds: Hugging Face tokens (``hf_...``), OpenAI-style keys (``sk-...``), ``Bearer ...``,
``password=...``-style pairs, URLs with credentials, and every IPv4/IPv6 address (but 0.0.0.0, ``::``
and loopback, which identify nothing and keep a bind address readable).

Two levels: :meth:`Redactor.secrets` hides secrets only (the terminal and ``--json`` output, where
the operator needs host names), :meth:`Redactor.all` hides secrets, host names and addresses (the
``--report`` file, which is meant to be pasted into a public bug report). Hosts become
``<host-1>``, ``<host-2>``... in inventory order, so a report still tells nodes apart.

>>> r = Redactor(secrets=["s3cr3t-value"], hosts=["gpu-node-01"], addresses=["10.40.1.11"])
>>> r.all("gpu-node-01 (10.40.1.11, 192.168.7.9) key s3cr3t-value token hf_abcdefghijklmnopqrstu123")
'<host-1> (<address>, <address>) key <secret> token <secret>'
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path

SECRET_FILE_KEYS = ("vllm_hf_token_file", "vllm_api_key_file", "alertmanager_webhook_url_file",
                    "milvus_root_password_file", "milvus_app_password_file")
ADDRESS_KEYS = ("ssh_hostname", "private_address", "vllm_bind_address", "metrics_listen_address",
                "milvus_bind_address")
SECRET = "<secret>"
ADDRESS = "<address>"

_SECRET_PATTERNS = (
    re.compile(r"\bhf_[A-Za-z0-9]{16,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"),
    re.compile(r"(?i)(?<=Bearer )[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"(?i)(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"),  # user:password@ in URLs
)
# NAME=value / NAME: value where the name says secret (env dumps, argparse Namespace lines): the value goes.
_SECRET_PAIR = re.compile(r"(?i)\b([\w-]*(?:token|secret|password|passwd|api_key|apikey|api-key)['\"]?\s*[=:]\s*['\"]?)"
                          r"(?!\*\*\*|<secret>|None\b)([^\s'\",)]{4,})")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.])")
# Candidates only; each is checked with ipaddress, so times (07:50:26), MACs and PCI bus ids
# (0000:01:00.0) stay.
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:.])")


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return False
    return True


def _identifying_ip(text: str) -> bool:
    """An address that says something about the site: not 0.0.0.0, ::, loopback (they stay readable)."""
    if not _valid_ip(text):
        return False
    ip = ipaddress.ip_address(text.split("%")[0])
    return not (ip.is_unspecified or ip.is_loopback)


class Redactor:
    """Replace known values and secret-looking patterns; see the module docstring."""

    def __init__(self, secrets: Iterable[str] = (), hosts: Iterable[str] = (), addresses: Iterable[str] = ()):
        self.secret_values = sorted({s.strip() for s in secrets if s and s.strip()}, key=len, reverse=True)
        self.host_aliases: dict[str, str] = {}
        for name in hosts:
            if name and name not in self.host_aliases:
                self.host_aliases[name] = f"<host-{len(self.host_aliases) + 1}>"
        self.addresses = sorted({a for a in addresses if a}, key=len, reverse=True)

    def add_host(self, name: str, alias_of: str | None = None) -> None:
        """Another name of a known host (what it calls itself), shown as that host's alias."""
        if name and name not in self.host_aliases:
            self.host_aliases[name] = self.host_aliases.get(alias_of or "", f"<host-{len(self.host_aliases) + 1}>")

    def secrets(self, text: str) -> str:
        """Secrets only: known secret values, then the secret patterns."""
        for value in self.secret_values:
            text = text.replace(value, SECRET)
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub(SECRET, text)
        return _SECRET_PAIR.sub(lambda m: m.group(1) + SECRET, text)

    def all(self, text: str) -> str:
        """Secrets, host names (known names, longest first) and every IP address."""
        text = self.secrets(text)
        for value in self.addresses:
            if not _valid_ip(value):  # an ssh_hostname that is a name: a host name
                text = _replace_name(text, value, "<host>")
        for name in sorted(self.host_aliases, key=len, reverse=True):
            text = _replace_name(text, name, self.host_aliases[name])
        for value in self.addresses:
            text = text.replace(value, ADDRESS)
        text = _IPV4.sub(lambda m: ADDRESS if _identifying_ip(m.group(0)) else m.group(0), text)
        return _IPV6.sub(lambda m: ADDRESS if ":" in m.group(0) and _identifying_ip(m.group(0)) else m.group(0), text)


def _replace_name(text: str, name: str, alias: str) -> str:
    # Long names go wherever they appear (container names embed them: vllm-gpu-node-01-vllm-0);
    # short ones (lb, n1) only as whole words, or every "lb" in the report would go.
    if len(name) >= 4:
        return text.replace(name, alias)
    return re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", alias, text)


def read_secret_file(path: str) -> str | None:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def from_fleet(fleet, hosts_reporting: dict[str, list[str]] | None = None) -> Redactor:
    """A Redactor for one fleet: its hosts, their addresses and its secret files' contents.

    ``hosts_reporting`` maps inventory names to the names each node reported for itself
    (``uname -n``, ``hostname -f``), which are redacted as that host.
    """
    secrets, names, addresses = [], [], []
    for host in fleet.hosts.values():
        names.append(host.name)
        for key in ADDRESS_KEYS:
            value = host.data.get(key)
            if isinstance(value, str) and value and value not in ("0.0.0.0", "::"):
                addresses.append(value)
        for key in SECRET_FILE_KEYS:
            path = getattr(host.settings, key, None) or host.data.get(key)
            value = read_secret_file(path) if isinstance(path, str) else None
            if value:
                secrets.append(value)
    redactor = Redactor(secrets, names, addresses)
    for name, reported in (hosts_reporting or {}).items():
        for other in reported:
            redactor.add_host(other, alias_of=name)
    return redactor
