"""Facts about the kernel side of a GPU host: which GPU modules are loaded, Secure Boot."""

from __future__ import annotations

from pyinfra.api import FactBase

from .util import answer, envelope, wrap_answer, wrap_file

GPU_MODULES = ("nouveau", "nvidia", "nvidia_uvm", "nvidia_drm", "nvidia_modeset", "nvidia_peermem")

SB_EFIVAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


def parse_modules(lines: list[str]) -> list[str]:
    """Module names from /proc/modules (or `lsmod`, whose header line is skipped).

    >>> parse_modules(["nvidia_uvm 2076672 0 - Live 0x0000000000000000 (PO)", "nouveau 3096576 0 - Live 0x0"])
    ['nvidia_uvm', 'nouveau']
    """
    names = []
    for line in lines:
        parts = line.split()
        if not parts or parts[0] == "Module":
            continue
        names.append(parts[0])
    return names


def parse_secure_boot(lines: list[str]) -> dict:
    """Secure Boot state from the SecureBoot fact's sectioned output.

    Sections: `mokutil` (the text of `mokutil --sb-state`), `efivar` (`od -An -t u1` of the EFI
    variable: 4 attribute bytes, then 1 = enabled / 0 = disabled), `noefi` (booted by BIOS, so no
    Secure Boot) or `unknown` (no way to tell).

    >>> parse_secure_boot(["__gpufleet_sb=mokutil", "SecureBoot enabled", "__gpufleet_rc=0"])
    {'state': 'enabled', 'source': 'mokutil', 'detail': 'SecureBoot enabled'}
    """
    source = None
    body = []
    for line in lines:
        if line.startswith("__gpufleet_sb="):
            source = line.split("=", 1)[1].strip()
        elif not line.startswith("__gpufleet_rc="):
            body.append(line.strip())
    text = " ".join(b for b in body if b)
    state = "unknown"
    if source == "mokutil":
        lowered = text.lower()
        if "secureboot enabled" in lowered:
            state = "enabled"
        elif "secureboot disabled" in lowered:
            state = "disabled"
        elif "not supported" in lowered or "doesn't support" in lowered:
            state = "unsupported"
    elif source == "efivar":
        values = text.split()
        if values and values[-1] in ("0", "1"):
            state = "enabled" if values[-1] == "1" else "disabled"
    elif source == "noefi":
        state = "unsupported"
    return {"state": state, "source": source, "detail": text or None}


class GpuKernelModules(FactBase):
    """GPU kernel modules loaded, from /proc/modules; `nouveau` true means the open-source driver
    holds the GPUs and NVIDIA's driver cannot load.

    .. code:: python

        host.get_fact(GpuKernelModules)
        {"status": "ok", "exit_code": 0, "error": None, "nouveau": False, "nvidia": True,
         "loaded": ["nvidia", "nvidia_drm", "nvidia_modeset", "nvidia_uvm"]}
    """

    command = wrap_file("/proc/modules")

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "no output", "nouveau": False,
                "nvidia": False, "loaded": []}

    def process(self, output):
        result, body = envelope(output, missing="/proc/modules not found")
        names = set(parse_modules(body)) if result["status"] == "ok" else set()
        loaded = sorted(n for n in names if n in GPU_MODULES)
        return {**result, "nouveau": "nouveau" in names, "nvidia": "nvidia" in names, "loaded": loaded}


class SecureBoot(FactBase):
    """Secure Boot state: `mokutil --sb-state` if installed, else the EFI variable, else unknown.
    With Secure Boot enabled, an unsigned (DKMS-built, unenrolled) nvidia module will not load.

    .. code:: python

        host.get_fact(SecureBoot)
        {"status": "ok", "exit_code": 0, "error": None, "state": "disabled", "source": "mokutil",
         "detail": "SecureBoot disabled"}

    `state` is one of enabled, disabled, unsupported (BIOS boot, or firmware without it), unknown.
    """

    command = wrap_answer(
        "if command -v mokutil >/dev/null 2>&1; then echo __gpufleet_sb=mokutil; mokutil --sb-state 2>&1; "
        "elif [ -r " + SB_EFIVAR + " ]; then echo __gpufleet_sb=efivar; od -An -t u1 " + SB_EFIVAR + " 2>&1; "
        "elif [ ! -d /sys/firmware/efi ]; then echo __gpufleet_sb=noefi; "
        "else echo __gpufleet_sb=unknown; fi"
    )

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "no output", "state": "unknown",
                "source": None, "detail": None}

    def process(self, output):
        # Whatever the tools said is the answer (mokutil exits non-zero where it cannot tell):
        # only a read that hung is none.
        return {"status": "ok", "exit_code": 0, "error": None, **parse_secure_boot(answer(output))}
