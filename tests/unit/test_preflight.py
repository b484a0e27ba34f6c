"""Preflight of a would-be GPU node: one failure per check, from fact outputs, and the facts' parsers."""

from __future__ import annotations

import pytest

from operations.facts.host_capacity import FreeDisk, KernelHeaders
from operations.preflight import gpu_node_findings

GPU = {"bus_id": "0000:01:00.0", "class": "0300", "vendor_id": "10de", "device_id": "2b85"}
LINK = {"bus_id": "0000:01:00.0", "readable": True, "width": 16, "max_width": 16, "speed_gts": 32.0,
        "max_speed_gts": 32.0}
GOOD = dict(
    pci={"status": "ok", "devices": [GPU, {**GPU, "bus_id": "0000:02:00.0"}]},
    links={"status": "ok", "links": [LINK, {**LINK, "bus_id": "0000:02:00.0"}]},
    secure_boot={"state": "disabled"},
    disk={"status": "ok", "path": "/var", "free_gib": 400.0},
    headers={"kernel": "6.1.0-27-amd64", "package": "linux-headers-6.1.0-27-amd64", "installed": False,
             "candidate": "6.1.115-1"},
    acs={"acs_enabled": False},
    gpu_count=2, device_id="2b85", min_link_width=16, module_signing="none", min_free_gib=43.0,
)


def findings(**change):
    return gpu_node_findings(**{**GOOD, **change})


def test_a_good_node_passes_without_warnings():
    assert findings() == ([], [])


@pytest.mark.parametrize("change, expected", [
    ({"pci": {"status": "ok", "devices": [GPU]}}, "1 GPU(s) 10de:2b85 on the PCI bus, expected gpu_count=2"),
    ({"pci": {"status": "ok", "devices": [GPU, {**GPU, "device_id": "2684"}]}}, "also found: 10de:2684"),
    ({"pci": {"status": "failed", "error": "exit 1", "devices": []}}, "cannot list the PCI bus"),
    ({"links": {"status": "ok", "links": [{**LINK, "width": 4}]}}, "runs at PCIe x4 (expected at least x16)"),
    ({"secure_boot": {"state": "enabled"}}, "mokutil --import /var/lib/dkms/mok.pub"),
    ({"disk": {"status": "ok", "path": "/var", "free_gib": 30.0}},
     "30 GiB free on /var, expected at least 43 GiB"),
    ({"disk": {"status": "failed", "path": None, "free_gib": None, "error": "df: exit 1"}}, "cannot read the free disk"),
    ({"headers": {**GOOD["headers"], "candidate": None}}, "no linux-headers-6.1.0-27-amd64 for the running kernel"),
])
def test_each_check_stops_the_host_with_what_to_do(change, expected):
    problems, _ = findings(**change)
    assert len(problems) == 1 and expected in problems[0], problems


def test_neighbours_of_each_failure_pass():
    assert findings(secure_boot={"state": "enabled"}, module_signing="mok")[0] == []  # a MOK plan
    assert findings(headers={**GOOD["headers"], "installed": True, "candidate": None})[0] == []  # already there
    assert findings(headers=None)[0] == []  # no DKMS build on this node: nothing asked
    assert findings(links={"status": "ok", "links": [{**LINK, "width": 8}]}, min_link_width=8)[0] == []
    assert findings(gpu_count=0, pci={"status": "ok", "devices": []})[0] == []  # count not pinned
    # Docker runs there already: its disk is monitoring's, not preflight's (a rollout's new image
    # must not make a drained node refuse itself).
    assert findings(disk=None)[0] == []


def test_warnings_never_stop_the_host():
    problems, warnings = findings(links={"status": "ok", "links": [{**LINK, "speed_gts": 2.5},
                                                                   {**LINK, "readable": False, "width": None}]},
                                  acs={"acs_enabled": True, "redirecting": ["0000:00:01.1"]})
    assert problems == []
    assert any("2.5 GT/s of 32" in w for w in warnings) and any("not readable" in w for w in warnings)
    assert any("ACS" in w and "0000:00:01.1" in w for w in warnings)
    # A fresh host without pciutils: the widths (and GPUs read from a dump) are not checked, and it says so.
    problems, warnings = findings(links={"status": "missing", "error": "command not found", "links": []},
                                  pci={"status": "missing", "error": "command not found", "devices": []})
    assert problems == [] and any("install pciutils" in w for w in warnings)
    assert any("GPUs not counted" in w for w in warnings)


def test_all_problems_are_listed_at_once():
    problems, _ = findings(links={"status": "ok", "links": [{**LINK, "width": 4}]}, secure_boot={"state": "enabled"},
                           disk={"status": "ok", "path": "/", "free_gib": 1.0})
    assert len(problems) == 3


def envelope(*lines, rc=0):
    return [*lines, f"__gpufleet_rc={rc}"]


def test_free_disk_fact():
    fact = FreeDisk()
    assert fact.process(envelope("path=/var", "free_kib=432700000")) == {
        "status": "ok", "exit_code": 0, "error": None, "path": "/var", "free_gib": 412.7}
    assert fact.process(envelope("path=/var", rc=1))["free_gib"] is None


def test_kernel_headers_fact():
    fact = KernelHeaders()
    out = fact.process(envelope("kernel=6.1.0-27-amd64", "installed=", "candidate=(none)"))
    assert out["package"] == "linux-headers-6.1.0-27-amd64" and out["candidate"] is None and not out["installed"]
    out = fact.process(envelope("kernel=6.1.0-27-amd64", "installed=ii ", "candidate=6.1.115-1"))
    assert out["installed"] and out["candidate"] == "6.1.115-1"
    # Held (apt-mark hold), and gone from the archive since (a newer ABI replaced it): installed.
    out = fact.process(envelope("kernel=6.1.0-27-amd64", "installed=hi "))
    assert out["installed"] and out["candidate"] is None
    assert not fact.process(envelope("kernel=6.1.0-27-amd64", "installed=rc "))["installed"]
