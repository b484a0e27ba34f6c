"""Facts about NVIDIA GPUs on the PCI bus and the PCIe bridges above them, from lspci."""

from __future__ import annotations

import re
import shlex

from pyinfra.api import FactBase

from .util import envelope, wrap, wrap_answer

NVIDIA_VENDOR = "10de"
GPU_CLASSES = ("0300", "0302")  # VGA compatible controller, 3D controller

# [dddd:]bb:dd.f Class name [cccc]: Vendor Device name [vvvv:dddd] (rev xx)
_LSPCI_NN = re.compile(
    r"^(?P<bus>(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\s+"
    r"(?P<class_name>.*?)\s+\[(?P<class>[0-9a-fA-F]{4})\]:\s+"
    r"(?P<description>.*)\s+\[(?P<vendor>[0-9a-fA-F]{4}):(?P<device>[0-9a-fA-F]{4})\]"
    r"(?:\s+\(rev (?P<rev>[0-9a-fA-F]+)\))?"
)
_ACS_FLAG = re.compile(r"(\w+)([+-])")
# Without -nn: "bus class name: description"; the class name is "Class 0300" without pci.ids.
_LSPCI_PLAIN = re.compile(
    r"^(?P<bus>(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\s+"
    r"(?P<class_name>[^:]+?):\s+(?P<description>.*)$"
)
_GPU_CLASS_NAMES = ("VGA compatible controller", "3D controller", "Class 0300", "Class 0302")
_LINK_SPEED = re.compile(r"\bSpeed\s+(\d+(?:\.\d+)?)\s*GT/s")
_LINK_WIDTH = re.compile(r"\bWidth\s+x(\d+)")
_BDF = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_BUS = re.compile(r"^(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
SYSFS_MARK = "__gpufleet_sysfs"


def _full_bus_id(bus: str) -> str:
    return bus.lower() if bus.count(":") == 2 else f"0000:{bus.lower()}"


def parse_lspci_nn(lines: list[str]) -> list[dict]:
    """NVIDIA GPUs in `lspci -nn` (or `lspci -Dnn`) output.

    >>> parse_lspci_nn(["01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GB202 "
    ...                 "[GeForce RTX 5090] [10de:2b85] (rev a1)"])[0]["device_id"]
    '2b85'
    """
    gpus = []
    for line in lines:
        match = _LSPCI_NN.match(line.strip())
        if not match:
            continue
        if match["vendor"].lower() != NVIDIA_VENDOR or match["class"] not in GPU_CLASSES:
            continue
        gpus.append(
            {
                "bus_id": _full_bus_id(match["bus"]),
                "class": match["class"],
                "vendor_id": match["vendor"].lower(),
                "device_id": match["device"].lower(),
                "description": match["description"].strip(),
                "rev": match["rev"],
            }
        )
    return gpus


def parse_lspci_vvv(lines: list[str]) -> dict[str, dict]:
    """Devices in `lspci -Dnnvvv` output: bus id -> {class, vendor_id, header, acs_cap, acs_ctl,
    caps_readable}. ACS fields are `{flag: bool}` dicts, or None when the device has no ACS."""
    devices: dict[str, dict] = {}
    current = None
    for line in lines:
        if line and not line[0].isspace():
            match = _LSPCI_NN.match(line.strip())
            bus = line.split()[0] if line.split() else ""
            if not re.match(r"^(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$", bus):
                current = None
                continue
            current = {
                "header": line.strip(),
                "class": match["class"] if match else None,
                "vendor_id": match["vendor"].lower() if match else None,
                "acs_cap": None,
                "acs_ctl": None,
                "caps_readable": True,
            }
            devices[_full_bus_id(bus)] = current
            continue
        if current is None:
            continue
        text = line.strip()
        if text.startswith("Capabilities: <access denied>"):
            current["caps_readable"] = False
        for key, field in (("ACSCap:", "acs_cap"), ("ACSCtl:", "acs_ctl")):
            if text.startswith(key):
                current[field] = {flag: sign == "+" for flag, sign in _ACS_FLAG.findall(text[len(key):])}
    return devices


def _is_nvidia_gpu(header: str) -> bool:
    """Whether an lspci device line (with or without -nn, with or without pci.ids) is an NVIDIA GPU."""
    match = _LSPCI_NN.match(header)
    if match:
        return match["vendor"].lower() == NVIDIA_VENDOR and match["class"] in GPU_CLASSES
    match = _LSPCI_PLAIN.match(header)
    if not match or match["class_name"].strip() not in _GPU_CLASS_NAMES:
        return False
    description = match["description"]
    return description.startswith("NVIDIA") or bool(re.search(rf"\b{NVIDIA_VENDOR}:[0-9a-fA-F]{{4}}\b", description))


def _link(text: str) -> tuple[float | None, int | None]:
    """(speed in GT/s, width) of an LnkCap/LnkSta line; None for what it does not say ("Speed unknown")."""
    speed, width = _LINK_SPEED.search(text), _LINK_WIDTH.search(text)
    return (float(speed[1]) if speed else None), (int(width[1]) if width else None)


def parse_links(lines: list[str]) -> list[dict]:
    """PCIe link of each NVIDIA GPU (class 0300/0302) in `lspci -vv` output (with or without -D/-nn).

    ``max_*`` come from the LnkCap line (what the GPU can do), ``speed_gts``/``width`` from LnkSta
    (what the link trained to; lspci 3.x marks a slower one "(downgraded)"). Without root lspci
    prints ``Capabilities: <access denied>``: then ``readable`` is False and the values are None.
    A readable GPU without a PCI Express capability has None values too.

    >>> link, = parse_links(["0000:01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GB202 "
    ...                      "[GeForce RTX 5090] [10de:2b85] (rev a1) (prog-if 00 [VGA controller])",
    ...                      "        LnkCap: Port #0, Speed 32GT/s, Width x16, ASPM L1",
    ...                      "        LnkSta: Speed 2.5GT/s (downgraded), Width x16"])
    >>> link["bus_id"], link["max_speed_gts"], link["max_width"], link["speed_gts"], link["width"]
    ('0000:01:00.0', 32.0, 16, 2.5, 16)
    """
    links: list[dict] = []
    current = None
    for line in lines:
        if line and not line[0].isspace():
            current = None
            header = line.strip()
            bus = header.split()[0] if header else ""
            if _BUS.match(bus) and _is_nvidia_gpu(header):
                current = {"bus_id": _full_bus_id(bus), "max_speed_gts": None, "max_width": None,
                           "speed_gts": None, "width": None, "readable": True}
                links.append(current)
            continue
        if current is None:
            continue
        text = line.strip()
        if text.startswith("Capabilities: <access denied>"):
            current.update(readable=False, max_speed_gts=None, max_width=None, speed_gts=None, width=None)
        elif not current["readable"]:
            continue
        elif text.startswith("LnkCap:") and current["max_width"] is None and current["max_speed_gts"] is None:
            current["max_speed_gts"], current["max_width"] = _link(text[len("LnkCap:"):])
        elif text.startswith("LnkSta:") and current["width"] is None and current["speed_gts"] is None:
            current["speed_gts"], current["width"] = _link(text[len("LnkSta:"):])
    return links


def parse_sysfs_paths(lines: list[str]) -> dict[str, list[str]]:
    """`readlink -f /sys/bus/pci/devices/*` lines -> bus id -> upstream bus ids (nearest first)."""
    chains = {}
    for line in lines:
        parts = [p for p in line.strip().split("/") if _BDF.match(p)]
        if parts:
            chains[parts[-1].lower()] = [p.lower() for p in reversed(parts[:-1])]
    return chains


def parse_acs(lines: list[str]) -> dict:
    """ACS state on the bridges upstream of each NVIDIA GPU.

    Input: `lspci -Dnnvvv` output, then a `__gpufleet_sysfs` line, then the device paths. A bridge
    with ACS SrcValid+, ReqRedir+ or CmpltRedir+ redirects peer-to-peer traffic up to the root
    complex (slow or broken P2P between the GPUs): `redirecting` lists those bridges.
    """
    split = next((i for i, line in enumerate(lines) if line.strip() == SYSFS_MARK), len(lines))
    devices = parse_lspci_vvv(lines[:split])
    chains = parse_sysfs_paths(lines[split + 1:])
    gpus = []
    bridges: dict[str, dict] = {}
    for bus, dev in devices.items():
        if dev["vendor_id"] != NVIDIA_VENDOR or dev["class"] not in GPU_CLASSES:
            continue
        upstream = chains.get(bus, [])
        gpus.append({"bus_id": bus, "upstream": upstream})
        for bridge in upstream:
            info = devices.get(bridge, {})
            ctl = info.get("acs_ctl")
            bridges[bridge] = {
                "acs_ctl": ctl,
                "caps_readable": info.get("caps_readable", False),
                "redirecting": bool(ctl) and any(ctl.get(f) for f in ("SrcValid", "ReqRedir", "CmpltRedir")),
            }
    readable = all(b["caps_readable"] for b in bridges.values()) and all(
        devices[g["bus_id"]]["caps_readable"] for g in gpus
    )
    return {
        "gpus": gpus,
        "bridges": bridges,
        "caps_readable": readable,
        "redirecting": sorted(bus for bus, b in bridges.items() if b["redirecting"]),
        "acs_enabled": any(b["redirecting"] for b in bridges.values()),
    }


class NvidiaPciDevices(FactBase):
    """NVIDIA GPUs (vendor 10de, class 0300/0302) as `lspci -Dnn` lists them, driver or not.

    .. code:: python

        host.get_fact(NvidiaPciDevices)
        {"status": "ok", "exit_code": 0, "error": None, "count": 2, "devices": [
            {"bus_id": "0000:01:00.0", "class": "0300", "vendor_id": "10de", "device_id": "2b85",
             "description": "NVIDIA Corporation GB202 [GeForce RTX 5090]", "rev": "a1"}, ...]}

    With ``dump_file``, the devices come from an ``lspci -x`` dump instead of the bus (a dump
    captured on a node for an offline check, or the lab's stand-in GPUs).
    """

    def command(self, dump_file: str | None = None):
        if dump_file:
            return wrap("lspci", f"lspci -Dnn -F {shlex.quote(dump_file)}")
        # Without pciutils, read sysfs and print what `lspci -Dnn` would (minus the names); the
        # loop's status is 0 (a `continue` or an `echo` is the last thing it runs).
        return wrap_answer(
            "if command -v lspci >/dev/null 2>&1; then lspci -Dnn 2>&1; "
            "else for d in /sys/bus/pci/devices/*; do [ -r \"$d/vendor\" ] || continue; "
            "v=$(cat \"$d/vendor\"); [ \"$v\" = 0x10de ] || continue; "
            "echo \"${d##*/} PCI device [$(cut -c3-6 \"$d/class\")]: NVIDIA Corporation Device [10de:$(cut -c3-6 \"$d/device\")]\"; "
            "done; fi"
        )

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "no output", "count": 0, "devices": []}

    def process(self, output):
        result, body = envelope(output)
        devices = parse_lspci_nn(body) if result["status"] == "ok" else []
        return {**result, "count": len(devices), "devices": devices}


class PcieAcs(FactBase):
    """PCIe ACS on the bridges above each NVIDIA GPU (needs root to read capabilities: run it
    with `_sudo=True`; without root `caps_readable` is False and the ACS state is unknown).

    .. code:: python

        host.get_fact(PcieAcs, _sudo=True)
        {"status": "ok", "exit_code": 0, "error": None,
         "gpus": [{"bus_id": "0000:01:00.0", "upstream": ["0000:00:01.1"]}, ...],
         "bridges": {"0000:00:01.1": {"acs_ctl": {"SrcValid": True, "ReqRedir": True, ...},
                                      "caps_readable": True, "redirecting": True}},
         "caps_readable": True, "redirecting": ["0000:00:01.1"], "acs_enabled": True}
    """

    command = wrap(
        "lspci",
        f'(lspci -Dnnvvv; rc=$?; echo {SYSFS_MARK}; '
        f'for d in /sys/bus/pci/devices/*; do readlink -f "$d"; done; exit $rc)',
    )

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "no output", "gpus": [], "bridges": {},
                "caps_readable": False, "redirecting": [], "acs_enabled": False}

    def process(self, output):
        result, body = envelope(output)
        if result["status"] != "ok":
            return {**self.default(), **result}
        return {**result, **parse_acs(body)}


class PcieLinks(FactBase):
    """PCIe link of each NVIDIA GPU (vendor 10de, class 0300/0302): the speed and width it can do
    (LnkCap) and the ones it runs at (LnkSta), from `lspci -Dnnvv`. Reading capabilities needs root:
    run it with `_sudo=True`; without root a GPU's ``readable`` is False and its values are None.

    .. code:: python

        host.get_fact(PcieLinks, _sudo=True)
        {"status": "ok", "exit_code": 0, "error": None, "links": [
            {"bus_id": "0000:01:00.0", "max_speed_gts": 32.0, "max_width": 16,
             "speed_gts": 2.5, "width": 16, "readable": True}, ...]}

    With ``dump_file``, the GPUs come from an ``lspci -xxx`` dump instead of the bus (a dump
    captured on a node for an offline check, or the lab's stand-in GPUs). An ``lspci -x`` dump
    stops at 64 bytes, before the capabilities: lspci says ``<access denied>`` and ``readable`` is
    False, as without root.
    """

    def command(self, dump_file: str | None = None):
        source = f" -F {shlex.quote(dump_file)}" if dump_file else ""
        return wrap("lspci", f"lspci -Dnnvv -d {NVIDIA_VENDOR}:{source}")

    @staticmethod
    def default():
        return {"status": "missing", "exit_code": None, "error": "no output", "links": []}

    def process(self, output):
        result, body = envelope(output)
        return {**result, "links": parse_links(body) if result["status"] == "ok" else []}
