"""One ``systemctl show`` for every unit of a plan (operations/facts/systemd_show.py): what each read
cuts out of the batch is what its own command printed, on real systemd (tests/fixtures/systemd:
captured on a lab node); a batch that did not answer every unit answers none."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from operations.fact_batches import Batch, Batches, reader_of
from operations.facts.edge import ServiceState
from operations.facts.util import ReadTimedOut

SHOW = Path(__file__).parent.parent / "fixtures" / "systemd" / "show.txt"
UNITS = ["docker.service", "nvidia-persistenced.service", "prometheus-node-exporter", "nope.service", "sshd"]
NO_USER = {"user_mode": False, "machine": None, "user_name": None}


def _captured() -> dict[str, tuple[list[str], int]]:
    """{command: (its stdout lines, its exit status)} from the capture."""
    sections: dict[str, tuple[list[str], int]] = {}
    command, lines = None, []
    for line in SHOW.read_text().splitlines():
        if line.startswith("## rc="):
            sections[command] = (lines, int(line[len("## rc="):]))
            command, lines = None, []
        elif line.startswith("## "):
            command, lines = line[3:], []
        elif command is not None:
            lines.append(line)
    return sections


CAPTURED = _captured()
EVERY_PROPERTY = ("systemctl show --all --property Id --property SubState --property UnitFileState "
                  "--property ActiveState -- " + " ".join(UNITS))


def _own(command) -> list[str]:
    """What a read's own command printed on the lab node (it must be one the capture ran)."""
    text = command.get_raw_value() if hasattr(command, "get_raw_value") else str(command)
    for captured, (lines, rc) in CAPTURED.items():
        if text == captured or f"'{captured}'" in text:  # alone, or inside the time limit's sh -c
            return lines if "__gpufleet_rc" not in text else [*lines, f"__gpufleet_rc={rc}"]
    raise AssertionError(f"not captured: {text}")


def _pyinfra_reads():
    reads = [(cls, {**NO_USER, "services": [unit]}) for unit in UNITS for cls in (SystemdStatus, SystemdEnabled)]
    reads.append((SystemdStatus, {**NO_USER, "services": ["docker.service", "nope.service"]}))
    return reads


def test_pyinfras_unit_reads_cut_from_one_show_are_what_each_printed_alone():
    batches = Batches()
    reads = _pyinfra_reads()
    for i, (cls, kwargs) in enumerate(reads):
        assert batches.add(str(i), cls, kwargs)
    [batch] = batches  # SystemdStatus and SystemdEnabled: one systemctl
    assert batch.command().startswith("systemctl show --all --property Id --property SubState --property UnitFileState")
    # systemd prints each block's lines in its own order, whatever was asked: the capture asked more.
    answers = batch.answers(CAPTURED[EVERY_PROPERTY][0])
    assert [answers[str(i)] for i in range(len(reads))] == [_own(cls().command(**kwargs)) for cls, kwargs in reads]
    # Not vacuous: the alias answers as its unit, the missing unit as dead, two units as two blocks.
    assert SystemdStatus().process(answers["6"]) == {"nope.service": False}
    assert SystemdEnabled().process(answers["9"]) == {"ssh.service": True}
    assert answers[str(len(reads) - 1)] == ["Id=docker.service", "SubState=running", "", "Id=nope.service",
                                            "SubState=dead"]


def test_service_states_cut_from_one_show_are_what_each_printed_alone():
    batches = Batches()
    for unit in UNITS:
        assert batches.add(unit, ServiceState, {"service": unit})
    [batch] = batches
    assert "timeout -k 5 60 sh -c" in batch.command()  # one time limit for the batch, as each read has its own
    answers = batch.answers([*CAPTURED[EVERY_PROPERTY][0], "__gpufleet_rc=0"])
    assert [answers[unit] for unit in UNITS] == [_own(ServiceState().command(unit)) for unit in UNITS]
    assert ServiceState().process(answers["sshd"]) == {"active": "active", "enabled": "enabled"}  # not "alias"
    assert ServiceState().process(answers["nope.service"]) == {"active": "inactive", "enabled": None}


BLOCKS = CAPTURED[EVERY_PROPERTY][0]


@pytest.mark.parametrize("lines, exit_code", [
    (BLOCKS, 1),  # systemctl failed: no systemd as PID 1, a name it refused
    (BLOCKS[:-5], 0),  # one block short (killed part-way)
    ([*BLOCKS, "", "Id=extra.service", "SubState=dead"], 0),  # one block more (a name that matched two)
    (["System has not been booted with systemd as init system (PID 1). Can't operate."], 0),
    ([], 0),
], ids=["failed", "short", "extra-block", "no-systemd", "nothing"])
def test_a_show_that_did_not_answer_one_block_per_unit_answers_no_read(lines, exit_code):
    reads = _pyinfra_reads()[:len(UNITS) * 2]
    batch = Batch(reader_of(SystemdStatus), {str(i): reader_of(cls).batch_member(cls, kwargs)
                                             for i, (cls, kwargs) in enumerate(reads)})
    assert batch.answers(lines, exit_code) == {}
    states = Batch(reader_of(ServiceState), {u: {"service": u} for u in UNITS})
    assert states.answers([*lines, f"__gpufleet_rc={exit_code}"]) == {}


def test_service_states_killed_at_their_limit_each_read_as_timed_out():
    batch = Batch(reader_of(ServiceState), {u: {"service": u} for u in UNITS[:2]})
    answers = batch.answers(["Id=docker.service", "__gpufleet_timeout=60", "__gpufleet_rc=124"])
    assert list(answers) == UNITS[:2]
    with pytest.raises(ReadTimedOut):
        ServiceState().process(answers[UNITS[1]])


@pytest.mark.parametrize("cls, kwargs", [
    (SystemdStatus, {**NO_USER, "services": ["*.service"]}),  # a glob: several blocks for one name
    (SystemdStatus, {**NO_USER, "services": None}),  # every unit
    (SystemdStatus, {**NO_USER, "services": []}),
    (SystemdEnabled, {**NO_USER, "user_mode": True, "services": ["docker.service"]}),
    (SystemdEnabled, {**NO_USER, "machine": "other", "services": ["docker.service"]}),
    (SystemdStatus, {**NO_USER, "services": ["a b.service"]}),  # needs quoting
    (ServiceState, {"service": "docker*"}),
    (ServiceState, {"service": "it's"}),
])
def test_reads_a_batch_cannot_answer_are_read_alone(cls, kwargs):
    assert not Batches().add("k", cls, kwargs)
