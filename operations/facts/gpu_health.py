"""GPU health as the driver reports it: ECC errors, clock throttling, XID events."""

from __future__ import annotations

import csv

from pyinfra.api import FactBase

from .util import RC, envelope

HEALTH_FIELDS = "index,uuid,ecc.errors.uncorrected.volatile.total,clocks_throttle_reasons.active"
XID_MARK = "__gpufleet_xid="
# Throttle reasons that mean trouble (nvml.h clocksThrottleReasons); idle (0x1) and the software
# power cap under load (0x4) are normal.
BAD_THROTTLE = {0x8: "hardware slowdown", 0x20: "software thermal slowdown", 0x40: "hardware thermal slowdown",
                0x80: "hardware power brake"}


def throttle_causes(mask: str) -> list[str]:
    """>>> throttle_causes("0x0000000000000048")
    ['hardware slowdown', 'hardware thermal slowdown']
    """
    try:
        value = int(mask, 16)
    except (TypeError, ValueError):
        return []
    return [why for bit, why in sorted(BAD_THROTTLE.items()) if value & bit]


class GpuHealth(FactBase):
    """Per-GPU ECC and throttling from nvidia-smi, and the count of XID events in the kernel log.

    .. code:: python

        host.get_fact(GpuHealth)
        {"status": "ok", "gpus": [{"index": 0, "uuid": "GPU-...", "ecc_uncorrected": None,
                                   "throttle": []}], "xid_events": 0}

    ``ecc_uncorrected`` is None where the board has no ECC (GeForce). ``xid_events`` is None
    when the kernel log cannot be read.
    """

    command = (
        f"if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi --query-gpu={HEALTH_FIELDS} "
        f'--format=csv,noheader 2>&1; echo "{RC}$?"; else echo __gpufleet_missing; fi; '
        f"x=$( (dmesg 2>/dev/null || journalctl -k -q --no-pager 2>/dev/null) | grep -c 'NVRM: Xid' ); "
        f'echo "{XID_MARK}${{x:-}}"'
    )

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "no output", "gpus": [], "xid_events": None}

    def process(self, output):
        xid_lines = [line for line in output if line.startswith(XID_MARK)]
        rest = [line for line in output if not line.startswith(XID_MARK)]
        xid_text = xid_lines[-1][len(XID_MARK):].strip() if xid_lines else ""
        xids = int(xid_text) if xid_text.isdigit() else None
        result, body = envelope(rest)
        gpus = []
        if result["status"] == "ok":
            for row in csv.reader((b for b in body if b.strip()), skipinitialspace=True):
                if len(row) < 4 or not row[0].strip().isdigit():
                    continue
                ecc = row[2].strip()
                gpus.append({"index": int(row[0]), "uuid": row[1].strip(),
                             "ecc_uncorrected": int(ecc) if ecc.isdigit() else None,
                             "throttle": throttle_causes(row[3].strip())})
        return {**result, "gpus": gpus, "xid_events": xids}
