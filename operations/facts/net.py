"""Addresses and HTTP health as the host itself sees them (never failing the host)."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from .util import envelope, wrap


class ResolvedAddress(FactBase):
    """The first IPv4 address ``name`` resolves to *on the host* (its /etc/hosts, its DNS), or None.

    .. code:: python

        host.get_fact(ResolvedAddress, name_or_ip="gpu-node-1")
        "172.20.0.5"
    """

    def command(self, name_or_ip: str) -> str:
        return wrap("getent", f"getent ahostsv4 {shlex.quote(name_or_ip)} | awk 'NR==1 {{print $1}}'")

    @staticmethod
    def default():
        return None

    def process(self, output):
        result, body = envelope(output)
        lines = [b.strip() for b in body if b.strip()]
        if result["status"] != "ok" or not lines:
            return None
        return lines[0]


class HttpOk(FactBase):
    """Whether ``url`` answers 2xx right now, from the host (curl, 5 s).

    .. code:: python

        host.get_fact(HttpOk, url="http://10.0.0.5:9091/healthz")
        True
    """

    # A service whose health depends on other hosts (Milvus's, the app's own: on vLLM and Milvus), which
    # their operations may change in the same run: operations/fact_prefetch.py, read_live_at_execution.
    read_live_at_execution = True

    def command(self, url: str) -> str:
        return wrap("curl", f"curl -fsS -m 5 -o /dev/null {shlex.quote(url)}")

    @staticmethod
    def default():
        return False

    def process(self, output):
        result, _ = envelope(output)
        return result["status"] == "ok"
