"""deploy_run.execute: what a plan executes, against real pyinfra operations on this machine (@local)."""

from __future__ import annotations

import pytest
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.operation import add_op
from pyinfra.api.state import StateStage
from pyinfra.operations import files

import gpufleet.deploy_run as deploy_run
from gpufleet.deploy_run import Plan, execute
from operations.fact_prefetch import anything_executed, something_ran


@pytest.fixture
def local_state():
    state = State(Inventory((["@local"], {})), Config())
    connect_all(state)
    yield state
    disconnect_all(state)


def test_execute_starts_at_the_first_change_and_reevaluates_from_there(tmp_path, local_state):
    before, first, after = tmp_path / "before", tmp_path / "first", tmp_path / "after"
    before.mkdir()
    after.mkdir()
    for path in (before, first, after):
        add_op(local_state, files.directory, path=str(path))
    [host] = list(local_state.inventory)
    plan = Plan(local_state, fleet=None, hosts=[host])
    assert [op.will_change for op in plan.ops(host)] == [False, True, False]

    # Changed behind the plan's back: the operation before the first change keeps its plan
    # (skipped, not read again); the one after it is evaluated again at execution, as pyinfra does.
    before.rmdir()
    after.rmdir()
    assert execute(plan, [host.name]) == {host.name: True}
    assert first.is_dir() and after.is_dir()
    assert not before.exists()


def test_a_skipped_operation_runs_after_all_once_anything_ran_before_it(tmp_path, local_state, monkeypatch):
    """The prefix is skipped for what changed on its own host; another host's operation that ran
    before it may have changed what it waits for. Asked when the operation executes, not when the
    plan is made: here, "something ran" from the moment execution starts."""
    kept = tmp_path / "kept"
    kept.mkdir()
    add_op(local_state, files.directory, path=str(kept))
    [host] = list(local_state.inventory)
    plan = Plan(local_state, fleet=None, hosts=[host])
    assert [op.will_change for op in plan.ops(host)] == [False]
    kept.rmdir()
    monkeypatch.setattr(deploy_run, "something_ran", lambda state: state.current_stage == StateStage.Execute)
    assert execute(plan, [host.name]) == {host.name: True}
    assert kept.is_dir()  # evaluated again at execution, as pyinfra does


def test_execute_notes_on_the_state_that_an_operation_yielded_a_command(tmp_path, local_state):
    add_op(local_state, files.directory, path=str(tmp_path / "new"))
    [host] = list(local_state.inventory)
    plan = Plan(local_state, fleet=None, hosts=[host])
    assert not something_ran(local_state)
    assert execute(plan, [host.name]) == {host.name: True}
    assert something_ran(local_state) and anything_executed(local_state)


def test_execute_without_any_change_runs_nothing(tmp_path, local_state):
    kept = tmp_path / "kept"
    kept.mkdir()
    add_op(local_state, files.directory, path=str(kept))
    [host] = list(local_state.inventory)
    plan = Plan(local_state, fleet=None, hosts=[host])
    kept.rmdir()
    assert execute(plan, [host.name]) == {host.name: True}
    assert not kept.exists()
    assert not something_ran(local_state)  # nothing yielded: a later skipped operation stays skipped


def test_a_plan_made_without_change_checks_executes_every_operation(tmp_path):
    state = State(Inventory((["@local"], {})), Config(), check_for_changes=False)
    connect_all(state)
    try:
        made = tmp_path / "made"
        add_op(state, files.directory, path=str(made))
        [host] = list(state.inventory)
        assert execute(Plan(state, fleet=None, hosts=[host]), [host.name]) == {host.name: True}
        assert made.is_dir()  # nothing was known to be unchanged, so nothing was skipped
    finally:
        disconnect_all(state)


def test_an_error_pyinfras_cli_wrapped_is_named_not_raised_again():
    """pyinfra's exec_file wraps what a deploy file raised in UnexpectedExternalError, whose str()
    raises AttributeError: a host's plan error must still be reported, by the error inside."""
    from pyinfra_cli.exceptions import UnexpectedExternalError

    from gpufleet.deploy_run import _message

    try:
        raise TypeError("command() got an unexpected keyword argument 'gone'")
    except TypeError as exc:
        wrapped = UnexpectedExternalError(exc, "deploy.py")
    assert _message(wrapped) == "TypeError: command() got an unexpected keyword argument 'gone'"
