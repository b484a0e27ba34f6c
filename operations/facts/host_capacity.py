"""What a host has room for before it becomes a GPU node: free disk, kernel headers for DKMS."""

from __future__ import annotations

import shlex

from pyinfra.api import FactBase

from .util import envelope, wrap


class FreeDisk(FactBase):
    """Free space (GiB) of the filesystem that holds ``path``, or of its nearest existing parent
    (``/var/lib/docker`` on a fresh host is still ``/var/lib`` or ``/``).

    .. code:: python

        host.get_fact(FreeDisk, path="/var/lib/docker")
        {"status": "ok", "exit_code": 0, "error": None, "path": "/var", "free_gib": 412.7}
    """

    def command(self, path: str) -> str:
        return wrap("df", f"p={shlex.quote(path)}; while [ ! -e \"$p\" ] && [ \"$p\" != / ]; do p=$(dirname \"$p\"); done; "
                          "echo \"path=$p\"; df -Pk \"$p\" | awk 'NR==2 {print \"free_kib=\" $4}'")

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "no output", "path": None, "free_gib": None}

    def process(self, output):
        result, body = envelope(output)
        values = dict(line.split("=", 1) for line in body if "=" in line)
        free = values.get("free_kib", "")
        return {**result, "path": values.get("path"),
                "free_gib": round(int(free) / 1024 ** 2, 1) if free.isdigit() else None}


class KernelHeaders(FactBase):
    """Headers for the running kernel, which DKMS needs to build the nvidia module: installed, or
    available from the configured apt sources (``apt-cache policy`` candidate).

    The candidate is read only when the headers are not installed: ``apt-cache policy`` loads
    apt's whole cache (0.1 s on a lab node, ~0.7 s on a host with full Debian lists), and a GPU
    node plans this read in every deploy and drift check, where the headers are installed.

    .. code:: python

        host.get_fact(KernelHeaders)
        {"status": "ok", "exit_code": 0, "error": None, "kernel": "6.1.0-27-amd64",
         "package": "linux-headers-6.1.0-27-amd64", "installed": False, "candidate": "6.1.115-1"}
    """

    command = wrap("apt-cache", "k=$(uname -r); echo \"kernel=$k\"; "
                                "s=$(dpkg-query -W -f='${db:Status-Abbrev}' linux-headers-$k 2>/dev/null); "
                                "echo \"installed=$s\"; "
                                "case \"$s\" in ?i*) ;; *) echo \"candidate=$(LC_ALL=C apt-cache policy linux-headers-$k "
                                "2>/dev/null | awk '/Candidate:/ {print $2}')\";; esac")

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "no output", "kernel": None, "package": None,
                "installed": False, "candidate": None}

    def process(self, output):
        result, body = envelope(output)
        values = dict(line.split("=", 1) for line in body if "=" in line)
        kernel = values.get("kernel") or None
        candidate = values.get("candidate") or None
        return {**result, "kernel": kernel, "package": f"linux-headers-{kernel}" if kernel else None,
                # dpkg's status abbreviation: wanted state, then the package's state ("ii", or "hi"
                # for headers held beside the driver): installed is an "i" in second place.
                "installed": values.get("installed", "")[1:2] == "i",
                "candidate": None if candidate in (None, "(none)") else candidate}
