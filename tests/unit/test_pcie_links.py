"""The PcieLinks fact (LnkCap/LnkSta of each NVIDIA GPU from `lspci -vv`) and the lab's stand-in
PCI dump (gpufleet/lab/pcidump.py) that gives it something to read.

The `lspci -vv` texts below are written by hand in the format pciutils 3.x prints (ls-caps.c:
"LnkCap:\tPort #%d, Speed %s, Width x%d, ASPM ...", "LnkSta:\tSpeed %s%s, Width x%d%s" with
" (downgraded)" when below LnkCap; 3.5-3.7 also printed " (ok)"); no published capture of an
RTX 5090's LnkCap was found. The lab dump is decoded by the real lspci when pciutils is installed.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from gpufleet.lab.pcidump import config_space, lspci_dump
from operations.facts import pci

# `sudo lspci -Dvv` (no -nn): an AMD root port, an RTX 5090 behind it idling at 2.5 GT/s (a GPU
# drops its link speed when idle), its audio function, a second GPU from pciutils 3.6 with
# "(ok)", and the BMC's ASPEED VGA (class 0300, not NVIDIA).
LSPCI_VV = """\
0000:00:01.1 PCI bridge: Advanced Micro Devices, Inc. [AMD] Starship/Matisse GPP Bridge (prog-if 00 [Normal decode])
	Control: I/O+ Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx+
	Status: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-
	Bus: primary=00, secondary=01, subordinate=01, sec-latency=0
	Capabilities: [58] Express (v2) Root Port (Slot+), MSI 00
		LnkCap:	Port #0, Speed 16GT/s, Width x16, ASPM L1, Exit Latency L1 <64us
			ClockPM- Surprise- LLActRep+ BwNot+ ASPMOptComp+
		LnkSta:	Speed 2.5GT/s, Width x16
			TrErr- Train- SlotClk+ DLActive+ BWMgmt+ ABWMgmt-
	Kernel driver in use: pcieport

0000:01:00.0 VGA compatible controller: NVIDIA Corporation GB202 [GeForce RTX 5090] (rev a1) (prog-if 00 [VGA controller])
	Subsystem: NVIDIA Corporation Device 2051
	Control: I/O+ Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx+
	Status: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-
	Latency: 0
	Interrupt: pin A routed to IRQ 187
	IOMMU group: 14
	Region 0: Memory at f8000000 (32-bit, non-prefetchable) [size=64M]
	Region 1: Memory at 7800000000 (64-bit, prefetchable) [size=32G]
	Capabilities: [40] Power Management version 3
		Flags: PMEClk- DSI- D1- D2- AuxCurrent=0mA PME(D0+,D1-,D2-,D3hot+,D3cold-)
		Status: D0 NoSoftRst+ PME-Enable- DSel=0 DScale=0 PME-
	Capabilities: [60] Express (v2) Legacy Endpoint, MSI 00
		DevCap:	MaxPayload 256 bytes, PhantFunc 0, Latency L0s unlimited, L1 <64us
			ExtTag+ AttnBtn- AttnInd- PwrInd- RBE+ FLReset+
		DevCtl:	CorrErr- NonFatalErr- FatalErr- UnsupReq-
			RlxdOrd+ ExtTag+ PhantFunc- AuxPwr- NoSnoop+ FLReset-
			MaxPayload 256 bytes, MaxReadReq 512 bytes
		DevSta:	CorrErr- NonFatalErr- FatalErr- UnsupReq- AuxPwr- TransPend-
		LnkCap:	Port #0, Speed 32GT/s, Width x16, ASPM L1, Exit Latency L1 unlimited
			ClockPM+ Surprise- LLActRep- BwNot- ASPMOptComp+
		LnkCtl:	ASPM Disabled; RCB 64 bytes, Disabled- CommClk+
			ExtSynch- ClockPM+ AutWidDis- BWInt- AutBWInt-
		LnkSta:	Speed 2.5GT/s (downgraded), Width x16
			TrErr- Train- SlotClk+ DLActive- BWMgmt- ABWMgmt-
		LnkCap2: Supported Link Speeds: 2.5-32GT/s, Crosslink- Retimer+ 2Retimers+ DRS-
		LnkCtl2: Target Link Speed: 32GT/s, EnterCompliance- SpeedDis-
		LnkSta2: Current De-emphasis Level: -3.5dB, EqualizationComplete+ EqualizationPhase1+
			 EqualizationPhase2+ EqualizationPhase3+ LinkEqualizationRequest-
	Capabilities: [100 v1] Virtual Channel
		Caps:	LPEVC=0 RefClk=100ns PATEntryBits=1
	Kernel driver in use: nvidia
	Kernel modules: nvidiafb, nouveau, nvidia_drm, nvidia

0000:01:00.1 Audio device: NVIDIA Corporation Device 22e8 (rev a1)
	Subsystem: NVIDIA Corporation Device 0000
	Capabilities: [60] Express (v2) Endpoint, MSI 00
		LnkCap:	Port #0, Speed 32GT/s, Width x16, ASPM L1, Exit Latency L1 unlimited
		LnkSta:	Speed 2.5GT/s (downgraded), Width x16
	Kernel driver in use: snd_hda_intel

0000:41:00.0 3D controller: NVIDIA Corporation GA100 [A100 PCIe 40GB] (rev a1)
	Subsystem: NVIDIA Corporation Device 145f
	Capabilities: [60] Express (v2) Endpoint, MSI 00
		LnkCap:	Port #0, Speed 16GT/s, Width x16, ASPM not supported
			ClockPM+ Surprise- LLActRep- BwNot- ASPMOptComp+
		LnkSta:	Speed 16GT/s (ok), Width x8 (downgraded)
			TrErr- Train- SlotClk+ DLActive- BWMgmt- ABWMgmt-
	Kernel driver in use: nvidia

0000:c3:00.0 VGA compatible controller: ASPEED Technology, Inc. ASPEED Graphics Family (rev 52) (prog-if 00 [VGA controller])
	Subsystem: ASPEED Technology, Inc. ASPEED Graphics Family
	Capabilities: [50] Express (v2) Legacy Endpoint, MSI 00
		LnkCap:	Port #0, Speed 5GT/s, Width x1, ASPM L0s L1, Exit Latency L0s <512ns, L1 <32us
		LnkSta:	Speed 5GT/s, Width x1
	Kernel driver in use: ast
"""

# The same GPU as a user reads it: lspci cannot read the capabilities without root.
LSPCI_VV_NO_ROOT = """\
0000:01:00.0 VGA compatible controller: NVIDIA Corporation GB202 [GeForce RTX 5090] (rev a1) (prog-if 00 [VGA controller])
	Subsystem: NVIDIA Corporation Device 2051
	Control: I/O+ Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx+
	Status: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-
	Latency: 0
	Interrupt: pin A routed to IRQ 187
	Region 0: Memory at f8000000 (32-bit, non-prefetchable) [size=64M]
	Capabilities: <access denied>
	Kernel driver in use: nvidia
	Kernel modules: nvidiafb, nouveau, nvidia_drm, nvidia
"""

LSPCI = shutil.which("lspci")
needs_lspci = pytest.mark.skipif(LSPCI is None, reason="pciutils (lspci) is not installed: apt-get install pciutils")


def link(bus_id, max_speed, max_width, speed, width, readable=True):
    return {"bus_id": bus_id, "max_speed_gts": max_speed, "max_width": max_width,
            "speed_gts": speed, "width": width, "readable": readable}


# --- parse_links on lspci -vv text --------------------------------------------------------------

def test_real_format_downgraded_and_ok_annotations():
    # (d): the AMD bridge, the NVIDIA audio function and the ASPEED VGA are left out.
    assert pci.parse_links(LSPCI_VV.splitlines()) == [
        link("0000:01:00.0", 32.0, 16, 2.5, 16),
        link("0000:41:00.0", 16.0, 16, 16.0, 8),
    ]


def test_capabilities_access_denied():
    assert pci.parse_links(LSPCI_VV_NO_ROOT.splitlines()) == [link("0000:01:00.0", None, None, None, None, False)]


def test_nn_headers_short_bus_ids_and_no_pci_ids():
    out = [
        "01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GB202 [GeForce RTX 5090] [10de:2b85] "
        "(rev a1) (prog-if 00 [VGA controller])",
        "\t\tLnkCap:\tPort #0, Speed 32GT/s, Width x16, ASPM L1, Exit Latency L1 unlimited",
        "\t\tLnkSta:\tSpeed 32GT/s, Width x16",
        "c3:00.0 VGA compatible controller [0300]: ASPEED Technology, Inc. ASPEED Graphics Family [1a03:2000]",
        "\t\tLnkCap:\tPort #0, Speed 5GT/s, Width x1, ASPM L0s L1",
        "02:00.0 Class 0300: Device 10de:2b85 (rev a1)",  # no pci.ids, no -nn
        "\t\tLnkCap:\tPort #0, Speed 32GT/s, Width x16, ASPM not supported",
        "\t\tLnkSta:\tSpeed unknown (downgraded), Width x8 (downgraded)",
    ]
    assert pci.parse_links(out) == [link("0000:01:00.0", 32.0, 16, 32.0, 16),
                                    link("0000:02:00.0", 32.0, 16, None, 8)]


def test_gpu_without_express_capability():
    out = ["0000:01:00.0 VGA compatible controller: NVIDIA Corporation Device 2b85 (rev a1)",
           "\tStatus: Cap- 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast"]
    assert pci.parse_links(out) == [link("0000:01:00.0", None, None, None, None)]


# --- the fact: command and envelope -------------------------------------------------------------

def test_fact_commands():
    assert "lspci -Dnnvv -d 10de:'" in pci.PcieLinks().command()
    assert "lspci -Dnnvv -d 10de: -F /tmp/x.dump'" in pci.PcieLinks().command("/tmp/x.dump")
    assert "'\"'\"'/tmp/a b'\"'\"'" in pci.PcieLinks().command("/tmp/a b")  # quoted, inside sh -c '...'


def test_fact_process():
    value = pci.PcieLinks().process(LSPCI_VV.splitlines() + ["__gpufleet_rc=0"])
    assert (value["status"], value["exit_code"], value["error"]) == ("ok", 0, None)
    assert [(g["bus_id"], g["speed_gts"]) for g in value["links"]] == [("0000:01:00.0", 2.5), ("0000:41:00.0", 16.0)]
    assert pci.PcieLinks().process(["__gpufleet_missing"]) == {**pci.PcieLinks.default(), "error": "command not found"}
    failed = pci.PcieLinks().process(["lspci: Cannot open /nope", "__gpufleet_rc=1"])
    assert (failed["status"], failed["exit_code"], failed["links"]) == ("failed", 1, [])


def test_fact_command_exits_zero_without_lspci(tmp_path):
    run = subprocess.run(["/bin/sh", "-c", pci.PcieLinks().command()], capture_output=True, text=True,
                         env={"PATH": str(tmp_path)})
    assert run.returncode == 0 and pci.PcieLinks().process(run.stdout.splitlines())["status"] == "missing"


# --- the lab's stand-in dump --------------------------------------------------------------------

def test_dump_config_space_encoding():
    cfg = config_space({})
    assert len(cfg) == 256 and cfg[0x06] & 0x10 and cfg[0x34] == 0x40
    assert (cfg[0x40], cfg[0x41], cfg[0x42]) == (0x10, 0x00, 0x02)  # PCIe cap, last, v2 endpoint
    lnkcap, lnksta = int.from_bytes(cfg[0x4C:0x50], "little"), int.from_bytes(cfg[0x52:0x54], "little")
    assert (lnkcap & 0xF, lnkcap >> 4 & 0x3F) == (5, 16)  # 32 GT/s, x16
    assert (lnksta & 0xF, lnksta >> 4 & 0x3F) == (5, 16)
    slow = config_space({"link_width": 4, "link_speed_gts": 8, "max_link_speed_gts": 16})
    lnkcap, lnksta = int.from_bytes(slow[0x4C:0x50], "little"), int.from_bytes(slow[0x52:0x54], "little")
    assert (lnkcap & 0xF, lnkcap >> 4 & 0x3F, lnksta & 0xF, lnksta >> 4 & 0x3F) == (4, 16, 3, 4)
    with pytest.raises(ValueError):
        config_space({"link_width": 3})
    with pytest.raises(ValueError):
        config_space({"link_speed_gts": 7})


def test_dump_is_lspci_xxx_format():
    dump = lspci_dump([{"pci_bus_id": "00000000:01:00.0"}, {}]).splitlines()
    assert dump[0] == "0000:01:00.0 VGA compatible controller: NVIDIA Corporation Device 2b85 (rev a1)"
    assert [row[:3] for row in dump[1:17]] == [f"{o:02x}:" for o in range(0, 256, 16)]
    assert dump[17] == "" and dump[18].startswith("0000:02:00.0 ")


def _run_fact(fact, dump_file):
    run = subprocess.run(["sh", "-c", fact.command(str(dump_file))], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return fact.process(run.stdout.splitlines())


@needs_lspci
def test_lab_dump_decoded_by_real_lspci(tmp_path):
    dump = tmp_path / "lspci.dump"
    dump.write_text(lspci_dump([{"pci_bus_id": "00000000:01:00.0"},
                                {"pci_bus_id": "00000000:02:00.0", "link_width": 4},
                                {"pci_bus_id": "00000000:03:00.0", "link_width": 4, "link_speed_gts": 2.5}]))
    value = _run_fact(pci.PcieLinks(), dump)
    assert value["status"] == "ok", value
    assert value["links"] == [
        link("0000:01:00.0", 32.0, 16, 32.0, 16),
        link("0000:02:00.0", 32.0, 16, 32.0, 4),
        link("0000:03:00.0", 32.0, 16, 2.5, 4),
    ]
    # Plain `lspci -vv` (no -nn, no -D) reads the same, and marks the narrow links "(downgraded)".
    text = subprocess.run([LSPCI, "-vv", "-F", str(dump)], capture_output=True, text=True, check=True).stdout
    assert "LnkSta:\tSpeed 2.5GT/s (downgraded), Width x4 (downgraded)" in text
    assert "LnkCap:\tPort #0, Speed 32GT/s, Width x16" in text
    assert [(g["bus_id"], g["width"], g["speed_gts"]) for g in pci.parse_links(text.splitlines())] == [
        ("0000:01:00.0", 16, 32.0), ("0000:02:00.0", 4, 32.0), ("0000:03:00.0", 4, 2.5)]


@needs_lspci
def test_lab_dump_x4_pcie4_card(tmp_path):
    dump = tmp_path / "lspci.dump"
    dump.write_text(lspci_dump([{"max_link_width": 4, "max_link_speed_gts": 16}]))
    assert _run_fact(pci.PcieLinks(), dump)["links"] == [link("0000:01:00.0", 16.0, 4, 16.0, 4)]


@needs_lspci
def test_lab_dump_still_read_by_nvidia_pci_devices(tmp_path):
    dump = tmp_path / "lspci.dump"
    dump.write_text(lspci_dump([{"pci_bus_id": "00000000:01:00.0"}, {"pci_bus_id": "00000000:02:00.0"}]))
    value = _run_fact(pci.NvidiaPciDevices(), dump)
    assert (value["status"], value["count"]) == ("ok", 2)
    assert [(d["bus_id"], d["class"], d["vendor_id"], d["device_id"], d["rev"]) for d in value["devices"]] == [
        ("0000:01:00.0", "0300", "10de", "2b85", "a1"), ("0000:02:00.0", "0300", "10de", "2b85", "a1")]
