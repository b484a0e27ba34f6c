"""Two of pyinfra's per-operation costs, computed faster with the same results.

pyinfra (pinned exactly in pyproject.toml) spends a GPU node's plan mostly on bookkeeping around
each operation and fact read, and two pieces of it do far more work than their answers need:

* ``get_operation_order_from_stack`` orders an operation by the line numbers of its call stack.
  It walks the stack with ``inspect.stack()``, which also finds every frame's source file and reads
  its source line (~1.6 ms for a 40-frame stack, ~100 operations per GPU node per plan). Here the
  same walk uses the frames' own filename and line number (``f_code.co_filename``, ``f_lineno``: what
  ``inspect.getframeinfo`` returns for frames of ``.py`` files): ~0.01 ms.
* ``all_global_arguments`` returns the names and types of pyinfra's global arguments, a fixed
  TypedDict, by calling ``typing.get_type_hints`` on it each time (~0.14 ms), for every operation
  and every fact read. Here it is computed once.

``install()`` replaces both in pyinfra's modules, once per process. ``prefetch_facts()``
(operations/fact_prefetch.py) calls it, so it is in place wherever deploy.py plans (the pyinfra
CLI, gpufleet's runs, drift) from each host's first operation on.
tests/unit/test_pyinfra_speedups.py compares both with pyinfra's own on the pinned version, and
fails when a pyinfra upgrade changes the functions replaced here.

Example::

    from operations import pyinfra_speedups
    pyinfra_speedups.install()
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import sys

import pyinfra

# By module path: ``pyinfra.api.operation`` is also the name of pyinfra's decorator.
_arguments = importlib.import_module("pyinfra.api.arguments")
_facts = importlib.import_module("pyinfra.api.facts")
_operation = importlib.import_module("pyinfra.api.operation")
_util = importlib.import_module("pyinfra.api.util")

# The source of the functions replaced here, as the pinned pyinfra has them: a pyinfra whose
# functions differ is left alone (``install`` returns False) until this module is looked at again.
REPLACED = {
    "get_operation_order_from_stack": "f4807f61585570e0",
    "all_global_arguments": "f7afbc472d78c5d2",
}


def source_digest(func) -> str:
    return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16]


_PYINFRA_ORDER = _util.get_operation_order_from_stack
_PYINFRA_GLOBAL_ARGUMENTS = _arguments.all_global_arguments


def operation_order_from_frames(state) -> list[int]:
    """pyinfra's ``get_operation_order_from_stack(state)``, from the frames themselves."""
    own = sys._getframe(0)  # pyinfra's walk starts at its own frame (and skips it: pyinfra's file)
    frames = []
    frame = own
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()  # outermost first, as pyinfra's reversed(stack())

    i = 0
    if state.current_deploy_filename:
        for i, item in enumerate(frames):  # noqa: B007 - pyinfra keeps the last index when none matches
            if item.f_code.co_filename == state.current_deploy_filename:
                break

    line_numbers = []
    if pyinfra.is_cli:
        line_numbers.append(state.current_op_file_number)
    for item in frames[i:]:
        if item is own or item.f_code.co_filename.startswith(_util.PYINFRA_INSTALL_DIR):
            continue
        line_numbers.append(item.f_lineno)
    return line_numbers


@functools.cache
def _global_arguments() -> tuple[tuple[str, type], ...]:
    return tuple(_PYINFRA_GLOBAL_ARGUMENTS())


def global_arguments_once() -> list[tuple[str, type]]:
    """pyinfra's ``all_global_arguments()``, computed once (a new list each call, as pyinfra's)."""
    return list(_global_arguments())


@functools.cache
def install() -> bool:
    """Put both in place in pyinfra's modules, once; False (nothing replaced) for another pyinfra."""
    try:
        if (source_digest(_PYINFRA_ORDER) != REPLACED["get_operation_order_from_stack"]
                or source_digest(_PYINFRA_GLOBAL_ARGUMENTS) != REPLACED["all_global_arguments"]):
            return False
    except (OSError, TypeError):  # pyinfra installed without its sources: cannot tell, leave it
        return False
    _util.get_operation_order_from_stack = operation_order_from_frames
    _operation.get_operation_order_from_stack = operation_order_from_frames
    _arguments.all_global_arguments = global_arguments_once
    _facts.all_global_arguments = global_arguments_once
    return True
