"""NVIDIA XID events in the kernel log of the current boot, and whether the log could be read at all.

``grep -c`` over an unreadable log reads 0, which looks like a healthy GPU. Here the log is read
first (``dmesg``; if that is refused, ``journalctl -k -b``), and a log that cannot be read is
reported as such, with the reason, never as zero events.
"""

from __future__ import annotations

import re

from pyinfra.api import FactBase

from .util import KILL_AFTER_S, READ_LIMIT_S, answer, timed, wrap_answer

MARK = "__gpufleet_k"
KEEP = 50  # the last events kept with their text (all are counted)
_STAMP = re.compile(r"^\[\s*(\d+(?:\.\d+)?)\]")
_XID = re.compile(r"NVRM: Xid \(([^)]*)\): (\d+)")

# journalctl exits 0 with "No journal files were found" / "-- No entries --" when the user may not
# read the journal: only output with kernel timestamps counts as read.
# Each of the two reads has the usual time limit, and one that runs out is a log not read (its
# reason says exit 124), not a failed fact; the whole read's own limit covers both.
KERNEL_LOG_COMMAND = (
    f"k=$( {timed('dmesg')} 2>&1); krc=$?; src=dmesg; "
    'if [ "$krc" != 0 ]; then src=; '
    "why=\"dmesg (exit $krc): $(printf '%s' \"$k\" | head -n 1)\"; "
    "if command -v journalctl >/dev/null 2>&1; then "
    f"j=$( {timed('journalctl -k -b -o short-monotonic --no-pager')} 2>&1); "
    "if printf '%s\\n' \"$j\" | grep -q '^\\[ *[0-9]'; then k=$j; src=journalctl; "
    "else why=\"$why; journalctl -k -b: $(printf '%s' \"$j\" | head -n 1)\"; fi; "
    'else why="$why; no journalctl"; fi; fi; '
    f'echo "{MARK}boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)"; '
    f'if [ -n "$src" ]; then echo "{MARK}source=$src"; printf \'%s\\n\' "$k" | '
    f"awk '/NVRM: Xid/ {{n++; b[n % {KEEP}] = $0}} END {{print \"{MARK}count=\" n + 0; "
    f"for (i = (n > {KEEP} ? n - {KEEP} + 1 : 1); i <= n; i++) print \"{MARK}event=\" b[i % {KEEP}]}}'; "
    f'else echo "{MARK}unreadable=$why"; fi'
)


def parse_event(line: str) -> dict:
    """One XID line: its time since boot (seconds), XID code and PCI device.

    >>> parse_event("[ 8523.121244] NVRM: Xid (PCI:0000:01:00): 79, pid=2207, GPU has fallen off the bus.")
    {'t': 8523.121244, 'code': 79, 'pci': '0000:01:00', 'text': 'NVRM: Xid (PCI:0000:01:00): 79, pid=2207, GPU has fallen off the bus.'}
    """
    stamp = _STAMP.match(line)
    xid = _XID.search(line)
    text = line[line.index("NVRM:"):] if "NVRM:" in line else line.strip()
    return {"t": float(stamp.group(1)) if stamp else None, "code": int(xid.group(2)) if xid else None,
            "pci": xid.group(1).removeprefix("PCI:") if xid else None, "text": text}


class KernelXids(FactBase):
    """NVIDIA XID events since boot, read from the kernel log.

    .. code:: python

        host.get_fact(KernelXids)
        {"readable": True, "source": "dmesg", "error": None, "boot_id": "06101ead-...", "count": 2,
         "events": [{"t": 8523.12, "code": 79, "pci": "0000:01:00", "text": "NVRM: Xid (PCI:0000:01:00): 79, ..."}]}

    Unreadable (no permission to ``dmesg``, no kernel lines in the journal, a time-out):
    ``{"readable": False, "error": "dmesg: read kernel buffer failed: Operation not permitted (exit 1); ...",
    "count": None, ...}``. ``events`` holds the last 50; ``count`` counts them all.
    """

    command = wrap_answer(KERNEL_LOG_COMMAND, limit=2 * (READ_LIMIT_S + KILL_AFTER_S) + 10)

    @staticmethod
    def default():
        return {"readable": False, "source": None, "error": "no output", "boot_id": None, "count": None, "events": []}

    def process(self, output):
        found = self.default()
        for line in answer(output, strict=True):
            if not line.startswith(MARK):
                continue
            key, _, value = line[len(MARK):].partition("=")
            if key == "boot":
                found["boot_id"] = value.strip() or None
            elif key == "source":
                found.update(readable=True, source=value.strip(), error=None)
            elif key == "count":
                found["count"] = int(value) if value.strip().isdigit() else None
            elif key == "event":
                found["events"].append(parse_event(value))
            elif key == "unreadable":
                found.update(readable=False, source=None, error=value.strip() or "unreadable", count=None)
        if found["readable"] and found["count"] is None:
            found.update(readable=False, error="the kernel log was read but not counted")
        return found
