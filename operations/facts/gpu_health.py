"""GPU health as the driver reports it: ECC errors and clock throttling (XID events: kernel_log.py)."""

from __future__ import annotations

import csv

from pyinfra.api import FactBase

from .util import envelope, wrap

HEALTH_FIELDS = "index,uuid,ecc.errors.uncorrected.volatile.total,clocks_throttle_reasons.active"
# Throttle reasons that mean trouble (nvml.h clocksThrottleReasons); idle (0x1) and the software
# power cap under load (0x4) are normal.
BAD_THROTTLE = {0x8: "hardware slowdown", 0x20: "software thermal slowdown", 0x40: "hardware thermal slowdown",
                0x80: "hardware power brake"}


def throttle_causes(mask: str) -> list[str]:
    """The causes in ``clocks_throttle_reasons.active`` that mean trouble.

    >>> throttle_causes("0x0000000000000048")
    ['hardware slowdown', 'hardware thermal slowdown']
    """
    try:
        value = int(mask, 16)
    except (TypeError, ValueError):
        return []
    return [why for bit, why in sorted(BAD_THROTTLE.items()) if value & bit]


class GpuHealth(FactBase):
    """Per-GPU ECC and throttling from nvidia-smi (time-limited: a GPU fallen off the bus hangs it).

    .. code:: python

        host.get_fact(GpuHealth)
        {"status": "ok", "exit_code": 0, "error": None,
         "gpus": [{"index": 0, "uuid": "GPU-...", "ecc_uncorrected": None, "throttle": []}]}

    ``ecc_uncorrected`` is None where the board has no ECC (GeForce). nvidia-smi that does not
    answer within 60 s is killed and the fact fails (FactProcessError: pyinfra fails the host).
    """

    command = wrap("nvidia-smi", f"nvidia-smi --query-gpu={HEALTH_FIELDS} --format=csv,noheader")

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "no output", "gpus": []}

    def process(self, output):
        result, body = envelope(output)
        gpus = []
        if result["status"] == "ok":
            for row in csv.reader((b for b in body if b.strip()), skipinitialspace=True):
                if len(row) < 4 or not row[0].strip().isdigit():
                    continue
                ecc = row[2].strip()
                gpus.append({"index": int(row[0]), "uuid": row[1].strip(),
                             "ecc_uncorrected": int(ecc) if ecc.isdigit() else None,
                             "throttle": throttle_causes(row[3].strip())})
        return {**result, "gpus": gpus}
