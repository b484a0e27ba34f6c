"""operations/pyinfra_speedups.py gives pyinfra's own answers, on the pinned pyinfra."""

from __future__ import annotations

import importlib
import textwrap

import pyinfra
import pytest

from operations import pyinfra_speedups

arguments, command, deploy, facts, operation, util = (
    importlib.import_module(f"pyinfra.api.{m}") for m in ("arguments", "command", "deploy", "facts", "operation", "util"))


def test_the_pinned_pyinfra_has_the_functions_replaced_and_install_puts_them_in_place(monkeypatch):
    # A pyinfra upgrade that changes any of these functions fails here: look at the replacement again.
    assert pyinfra_speedups.pinned_sources() == pyinfra_speedups.REPLACED
    for module, name in ((util, "get_operation_order_from_stack"), (operation, "get_operation_order_from_stack"),
                         (arguments, "all_global_arguments"), (facts, "all_global_arguments"),
                         *((m, "pop_global_arguments") for m in (arguments, deploy, facts, operation))):
        monkeypatch.setattr(module, name, getattr(module, name))  # undone after the test
    monkeypatch.setattr(command, "shlex", command.shlex)
    assert pyinfra_speedups.install.__wrapped__() is True
    assert isinstance(command.shlex, pyinfra_speedups.SplitRemembered)
    assert operation.get_operation_order_from_stack is pyinfra_speedups.operation_order_from_frames
    assert util.get_operation_order_from_stack is pyinfra_speedups.operation_order_from_frames
    assert arguments.all_global_arguments is pyinfra_speedups.global_arguments_once
    assert facts.all_global_arguments is pyinfra_speedups.global_arguments_once
    for module in (arguments, deploy, facts, operation):
        assert module.pop_global_arguments is pyinfra_speedups.pop_global_arguments_one_pass


def test_another_pyinfra_is_left_alone(monkeypatch):
    monkeypatch.setitem(pyinfra_speedups.REPLACED, "pop_global_arguments", "0" * 16)
    monkeypatch.setattr(arguments, "pop_global_arguments", pyinfra_speedups._PYINFRA_POP_GLOBAL_ARGUMENTS)
    assert pyinfra_speedups.install.__wrapped__() is False
    assert arguments.pop_global_arguments is pyinfra_speedups._PYINFRA_POP_GLOBAL_ARGUMENTS


def test_global_arguments_are_pyinfras():
    assert pyinfra_speedups.global_arguments_once() == pyinfra_speedups._PYINFRA_GLOBAL_ARGUMENTS()
    first = pyinfra_speedups.global_arguments_once()
    first.clear()  # callers get a list of their own, as from pyinfra
    assert pyinfra_speedups.global_arguments_once() == pyinfra_speedups._PYINFRA_GLOBAL_ARGUMENTS()


class _State:
    def __init__(self, deploy_filename):
        self.current_deploy_filename = deploy_filename
        self.current_op_file_number = 7


@pytest.mark.parametrize("cli", [True, False])
@pytest.mark.parametrize("deploy_file", ["deploy.py", None, "not-on-the-stack.py"])
def test_operation_order_is_pyinfras(tmp_path, monkeypatch, cli, deploy_file):
    """Called from nested functions of a "deploy file" (a real file, several lines apart, one call
    over two lines), both give the same line numbers."""
    monkeypatch.setattr(pyinfra, "is_cli", cli)
    source = tmp_path / "deploy.py"
    source.write_text(textwrap.dedent("""
        def inner(order):
            return order(
                STATE)

        def outer(order):
            x = 1
            return inner(order)

        BOTH = (outer(PYINFRA), outer(OURS))
    """))
    state = _State(str(source) if deploy_file == "deploy.py" else deploy_file)
    namespace = {"STATE": state, "PYINFRA": pyinfra_speedups._PYINFRA_ORDER,
                 "OURS": pyinfra_speedups.operation_order_from_frames}
    exec(compile(source.read_text(), str(source), "exec"), namespace)
    theirs, ours = namespace["BOTH"]
    assert ours == theirs
    if deploy_file == "deploy.py":  # the module's line, outer's call, inner's (multi-line) call
        assert theirs == [7, 10, 8, 3] if cli else theirs == [10, 8, 3]


def _inventory_state():
    """Two hosts whose global-argument defaults come from every data layer pyinfra has."""
    from pyinfra.api import Config, Inventory, State

    inventory = Inventory(
        (["gpu-1", ("gpu-2", {"_sudo_user": "vllm", "_env": {"FROM": "host"},
                                                 "_success_exit_codes": [0, 3]})], {"_timeout": 30}),
        gpu_nodes=(["gpu-1", "gpu-2"], {"_sudo": True, "_env": {"FROM": "group"}, "_retries": 2}),
        edge=(["gpu-2"], {"_shell_executable": "bash", "_retries": 5}),
        override_data={"_chdir": "/srv"},
    )
    state = State(inventory, Config(SUDO_USER="config-user"))
    return state, inventory


CALLS = [
    {},
    {"_sudo": False, "name": "an operation", "path": "/etc/x"},
    {"_env": {"FROM": "kwargs"}, "_ignore_errors": True},
    {"_if": [lambda: True], "_serial": True, "_retries": 1},
]


@pytest.mark.parametrize("host_name", ["gpu-1", "gpu-2"])
@pytest.mark.parametrize("call", range(len(CALLS)))
@pytest.mark.parametrize("deploy_context", [None, {"_sudo_user": "from-deploy", "_timeout": 5}])
def test_pop_global_arguments_is_pyinfras(host_name, call, deploy_context):
    """Same arguments, same keys found, same kwargs left, from host, group, all, override, deploy
    data and the config; with a @deploy's kwargs and deploy data in effect or not."""
    state, inventory = _inventory_state()
    host = inventory.get_host(host_name)
    host.current_deploy_kwargs = deploy_context
    host.current_deploy_data = {"_get_pty": True} if deploy_context else None
    theirs_kwargs, ours_kwargs = dict(CALLS[call]), dict(CALLS[call])
    assert pyinfra_speedups.host_data_lookup(host.data).__name__ == "lookup"  # the one-pass lookup, not getattr
    theirs = pyinfra_speedups._PYINFRA_POP_GLOBAL_ARGUMENTS(state, host, theirs_kwargs)
    ours = pyinfra_speedups.pop_global_arguments_one_pass(state, host, ours_kwargs)
    assert ours == theirs
    assert ours_kwargs == theirs_kwargs
    expected_retries = 5 if host_name == "gpu-2" else 2
    assert ours[0]["_retries"] == (1 if "_retries" in CALLS[call] else expected_retries)
    assert ours[0]["_chdir"] == "/srv"


def test_pop_global_arguments_copies_the_hosts_value_and_checks_types_as_pyinfra():
    state, inventory = _inventory_state()
    host = inventory.get_host("gpu-2")
    arguments_, _ = pyinfra_speedups.pop_global_arguments_one_pass(state, host, {})
    arguments_["_success_exit_codes"].append(4)
    assert host.data._success_exit_codes == [0, 3]  # a copy, as pyinfra's getattr gives
    with pytest.raises(arguments.ArgumentTypeError) as theirs:
        pyinfra_speedups._PYINFRA_POP_GLOBAL_ARGUMENTS(state, host, {"_retries": "many"})
    with pytest.raises(arguments.ArgumentTypeError) as ours:
        pyinfra_speedups.pop_global_arguments_one_pass(state, host, {"_retries": "many"})
    assert str(ours.value) == str(theirs.value)


def test_formatted_commands_are_pyinfras_with_the_split_remembered(monkeypatch):
    """pyinfra's own file facts build the same commands with the remembered split as with
    shlex's, call after call; a caller changing its list changes nobody else's."""
    import shlex

    from pyinfra.facts.files import Directory, File, Sha256File

    def built():
        return [repr(cls().command(path).bits) for cls in (File, Directory, Sha256File)
                for path in ("/etc/gpufleet/a b.conf", "~/x", "/var/lib/gpufleet/$(id)")]

    monkeypatch.setattr(command, "shlex", shlex)
    expected = built()
    monkeypatch.setattr(command, "shlex", pyinfra_speedups.SplitRemembered())
    assert built() == expected and built() == expected
    template = "test -e {0} || ( stat {0} )"
    first = command.shlex.split(template)
    first.append("changed")
    assert command.shlex.split(template) == shlex.split(template)
    assert command.shlex.quote("a b") == "'a b'"  # the rest of shlex is shlex's
