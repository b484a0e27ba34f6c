"""The lab's stand-in GPUs as an `lspci -x` dump, which `lspci -F FILE` reads like a PCI bus."""

from __future__ import annotations

# PCI device id of the GeForce RTX 5090 (GB202); used for every stand-in GPU whatever its name.
NVIDIA_VENDOR, RTX_5090_DEVICE = 0x10DE, 0x2B85


def lspci_dump(gpus: list[dict]) -> str:
    """One 64-byte config-space header per GPU: vendor, device, class 0300 (VGA), revision a1.

    >>> print(lspci_dump([{"pci_bus_id": "00000000:01:00.0"}]).splitlines()[0])
    0000:01:00.0 VGA compatible controller: NVIDIA Corporation Device 2b85 (rev a1)
    """
    out = []
    for index, gpu in enumerate(gpus):
        domain, bus, devfn = (gpu.get("pci_bus_id") or f"00000000:{index + 1:02x}:00.0").split(":")
        config = bytearray(64)
        config[0:4] = NVIDIA_VENDOR.to_bytes(2, "little") + RTX_5090_DEVICE.to_bytes(2, "little")
        config[8:12] = bytes([0xA1, 0x00, 0x00, 0x03])  # revision, prog-if, subclass, class
        config[0x2C:0x30] = config[0:4]  # subsystem vendor/device
        out.append(f"{int(domain, 16):04x}:{bus}:{devfn} VGA compatible controller: "
                   f"NVIDIA Corporation Device {RTX_5090_DEVICE:04x} (rev a1)")
        out += [f"{offset:02x}: " + " ".join(f"{b:02x}" for b in config[offset:offset + 16])
                for offset in range(0, 64, 16)]
        out.append("")
    return "\n".join(out)
