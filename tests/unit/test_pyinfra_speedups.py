"""operations/pyinfra_speedups.py gives pyinfra's own answers, on the pinned pyinfra."""

from __future__ import annotations

import importlib
import textwrap

import pyinfra
import pytest

from operations import pyinfra_speedups

arguments, facts, operation, util = (importlib.import_module(f"pyinfra.api.{m}")
                                     for m in ("arguments", "facts", "operation", "util"))


def test_the_pinned_pyinfra_has_the_functions_replaced_and_install_puts_them_in_place(monkeypatch):
    # A pyinfra upgrade that changes either function fails here: look at the replacement again.
    assert pyinfra_speedups.source_digest(pyinfra_speedups._PYINFRA_ORDER) == \
        pyinfra_speedups.REPLACED["get_operation_order_from_stack"]
    assert pyinfra_speedups.source_digest(pyinfra_speedups._PYINFRA_GLOBAL_ARGUMENTS) == \
        pyinfra_speedups.REPLACED["all_global_arguments"]
    for module, name in ((util, "get_operation_order_from_stack"), (operation, "get_operation_order_from_stack"),
                         (arguments, "all_global_arguments"), (facts, "all_global_arguments")):
        monkeypatch.setattr(module, name, getattr(module, name))  # undone after the test
    assert pyinfra_speedups.install.__wrapped__() is True
    assert operation.get_operation_order_from_stack is pyinfra_speedups.operation_order_from_frames
    assert util.get_operation_order_from_stack is pyinfra_speedups.operation_order_from_frames
    assert arguments.all_global_arguments is pyinfra_speedups.global_arguments_once
    assert facts.all_global_arguments is pyinfra_speedups.global_arguments_once


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
