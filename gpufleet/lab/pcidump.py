"""The lab's stand-in GPUs as an `lspci -xxx` dump, which `lspci -F FILE` reads like a PCI bus."""

from __future__ import annotations

# PCI device id of the GeForce RTX 5090 (GB202); used for every stand-in GPU whatever its name.
NVIDIA_VENDOR, RTX_5090_DEVICE = 0x10DE, 0x2B85
# An RTX 5090 is a PCIe 5.0 x16 card: the link it can do, and (unless a GPU says otherwise) runs at.
MAX_LINK_WIDTH, MAX_LINK_SPEED_GTS = 16, 32.0

CONFIG_SIZE = 256  # what `lspci -xxx` dumps: the header and the capabilities after it
PCIE_CAP = 0x40  # where the PCI Express capability sits (the capabilities pointer at 0x34 says so)
# Link speed codes of the Link Capabilities/Status registers (PCIe base spec 7.5.3.6 and 7.5.3.8).
SPEED_CODES = {2.5: 1, 5.0: 2, 8.0: 3, 16.0: 4, 32.0: 5, 64.0: 6}
WIDTHS = (1, 2, 4, 8, 12, 16, 32)


def _speed_code(gts: float) -> int:
    try:
        return SPEED_CODES[float(gts)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"PCIe link speed {gts!r} GT/s: expected one of {sorted(SPEED_CODES)}") from None


def _width(width: int) -> int:
    if width not in WIDTHS:
        raise ValueError(f"PCIe link width x{width!r}: expected one of {WIDTHS}")
    return width


def config_space(gpu: dict) -> bytearray:
    """The 256-byte config space of one stand-in GPU: a type 0 header (vendor 10de, device 2b85,
    class 0300, revision a1) and a PCI Express v2 endpoint capability at 0x40 whose Link
    Capabilities / Link Status give the GPU's ``max_link_*`` / ``link_*`` (x16, 32 GT/s by default;
    the current link defaults to the maximum).

    >>> cfg = config_space({"link_width": 4, "link_speed_gts": 2.5})
    >>> hex(cfg[0x40]), cfg[0x52] & 0xF, (cfg[0x52] >> 4) | (cfg[0x53] & 0x3) << 4
    ('0x10', 1, 4)
    """
    max_speed_gts = gpu.get("max_link_speed_gts") or MAX_LINK_SPEED_GTS
    max_width = _width(gpu.get("max_link_width") or MAX_LINK_WIDTH)
    max_speed = _speed_code(max_speed_gts)
    speed = _speed_code(gpu.get("link_speed_gts") or max_speed_gts)  # a link trains to the max
    width = _width(gpu.get("link_width") or max_width)

    config = bytearray(CONFIG_SIZE)
    config[0:4] = NVIDIA_VENDOR.to_bytes(2, "little") + RTX_5090_DEVICE.to_bytes(2, "little")
    config[0x06:0x08] = (1 << 4).to_bytes(2, "little")  # status: capability list present
    config[8:12] = bytes([0xA1, 0x00, 0x00, 0x03])  # revision, prog-if, subclass, class
    config[0x2C:0x30] = config[0:4]  # subsystem vendor/device
    config[0x34] = PCIE_CAP  # capabilities pointer

    cap = PCIE_CAP
    config[cap] = 0x10  # capability id: PCI Express
    config[cap + 1] = 0x00  # next capability: none
    config[cap + 2:cap + 4] = (0x0002).to_bytes(2, "little")  # version 2, device/port type 0: endpoint
    # Link Capabilities: max link speed (bits 3:0), max link width (bits 9:4); port 0, no ASPM.
    config[cap + 0x0C:cap + 0x10] = (max_speed | max_width << 4).to_bytes(4, "little")
    # Link Status: current link speed (bits 3:0), negotiated link width (bits 9:4).
    config[cap + 0x12:cap + 0x14] = (speed | width << 4).to_bytes(2, "little")
    # Link Capabilities 2: supported link speeds vector (bits 7:1), every speed up to the maximum.
    config[cap + 0x2C:cap + 0x30] = (((1 << max_speed) - 1) << 1).to_bytes(4, "little")
    # Link Control 2: target link speed (bits 3:0), the maximum, as a driver leaves it.
    config[cap + 0x30:cap + 0x32] = max_speed.to_bytes(2, "little")
    return config


def lspci_dump(gpus: list[dict]) -> str:
    """One 256-byte config space per GPU (see :func:`config_space`), as ``lspci -xxx`` prints it.

    A GPU dict may carry ``pci_bus_id``, ``link_width`` / ``link_speed_gts`` (the link it runs at)
    and ``max_link_width`` / ``max_link_speed_gts`` (the link it can do); the maximum defaults to
    x16 at 32 GT/s, an RTX 5090's PCIe 5.0 x16, and the current link to the maximum.

    >>> dump = lspci_dump([{"pci_bus_id": "00000000:01:00.0"}]).splitlines()
    >>> print(dump[0])
    0000:01:00.0 VGA compatible controller: NVIDIA Corporation Device 2b85 (rev a1)
    >>> print(dump[1]); print(dump[16])
    00: de 10 85 2b 00 00 10 00 a1 00 00 03 00 00 00 00
    f0: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
    """
    out = []
    for index, gpu in enumerate(gpus):
        domain, bus, devfn = (gpu.get("pci_bus_id") or f"00000000:{index + 1:02x}:00.0").split(":")
        config = config_space(gpu)
        out.append(f"{int(domain, 16):04x}:{bus}:{devfn} VGA compatible controller: "
                   f"NVIDIA Corporation Device {RTX_5090_DEVICE:04x} (rev a1)")
        out += [f"{offset:02x}: " + " ".join(f"{b:02x}" for b in config[offset:offset + 16])
                for offset in range(0, CONFIG_SIZE, 16)]
        out.append("")
    return "\n".join(out)
