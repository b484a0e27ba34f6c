"""gpufleet/bench_scale.py's child writes the commands its pyinfra run sent, per host."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

import pyinfra_cli.main

from gpufleet import bench_scale, ssh_counting


def test_the_counts_file_holds_the_commands_the_run_sent(tmp_path, monkeypatch):
    sent: list[tuple[str, float, float, str]] = []

    @contextmanager
    def recording():  # as the real one: the list fills while the block runs
        yield sent

    def pyinfra_run():  # three commands over SSH, then pyinfra's CLI exits as it does
        sent.extend([("sim-1", 0.0, 0.1, "lock"), ("sim-1", 0.1, 0.2, "reads"), ("sim-2", 0.0, 0.1, "lock")])
        raise SystemExit(0)

    monkeypatch.setattr(ssh_counting, "recording", recording)
    monkeypatch.setattr(pyinfra_cli.main, "main", pyinfra_run)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    counts_file = tmp_path / "counts.json"

    assert bench_scale.run_pyinfra(str(counts_file), None, ["inventory.py", "deploy.py"]) == 0
    assert json.loads(counts_file.read_text()) == {"sim-1": 2, "sim-2": 1}
