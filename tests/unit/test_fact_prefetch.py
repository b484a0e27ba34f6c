"""operations/fact_prefetch.py against pyinfra's own fact reads on this machine (@local)."""

from __future__ import annotations

import datetime
import json
import os

import gevent
import gevent.subprocess
import pytest
from pyinfra import host as current_host
from pyinfra.api import Config, Inventory, OperationError, State
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_host, ctx_state
from pyinfra.facts.files import Directory, File, FileContents, Sha1File
from pyinfra.facts.server import Command

from operations import fact_prefetch, read_lanes


@pytest.fixture
def preparing(tmp_path, monkeypatch):
    """A real pyinfra State on @local in its Prepare stage, with the cache in tmp_path."""
    monkeypatch.setenv("GPUFLEET_CACHE_DIR", str(tmp_path / "cache"))
    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    [host] = list(state.inventory)
    with ctx_state.use(state), ctx_host.use(host):
        yield state, host
    disconnect_all(state)


def _remember(host, *facts):
    path = fact_prefetch.cache_file(host.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    path.write_text(json.dumps({"facts": [{"fact": f"{cls.__module__}.{cls.__qualname__}", "kwargs": kwargs,
                                           "asked": asked or today} for cls, kwargs, asked in facts]}))
    return path


def _count_commands(host, monkeypatch):
    runs = []
    real = host.run_shell_command

    def counted(command, **kwargs):
        runs.append(command)
        return real(command, **kwargs)

    monkeypatch.setattr(host, "run_shell_command", counted)
    return runs


def _without_atime(value):
    return {k: v for k, v in value.items() if k != "atime"} if isinstance(value, dict) else value


def test_prefetched_answers_are_pyinfras_and_cost_one_round_trip(preparing, tmp_path, monkeypatch):
    state, host = preparing
    text = tmp_path / "a file"  # a space: every command quotes its path
    text.write_text("one\ntwo\n")
    asked = [(File, {"path": str(text)}), (Sha1File, {"path": str(text)}), (FileContents, {"path": str(text)}),
             (Directory, {"path": str(tmp_path)}), (File, {"path": str(tmp_path / "missing")}),
             (Sha1File, {"path": str(tmp_path / "missing")})]
    _remember(host, *[(cls, kwargs, None) for cls, kwargs in asked])
    runs = _count_commands(host, monkeypatch)

    assert fact_prefetch.prefetch_facts() == len(asked)
    assert len(runs) == 1
    prefetched = [host.get_fact(cls, **kwargs) for cls, kwargs in asked]
    assert len(runs) == 1  # every answer came from the one command
    own = [type(host).get_fact(host, cls, **kwargs) for cls, kwargs in asked]
    # Reading the file (its sha1, its content) between the two reads may move its access time.
    assert [_without_atime(v) for v in prefetched] == [_without_atime(v) for v in own]
    assert prefetched[2] == ["one", "two"] and prefetched[4] is None and prefetched[5] is None


def test_what_was_not_prefetched_or_failed_is_read_by_pyinfra_and_remembered(preparing, tmp_path, monkeypatch):
    state, host = preparing
    path = _remember(host, (Command, {"command": "echo partial; exit 3"}, None))
    fact_prefetch.prefetch_facts()
    runs = _count_commands(host, monkeypatch)

    # The failed command is read again by pyinfra (its error handling, not ours)...
    assert host.get_fact(Command, command="echo partial; exit 3", _ignore_errors=True) is None
    # ... and a fact new to the list is read, then remembered for the next plan.
    assert host.get_fact(Directory, path=str(tmp_path)) is not None
    assert len(runs) == 2
    remembered = {(e["fact"], json.dumps(e["kwargs"])) for e in json.loads(path.read_text())["facts"]}
    assert ("pyinfra.facts.files.Directory", json.dumps({"path": str(tmp_path)})) in remembered


def test_execution_answers_from_the_snapshot_until_a_command_ran_on_the_host(preparing, tmp_path, monkeypatch):
    state, host = preparing
    target = tmp_path / "f"
    target.write_text("before\n")
    _remember(host, (FileContents, {"path": str(target)}, None))
    fact_prefetch.prefetch_facts()
    runs = _count_commands(host, monkeypatch)
    state.set_stage(StateStage.Execute)
    # No operation ran anything on the host yet: the snapshot still holds, no round trip.
    assert host.get_fact(FileContents, path=str(target)) == ["before"] and runs == []
    # An operation's command (here it changes the file): from now on pyinfra re-reads.
    assert host.run_shell_command(f"echo after > {target}")[0]
    assert host.get_fact(FileContents, path=str(target)) == ["after"]
    assert len(runs) == 2


def test_an_upload_ends_the_snapshot_too(preparing, tmp_path):
    state, host = preparing
    target = tmp_path / "f"
    target.write_text("before\n")
    _remember(host, (FileContents, {"path": str(target)}, None))
    fact_prefetch.prefetch_facts()
    state.set_stage(StateStage.Execute)
    source = tmp_path / "new"
    source.write_text("uploaded\n")
    assert host.put_file(str(source), str(target))
    assert host.get_fact(FileContents, path=str(target)) == ["uploaded"]


class LiveContents(FileContents):
    """A fact about another host's service, as HttpOk and UpstreamHealth are."""

    read_live_at_execution = True


def _live_contents_remembered(preparing, tmp_path):
    from operations.facts.net import HttpOk

    assert HttpOk.read_live_at_execution is True
    state, host = preparing
    target = tmp_path / "f"
    target.write_text("before\n")
    _remember(host, (LiveContents, {"path": str(target)}, None), (FileContents, {"path": str(target)}, None))
    fact_prefetch.prefetch_facts()
    assert host.get_fact(LiveContents, path=str(target)) == ["before"]  # the plan reads the snapshot
    target.write_text("after\n")  # what another host's operation would do to the service
    return state, host, target


def test_a_fact_about_other_hosts_answers_from_the_snapshot_while_nothing_executed(preparing, tmp_path, monkeypatch):
    """read_live_at_execution facts: at execution, while no operation on any host has run anything,
    the snapshot is still this run's moment (no round trip); once an operation ran something, even
    a Python callback that sends no command to any host (a service changed through its API), they
    are read live. The host's other facts still answer from the snapshot: nothing ran on it."""
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops
    from pyinfra.operations import python, server

    state, host, target = _live_contents_remembered(preparing, tmp_path)
    add_op(state, server.shell, commands=[])  # yields nothing: not something that ran
    add_op(state, python.call, function=lambda: None)  # changes nothing a fact can see
    runs = _count_commands(host, monkeypatch)
    state.set_stage(StateStage.Execute)
    assert host.get_fact(LiveContents, path=str(target)) == ["before"] and runs == []
    assert not fact_prefetch.anything_executed(state)

    run_ops(state)
    assert runs == []  # the callback sent no command: only the run watch saw it
    assert fact_prefetch.anything_executed(state)
    assert host.get_fact(LiveContents, path=str(target)) == ["after"] and len(runs) == 1
    assert host.get_fact(FileContents, path=str(target)) == ["before"] and len(runs) == 1


def test_an_operation_that_yielded_nothing_is_not_something_that_ran(preparing):
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops
    from pyinfra.operations import server

    state, host = preparing
    add_op(state, server.shell, commands=[])
    state.set_stage(StateStage.Execute)
    run_ops(state)
    assert not fact_prefetch.anything_executed(state)


def test_the_watch_counts_what_execution_yields_not_what_planning_does(preparing):
    from pyinfra.api.operation import add_op
    from pyinfra.api.operations import run_ops
    from pyinfra.operations import python

    state, host = preparing
    fact_prefetch.watch_what_runs(state)
    fact_prefetch.watch_what_runs(state)  # once per State
    assert sum(isinstance(h, fact_prefetch._RunWatch) for h in state.callback_handlers) == 1
    add_op(state, python.call, function=lambda: None)
    [op_hash] = state.get_op_order()
    assert state.ops[host][op_hash].operation_meta.will_change  # planning ran its generator
    assert not fact_prefetch.something_ran(state)
    state.set_stage(StateStage.Execute)
    run_ops(state, serial=True)  # host by host, as pyinfra's --serial
    assert fact_prefetch.something_ran(state)


def test_a_fact_about_other_hosts_is_read_live_from_an_old_snapshot(preparing, tmp_path, monkeypatch):
    """A snapshot older than LIVE_SNAPSHOT_MAX_AGE_S (a confirmation prompt, a wait for another
    host's lock) says nothing about other hosts' services now: read live, though nothing ran."""
    state, host, target = _live_contents_remembered(preparing, tmp_path)
    state.set_stage(StateStage.Execute)
    facts = host.get_fact
    facts.snapshot_at -= fact_prefetch.LIVE_SNAPSHOT_MAX_AGE_S + 1
    assert not fact_prefetch.anything_executed(state)
    assert host.get_fact(LiveContents, path=str(target)) == ["after"]
    assert host.get_fact(FileContents, path=str(target)) == ["before"]  # the host's own: the lock holds it


def test_a_fact_about_other_hosts_is_read_live_after_a_command_on_its_own_host(preparing, tmp_path, monkeypatch):
    state, host, target = _live_contents_remembered(preparing, tmp_path)
    state.set_stage(StateStage.Execute)
    assert host.run_shell_command("true")[0]
    assert host.get_fact(LiveContents, path=str(target)) == ["after"]


def test_a_command_in_flight_on_another_prefetched_host_counts_as_executed(tmp_path, monkeypatch):
    """A command on a prefetched host counts, also one no operation yielded (gpufleet code at execution)."""
    monkeypatch.setenv("GPUFLEET_CACHE_DIR", str(tmp_path / "cache"))
    state = State(Inventory((["@local", "gpu-node-9"], {})), Config())  # never connected: no host is touched
    _, other = list(state.inventory)
    other.get_fact = fact_prefetch._PrefetchedFacts(state, other)
    assert not fact_prefetch.anything_executed(state)
    other.get_fact.commands_ran = True
    assert fact_prefetch.anything_executed(state)


def test_facts_not_asked_for_a_week_are_forgotten(preparing, tmp_path, monkeypatch):
    state, host = preparing
    old = (datetime.date.today() - datetime.timedelta(days=fact_prefetch.FORGET_AFTER_DAYS + 1)).isoformat()
    _remember(host, (Directory, {"path": str(tmp_path)}, old), (File, {"path": str(tmp_path / "x")}, None))
    assert fact_prefetch.prefetch_facts() == 1


def test_outside_prepare_nothing_is_installed(preparing):
    state, host = preparing
    state.set_stage(StateStage.Execute)
    assert fact_prefetch.prefetch_facts() == 0
    assert "get_fact" not in host.__dict__


def test_reads_none_of_the_last_runs_asked_are_forgotten_and_asked_ones_are_kept(preparing, tmp_path):
    state, host = preparing
    run = 10  # the list says the host had 10 runs: this one is the 11th
    recent, stale = str(tmp_path / "recent"), str(tmp_path / "stale")
    path = fact_prefetch.cache_file(host.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    path.write_text(json.dumps({"runs": {"deploy": run}, "facts": [
        {"fact": "pyinfra.facts.files.Directory", "kwargs": {"path": recent}, "asked": today,
         "runs": {"deploy": run + 1 - fact_prefetch.KEEP_RUNS}},
        {"fact": "pyinfra.facts.files.Directory", "kwargs": {"path": stale}, "asked": today,
         "runs": {"deploy": run - fact_prefetch.KEEP_RUNS}}]}))
    assert fact_prefetch.prefetch_facts() == 1  # the stale one is not read
    assert host.get_fact(Directory, path=recent) is None  # asked again (answered from the snapshot)
    host.disconnect()  # the run ends
    kept = json.loads(path.read_text())
    assert [e["kwargs"]["path"] for e in kept["facts"]] == [recent] and kept["runs"] == {"deploy": run + 1}
    assert kept["facts"][0]["runs"] == {"deploy": run + 1}  # this run asked it: it lives KEEP_RUNS runs more


def test_a_read_asked_again_is_saved_when_the_run_disconnects_not_per_read(preparing, tmp_path):
    state, host = preparing
    path = _remember(host, (Directory, {"path": str(tmp_path)}, None))
    fact_prefetch.prefetch_facts()
    before = path.read_text()
    assert host.get_fact(Directory, path=str(tmp_path)) is not None
    assert path.read_text() == before  # no write per read of a known fact
    host.disconnect()
    saved = json.loads(path.read_text())
    assert saved["runs"] == {"deploy": 1} and saved["facts"][0]["runs"]["deploy"] == 1  # the first run counted


def test_reads_remembered_before_runs_were_counted_are_forgotten_once_enough_runs_miss_them(preparing, tmp_path):
    state, host = preparing
    path = fact_prefetch.cache_file(host.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    old = {"fact": "pyinfra.facts.files.Directory", "kwargs": {"path": str(tmp_path)}, "asked": today}  # no "run"
    path.write_text(json.dumps({"runs": {"deploy": fact_prefetch.KEEP_RUNS - 1}, "facts": [old]}))
    assert fact_prefetch.prefetch_facts() == 1  # still within the last KEEP_RUNS runs (deploy run 0)
    path.write_text(json.dumps({"runs": {"deploy": fact_prefetch.KEEP_RUNS}, "facts": [old]}))
    host.get_fact = type(host).get_fact.__get__(host)  # a new plan of the host
    assert fact_prefetch.prefetch_facts() == 0


def test_a_list_from_before_runs_were_counted_per_kind_is_read_by_both_kinds(preparing, tmp_path):
    state, host = preparing
    path = fact_prefetch.cache_file(host.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    entry = {"fact": "pyinfra.facts.files.Directory", "kwargs": {"path": str(tmp_path)}, "asked": today, "run": 5}
    # Counts that are not per kind (an unreleased commit of stop 19 wrote integers; stop 18, none).
    path.write_text(json.dumps({"runs": 5, "facts": [entry]}))
    setattr(state, fact_prefetch.READS_KIND_ATTRIBUTE, "drift")
    assert fact_prefetch.prefetch_facts() == 1
    assert host.get_fact(Directory, path=str(tmp_path)) is not None
    host.disconnect()
    saved = json.loads(path.read_text())
    assert saved["runs"] == {"drift": 1} and "run" not in saved["facts"][0]
    assert saved["facts"][0]["runs"]["drift"] == 1


def test_each_kind_of_run_prefetches_what_its_own_runs_asked(preparing, tmp_path):
    """A drift check's runtime reads are not in a deploy's snapshot, and no number of deploys
    drops them from the drift check's."""
    state, host = preparing
    plan_read, drift_only = str(tmp_path / "plan"), str(tmp_path / "drift")

    def one_run(kind: str, asks: list[str]) -> int:
        host.get_fact = type(host).get_fact.__get__(host)  # a new plan of the host
        setattr(state, fact_prefetch.READS_KIND_ATTRIBUTE, kind)
        count = fact_prefetch.prefetch_facts()
        for path in asks:
            host.get_fact(Directory, path=path)
        host.disconnect()
        return count

    assert one_run("drift", [plan_read, drift_only]) == 0  # nothing remembered yet
    assert one_run("deploy", [plan_read]) == 0  # a deploy has no runs of its own yet
    for _ in range(fact_prefetch.KEEP_RUNS + 2):
        assert one_run("deploy", [plan_read]) == 1  # the plan's read only
    assert one_run("drift", [plan_read, drift_only]) == 2  # both, after any number of deploys
    for _ in range(fact_prefetch.KEEP_RUNS + 1):
        one_run("drift", [plan_read])
    assert one_run("drift", []) == 1  # a read no drift asked in KEEP_RUNS drifts is dropped


def test_a_fact_asked_with_other_arguments_of_execution_is_read_again(preparing, tmp_path, monkeypatch):
    # Prefetched without _chdir; asked with it: another shell context, so pyinfra reads it itself.
    state, host = preparing
    _remember(host, (Directory, {"path": str(tmp_path)}, None))
    fact_prefetch.prefetch_facts()
    runs = _count_commands(host, monkeypatch)
    assert host.get_fact(Directory, path=str(tmp_path), _chdir="/tmp") is not None
    assert len(runs) == 1
    assert host.get_fact(Directory, path=str(tmp_path)) is not None and len(runs) == 1  # same context: prefetched


def test_a_read_that_is_not_a_fact_is_asked_once_while_nothing_runs_on_the_host(preparing, tmp_path):
    state, host = preparing
    fact_prefetch.prefetch_facts()
    asked = []

    def read():
        asked.append(state.current_stage)
        return len(asked)

    assert fact_prefetch.read_once("k", read) == 1  # planning asks
    state.set_stage(StateStage.Execute)
    assert fact_prefetch.read_once("k", read) == 1 and len(asked) == 1  # execution: the plan's answer
    assert host.run_shell_command("true")[0]  # an operation ran something on the host
    assert fact_prefetch.read_once("k", read) == 2  # asked again


def test_a_read_ahead_runs_beside_the_plan_as_its_host_and_read_once_takes_its_answer(preparing):
    state, host = preparing
    fact_prefetch.prefetch_facts()
    ran_as = []

    def slow_read():
        ran_as.append(current_host._get_module())
        gevent.sleep(0.05)
        return "ahead"

    fact_prefetch.read_ahead("k", slow_read)
    assert ran_as == []  # starts when this greenlet waits, not inside read_ahead
    gevent.sleep(0.01)
    assert ran_as == [host]  # pyinfra's host context is per greenlet: the read has the plan's
    assert fact_prefetch.read_once("k", lambda: pytest.fail("read again")) == "ahead"
    state.set_stage(StateStage.Execute)
    assert fact_prefetch.read_once("k", lambda: pytest.fail("read again")) == "ahead"  # nothing ran since


def test_a_read_ahead_that_fails_raises_where_read_once_waits_for_it(preparing, capsys):
    fact_prefetch.prefetch_facts()

    def refused():
        raise OperationError("Milvus refused root")

    fact_prefetch.read_ahead("k", refused)
    gevent.sleep(0.01)
    with pytest.raises(OperationError, match="refused root"):
        fact_prefetch.read_once("k", lambda: pytest.fail("read again"))
    assert "Traceback" not in capsys.readouterr().err  # not a greenlet dying loudly on the side
    assert fact_prefetch.read_once("k", lambda: "asked again") == "asked again"  # a failure is not kept


def _sleeper(tmp_path):
    """A read ahead that waits on a child process (as the Milvus users check does) and says its pid."""
    pid_file = tmp_path / "child.pid"

    def read():
        return gevent.subprocess.run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"]).returncode

    def child_gone() -> bool:
        try:
            os.kill(int(pid_file.read_text()), 0)
        except ProcessLookupError:
            return True
        return False
    return read, pid_file, child_gone


def test_a_read_ahead_is_cancelled_and_read_again_at_execution_once_a_command_ran(preparing, tmp_path):
    state, host = preparing
    fact_prefetch.prefetch_facts()
    read, pid_file, child_gone = _sleeper(tmp_path)
    fact_prefetch.read_ahead("k", read)
    gevent.sleep(0.2)
    assert pid_file.exists() and not child_gone()
    state.set_stage(StateStage.Execute)
    assert host.run_shell_command("true")[0]
    assert fact_prefetch.read_once("k", lambda: "after") == "after"
    gevent.sleep(0.2)
    assert child_gone()  # the stale read's child is killed, not left to run out its 30 s


def test_a_read_ahead_nobody_waited_for_is_cancelled_when_the_host_disconnects(preparing, tmp_path):
    state, host = preparing
    fact_prefetch.prefetch_facts()
    read, pid_file, child_gone = _sleeper(tmp_path)
    fact_prefetch.read_ahead("k", read)  # and the plan stops before it gets to read_once
    gevent.sleep(0.2)
    assert not child_gone()
    host.disconnect()
    assert child_gone()


def test_a_command_beside_a_read_ahead_inside_a_fact_read_is_still_a_change(preparing):
    """The read ahead's fact reads are not changes, but only on its own greenlet: an operation's
    command on the plan's greenlet meanwhile is one, and must end the snapshot."""
    state, host = preparing
    fact_prefetch.prefetch_facts()
    fact_prefetch.read_ahead("k", lambda: host.get_fact(Command, command="sleep 0.5; echo read"))
    gevent.sleep(0.1)  # the read ahead is now waiting inside its fact read
    ahead = host.get_fact.planned_reads["k"]
    state.set_stage(StateStage.Execute)
    assert host.run_shell_command("true")[0]
    assert host.get_fact.commands_ran
    assert fact_prefetch.read_once("k", lambda: "again") == "again"
    gevent.sleep(0.01)
    assert ahead.greenlet.dead  # cancelled: its answer predates the command


def _read_once_inside_an_operation(host, key: str):
    """``read_once(key)`` while an operation with global arguments of its own is in progress."""
    host.current_op_global_arguments = {"_chdir": "/tmp", "_timeout": 3}
    try:
        return fact_prefetch.read_once(key, lambda: pytest.fail("read again"))
    finally:
        host.current_op_global_arguments = None


def test_reads_ahead_start_outside_any_operation_even_with_nothing_to_prefetch(preparing):
    """pyinfra gives a fact read the global arguments of the operation in progress on its host: a
    read ahead must have made its first read before the plan's first operation, also when the
    snapshot has nothing to read and so never waits."""
    state, host = preparing
    seen = []

    def read():
        seen.append(dict(host.current_op_global_arguments or {}))
        return "read"

    fact_prefetch.prefetch_facts(reads_ahead=lambda: fact_prefetch.read_ahead("k", read))
    assert _read_once_inside_an_operation(host, "k") == "read"
    assert seen == [{}]


def test_a_read_at_execution_is_remembered_for_the_next_plan(preparing, tmp_path, monkeypatch):
    """`pyinfra -y` runs no operation while preparing: its facts are first asked at execution, after
    a command ran, and must still be on the list the next plan prefetches."""
    state, host = preparing
    path = _remember(host)
    fact_prefetch.prefetch_facts()
    state.set_stage(StateStage.Execute)
    assert host.run_shell_command("true")[0]  # an operation ran: reads are pyinfra's own from here
    assert host.get_fact(Directory, path=str(tmp_path)) is not None
    remembered = {(e["fact"], json.dumps(e["kwargs"])) for e in json.loads(path.read_text())["facts"]}
    assert ("pyinfra.facts.files.Directory", json.dumps({"path": str(tmp_path)})) in remembered


class TimedOutRead(Command):
    """A read whose tool the host killed at its limit (operations/facts/util.py: wrap's marker)."""

    def process(self, output):
        from operations.facts.util import raise_on_timeout

        raise_on_timeout(output)
        return output


def test_a_read_the_host_timed_out_is_not_read_again(preparing, monkeypatch):
    """Reading a hung tool again would hold the run for its limit a second time: the prefetched
    answer fails the host as pyinfra's own read of it does, with the same error."""
    state, host = preparing
    command = "echo partial; echo __gpufleet_timeout=60"
    _remember(host, (TimedOutRead, {"command": command}, None))
    fact_prefetch.prefetch_facts()
    runs = _count_commands(host, monkeypatch)
    errors = []
    monkeypatch.setattr(fact_prefetch, "log_error_or_warning",
                        lambda host, ignore, description, exception: errors.append((description, str(exception))))

    # The host fails; it is this run's only host, so pyinfra stops the run, as after its own read.
    with pytest.raises(PyinfraError, match="No hosts remaining"):
        host.get_fact(TimedOutRead, command=command)
    assert runs == []  # answered from the prefetch: no second wait
    assert host in state.failed_hosts
    assert errors == [(f"could not process fact: {TimedOutRead().name} command={command}",
                       "no answer within 60 s (killed on the host)")]


def test_reads_run_side_by_side_and_answer_in_order_as_if_read_alone(preparing, tmp_path, monkeypatch):
    """More reads than lanes: each answer is its own command's, an `exit` ends only its read, and the
    scratch directory on the host is gone afterwards."""
    state, host = preparing
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    # Sleeps that would add up to 1.2 s one after another; each prints its own number.
    commands = [f"sleep 0.{i % 3}; echo read-{i}; echo line-2-of-{i}" for i in range(9)]
    commands[4] = "echo partial; exit 3"
    _remember(host, *[(Command, {"command": c}, None) for c in commands])
    runs = _count_commands(host, monkeypatch)

    assert fact_prefetch.prefetch_facts() == len(commands)
    assert len(runs) == 1
    answers = [host.get_fact(Command, command=c, _ignore_errors=True) for c in commands]
    assert len(runs) == 2  # the failed read (exit 3) alone is read again, by pyinfra
    assert answers[4] is None
    assert [a for i, a in enumerate(answers) if i != 4] == [f"read-{i}\nline-2-of-{i}" for i in range(9) if i != 4]
    assert list(scratch.iterdir()) == []


def test_a_host_where_the_scratch_directory_cannot_be_made_is_read_one_by_one(preparing, tmp_path, monkeypatch):
    state, host = preparing
    monkeypatch.setenv("TMPDIR", str(tmp_path / "no-such-directory"))
    _remember(host, (Command, {"command": "echo one"}, None), (Command, {"command": "echo two"}, None))
    runs = _count_commands(host, monkeypatch)

    assert fact_prefetch.prefetch_facts() == 0
    assert [host.get_fact(Command, command=c) for c in ("echo one", "echo two")] == ["one", "two"]
    assert len(runs) == 3  # the failed prefetch, then pyinfra's own two reads


def test_reads_overlap_in_lanes_and_one_lane_reads_one_after_another(tmp_path):
    """Each read marks its start, waits, then counts the starts: a read beside another sees two."""
    import subprocess

    from pyinfra.api import StringCommand

    def first_count(lanes):
        marks = tmp_path / f"lanes-{lanes}"
        marks.mkdir()
        reads = [StringCommand(f"touch {marks}/{i}; sleep 0.5; ls {marks} | wc -l") for i in range(4)]
        text = read_lanes.concurrent_reads(reads, "__m", lanes).get_raw_value()
        out = subprocess.run(["sh", "-c", text], capture_output=True, text=True, check=True).stdout.split()
        return int(out[out.index("__m:0") + 1])

    assert first_count(4) >= 2
    assert first_count(1) == 1


def test_a_read_whose_file_is_gone_only_loses_its_own_answer():
    """One read's block missing (its lane killed part-way) must not fail the whole prefetch, which
    would send every fact of the host back to one read each."""
    import subprocess

    from pyinfra.api import StringCommand

    reads = [StringCommand("echo", "a"), StringCommand('rm -f "$__gpufleet_reads/0"; echo b')]
    text = read_lanes.concurrent_reads(reads, "__m", 1).get_raw_value()
    run = subprocess.run(["sh", "-c", text], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["__m:1", "b", "__m:rc:0", "__m:lane:0:0"]


def test_a_fact_that_remembers_its_latest_arguments_only(preparing, tmp_path):
    """VllmNcclVersions' arguments are the answers it has: an older set is not read again."""
    state, host = preparing

    class Knowing(Command):
        @staticmethod
        def prefetch_kwargs(host_name):
            return {"command": "echo second"}

    Knowing.__module__, Knowing.__qualname__ = __name__, "Knowing"
    globals()["Knowing"] = Knowing
    fact_prefetch.prefetch_facts()
    assert host.get_fact(Knowing, command="echo first") == "first"
    assert host.get_fact(Command, command="echo other") == "other"
    assert host.get_fact(Knowing, command="echo second") == "second"
    entries = json.loads(fact_prefetch.cache_file(host.name).read_text())["facts"]
    assert sorted((e["fact"].rsplit(".", 1)[1], e["kwargs"]["command"]) for e in entries) == [
        ("Command", "echo other"), ("Knowing", "echo second")]


def test_a_fact_with_prefetch_kwargs_is_prefetched_with_what_the_control_host_knows_now(preparing, tmp_path):
    """Remembered with the arguments of the run that asked (a run old); prefetched with today's."""
    state, host = preparing
    today = tmp_path / "today"
    today.write_text("echo today\n")

    class Asking(Command):
        @staticmethod
        def prefetch_kwargs(host_name):
            return {"command": today.read_text().strip()}

    Asking.__module__, Asking.__qualname__ = __name__, "Asking"
    globals()["Asking"] = Asking
    _remember(host, (Asking, {"command": "echo yesterday"}, None))
    assert fact_prefetch.prefetch_facts() == 1
    assert [lines for _, _, lines in host.get_fact.answers.values()] == [["today"]]


@pytest.mark.parametrize("signal_name, code", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_the_scratch_directory_goes_when_the_read_is_killed(tmp_path, signal_name, code):
    """The control side gives up (SIGTERM) or goes away (SIGHUP): nothing is left in $TMPDIR."""
    import os
    import signal
    import subprocess
    import time

    from pyinfra.api import StringCommand

    text = read_lanes.concurrent_reads([StringCommand("sleep", "5"), StringCommand("echo", "x")], "__m", 4).get_raw_value()
    run = subprocess.Popen(["sh", "-c", text], env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not list(tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.iterdir()), "the scratch directory was never made"
    run.send_signal(getattr(signal, signal_name))
    assert run.wait(timeout=10) == code
    assert list(tmp_path.iterdir()) == []


class LeadStandIn:
    """What prefetch_facts asks of ``first`` (operations/deploy_lock.DeployLock, whose shell is tested
    with a real flock in tests/unit/test_deploy_lock.py): a shell lead, its answers kept."""

    def __init__(self, state, host, text="echo ACQUIRED", can_lead=True):
        from pyinfra.api.arguments import pop_global_arguments

        self.host, self.text, self.can_lead = host, text, can_lead
        self.global_kwargs, _ = pop_global_arguments(state, host, {})
        self.answers, self.taken = [], 0

    def lead_command(self):
        return self.text if self.can_lead else None

    def answer(self, lines, exit_code):
        self.answers.append((lines, exit_code))
        if exit_code != 0:
            raise OperationError(f"refused: {lines}")

    def take(self):
        self.taken += 1
        self.host.run_shell_command("true")  # as DeployLock.take: a command of its own on the host


def test_the_lead_runs_first_in_the_same_round_trip(preparing, tmp_path, monkeypatch):
    state, host = preparing
    _remember(host, (Command, {"command": "echo one"}, None), (File, {"path": str(tmp_path)}, None))
    runs = _count_commands(host, monkeypatch)
    lead = LeadStandIn(state, host, text="echo ACQUIRED; echo oops >&2")

    assert fact_prefetch.prefetch_facts(first=lead) == 2
    assert len(runs) == 1 and lead.taken == 0
    assert lead.answers == [(["ACQUIRED", "oops"], 0)]  # its stdout and stderr, its exit status
    assert host.get_fact(Command, command="echo one") == "one"
    assert len(runs) == 1


def test_a_lead_that_refuses_stops_the_reads_and_the_plan(preparing, tmp_path, monkeypatch):
    state, host = preparing
    _remember(host, (Command, {"command": f"touch {tmp_path}/read; echo one"}, None))
    runs = _count_commands(host, monkeypatch)
    lead = LeadStandIn(state, host, text="echo HELD; exit 3")

    with pytest.raises(OperationError, match="refused"):
        fact_prefetch.prefetch_facts(first=lead)
    assert lead.answers == [(["HELD"], 3)] and len(runs) == 1
    assert not (tmp_path / "read").exists(), "a read ran although the lead refused"


def test_the_lead_runs_with_nothing_to_read_and_alone_where_it_cannot_lead(preparing, monkeypatch):
    state, host = preparing
    runs = _count_commands(host, monkeypatch)
    lead = LeadStandIn(state, host)
    assert fact_prefetch.prefetch_facts(first=lead) == 0
    assert lead.answers == [(["ACQUIRED"], 0)] and len(runs) == 1

    cannot = LeadStandIn(state, host, can_lead=False)
    host.__dict__.pop("get_fact")  # a new plan of the host
    assert fact_prefetch.prefetch_facts(first=cannot) == 0
    assert cannot.taken == 1 and cannot.answers == []


def test_reads_ahead_touch_the_host_only_once_the_lead_answered(preparing, tmp_path, monkeypatch):
    """Reads ahead start beside the snapshot's command, led by the lock: their fact reads wait for
    its answer and then answer from the snapshot (no command of their own), their commands wait
    for it, and the lock's command is no change to the host (execution answers from the snapshot)."""
    state, host = preparing
    locked = f"test -e {tmp_path}/locked && echo after"
    _remember(host, (Command, {"command": locked}, None))
    runs = _count_commands(host, monkeypatch)
    lead = LeadStandIn(state, host, text=f"sleep 0.3; echo ACQUIRED; touch {tmp_path}/locked")

    fact_prefetch.prefetch_facts(reads_ahead=lambda: fact_prefetch.read_ahead(
        "k", lambda: host.get_fact(Command, command=locked)), first=lead)
    assert fact_prefetch.read_once("k", lambda: pytest.fail("read again")) == "after"
    assert lead.answers == [(["ACQUIRED"], 0)] and lead.taken == 0
    assert len(runs) == 1  # the snapshot's command only: the read ahead's read came with it
    state.set_stage(StateStage.Execute)
    assert host.get_fact(Command, command=locked) == "after"
    assert len(runs) == 1


def test_a_read_aheads_own_command_waits_for_the_lead_too(preparing, tmp_path):
    state, host = preparing
    lead = LeadStandIn(state, host, text=f"sleep 0.3; echo ACQUIRED; touch {tmp_path}/locked")

    def read():
        ok, output = host.run_shell_command(f"test -e {tmp_path}/locked && echo after")
        return output.stdout

    fact_prefetch.prefetch_facts(reads_ahead=lambda: fact_prefetch.read_ahead("k", read), first=lead)
    assert fact_prefetch.read_once("k", lambda: pytest.fail("read again")) == "after"


def test_reads_ahead_behind_a_lead_still_read_outside_any_operation(preparing, monkeypatch):
    """pyinfra gives a fact read the arguments of the operation in progress on its host: a read
    ahead that waited for the lead goes on before the plan's first operation."""
    state, host = preparing
    seen = []

    real = fact_prefetch._fact_kwargs

    def fact_kwargs(*args):  # where pyinfra takes a read's global arguments from the operation in progress
        if gevent.getcurrent() is not main:
            seen.append(dict(host.current_op_global_arguments or {}))
        return real(*args)

    main = gevent.getcurrent()
    monkeypatch.setattr(fact_prefetch, "_fact_kwargs", fact_kwargs)
    fact_prefetch.prefetch_facts(reads_ahead=lambda: fact_prefetch.read_ahead(
        "k", lambda: host.get_fact(Command, command="echo read")),
        first=LeadStandIn(state, host, text="sleep 0.2; echo ACQUIRED"))
    assert _read_once_inside_an_operation(host, "k") == "read"
    assert seen == [{}]


def test_reads_ahead_that_fail_to_start_do_not_leave_the_lead_shut(preparing, tmp_path):
    state, host = preparing

    def start_then_fail():
        fact_prefetch.read_ahead("k", lambda: host.get_fact(Command, command="echo read"))
        raise OperationError("could not start the rest")

    with pytest.raises(OperationError, match="could not start the rest"):
        fact_prefetch.prefetch_facts(reads_ahead=start_then_fail, first=LeadStandIn(state, host))
    with gevent.Timeout(5), pytest.raises(OperationError, match="not read: could not start the rest"):
        fact_prefetch.read_once("k", lambda: pytest.fail("read again"))


def test_reads_ahead_run_nothing_on_a_host_whose_lead_refused(preparing, tmp_path):
    state, host = preparing
    lead = LeadStandIn(state, host, text="echo HELD; exit 3")

    def read():
        return host.get_fact(Command, command=f"touch {tmp_path}/read; echo read")

    with pytest.raises(OperationError, match="refused"):
        fact_prefetch.prefetch_facts(reads_ahead=lambda: fact_prefetch.read_ahead("k", read), first=lead)
    with pytest.raises(OperationError, match="not read: refused"):
        fact_prefetch.read_once("k", lambda: pytest.fail("read again"))
    assert not (tmp_path / "read").exists()


def test_a_read_that_does_not_parse_is_read_alone_and_the_lead_still_answers(preparing, monkeypatch):
    state, host = preparing
    _remember(host, (Command, {"command": "echo 'unbalanced"}, None), (Command, {"command": "echo one"}, None))
    runs = _count_commands(host, monkeypatch)
    lead = LeadStandIn(state, host)

    # The read that does not parse fails its own lane's shell only (operations/read_lanes.py).
    assert fact_prefetch.prefetch_facts(first=lead) == 1
    assert lead.answers == [(["ACQUIRED"], 0)] and lead.taken == 0
    assert host.get_fact(Command, command="echo one") == "one"
    assert len(runs) == 1  # the prefetch answered the other read
    # The one that does not parse: pyinfra's own read, which fails the host (its only one).
    with pytest.raises(PyinfraError, match="No hosts remaining"):
        host.get_fact(Command, command="echo 'unbalanced")
    assert len(runs) == 2 and host in state.failed_hosts


def test_a_remembered_read_whose_arguments_the_fact_no_longer_takes_is_dropped(preparing, monkeypatch):
    """A gpufleet upgrade renamed or removed a fact's argument: the reads remembered by the older
    version must not stop every plan of the host (for FORGET_AFTER_DAYS); they are left out."""
    state, host = preparing
    _remember(host, (Command, {"command": "echo one", "gone": 1}, None), (Command, {"command": "echo two"}, None))
    assert fact_prefetch.prefetch_facts() == 1
    assert host.get_fact(Command, command="echo two") == "two"


def test_a_remembered_fact_class_this_version_no_longer_has_is_left_out():
    """Drift's ManagedContainers was removed at stop 26; the lists on control hosts still name it.
    The prefetch and bench-reads both skip such a read (one helper), never a failed plan."""
    from operations.fact_prefetch import remembered_fact_class
    from operations.facts.container_runtime import ContainerRuntimes

    assert remembered_fact_class("operations.facts.container_runtime.ContainerRuntimes") is ContainerRuntimes
    assert remembered_fact_class("operations.facts.docker.ManagedContainers") is None
    assert remembered_fact_class("operations.facts.no_such_module.Fact") is None
    assert remembered_fact_class("NoModule") is None
