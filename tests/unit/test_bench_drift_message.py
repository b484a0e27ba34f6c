"""gpufleet/bench.py's drift step names what is not clean: a drifted host, or one not checked and why
(an unreachable lab host once read as "the lab is not clean: []")."""

from __future__ import annotations

import pytest

from gpufleet import bench, drift
from gpufleet.drift import DriftReport, HostDrift


def test_a_lab_host_not_checked_is_named_with_its_error(monkeypatch):
    report = DriftReport(hosts=[HostDrift("gpu-node-1", reachable=False, error="unreachable over SSH"),
                                HostDrift("lb-1")], started=0.0)
    monkeypatch.setattr(drift, "check", lambda *args, **kwargs: report)
    with pytest.raises(RuntimeError, match=r"drifted \[\], not checked \{'gpu-node-1': 'unreachable over SSH'\}"):
        bench.drift()


def test_a_clean_lab_passes(monkeypatch):
    monkeypatch.setattr(drift, "check", lambda *args, **kwargs: DriftReport(hosts=[HostDrift("lb-1")], started=0.0))
    bench.drift()
