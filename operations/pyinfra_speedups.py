"""Four of pyinfra's per-operation costs, computed faster with the same results.

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
* ``pop_global_arguments`` looks up each of the ~30 global arguments in ``host.data`` (``_sudo``,
  ``_env``...), for every operation and every fact read. Each lookup walks the host's data layers
  (override, host, groups, all, deploy), and the groups layer merges every group's data into a new
  dict first: ~16,800 lookups and ~44,000 dict merges for a no-op converge of the lab (about a
  third of the control process's CPU). Here the layers are read once per call and every key looked
  up in them, in the same order, with the same copy of the value.
* ``make_formatted_string_command`` splits its template with ``shlex.split`` (pure Python, ~0.07 ms
  for pyinfra's ``File`` fact) on every call, and the file facts call it for every path they read:
  ~220 times in a no-op converge of the lab (read once when the prefetch builds the command, once
  when the answer is processed). Its templates are the facts' constant strings, so here the module's
  ``shlex`` is one whose ``split`` remembers each string's answer (a new list for each caller).

``install()`` replaces all four in pyinfra's modules, once per process. ``prefetch_facts()``
(operations/fact_prefetch.py) calls it, so it is in place wherever deploy.py plans (the pyinfra
CLI, gpufleet's runs, drift) from each host's first operation on.
tests/unit/test_pyinfra_speedups.py compares each with pyinfra's own on the pinned version, and
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
import shlex
import sys
from collections.abc import Callable
from copy import copy
from typing import Any

import pyinfra

# By module path: ``pyinfra.api.operation`` is also the name of pyinfra's decorator.
_arguments = importlib.import_module("pyinfra.api.arguments")
_deploy = importlib.import_module("pyinfra.api.deploy")
_facts = importlib.import_module("pyinfra.api.facts")
_host = importlib.import_module("pyinfra.api.host")
_operation = importlib.import_module("pyinfra.api.operation")
_util = importlib.import_module("pyinfra.api.util")
_command = importlib.import_module("pyinfra.api.command")

# The source of the functions replaced here, as the pinned pyinfra has them: a pyinfra whose
# functions differ is left alone (``install`` returns False) until this module is looked at again.
REPLACED = {
    "get_operation_order_from_stack": "f4807f61585570e0",
    "all_global_arguments": "f7afbc472d78c5d2",
    "pop_global_arguments": "a12a311539ff5068",
    "HostData.__getattr__": "87152f64f2a65e53",
    "make_formatted_string_command": "6d699a2480b77b40",
}


def source_digest(func) -> str:
    return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()[:16]


def pinned_sources() -> dict[str, str]:
    """The digests of what this module replaces or mirrors, as the installed pyinfra has them."""
    return {
        "get_operation_order_from_stack": source_digest(_PYINFRA_ORDER),
        "all_global_arguments": source_digest(_PYINFRA_GLOBAL_ARGUMENTS),
        "pop_global_arguments": source_digest(_PYINFRA_POP_GLOBAL_ARGUMENTS),
        "HostData.__getattr__": source_digest(_host.HostData.__getattr__),
        "make_formatted_string_command": source_digest(_command.make_formatted_string_command),
    }


_PYINFRA_ORDER = _util.get_operation_order_from_stack
_PYINFRA_GLOBAL_ARGUMENTS = _arguments.all_global_arguments
_PYINFRA_POP_GLOBAL_ARGUMENTS = _arguments.pop_global_arguments


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


def host_data_lookup(host_data) -> Callable[[str], Any]:
    """``key -> getattr(host_data, key, default_sentinel)``, with the data layers read once.

    pyinfra's ``HostData.__getattr__`` calls each layer's function (the groups layer merges every
    group's data) and looks the key up in it, for every key. Here the layers are called once and
    every key is looked up in them merged, the first layer that has it winning, its value copied,
    as pyinfra does. Nothing changes the layers during one ``pop_global_arguments``. Anything but
    pyinfra's ``HostData`` of plain dicts, and a key that is an attribute of the object itself,
    is left to ``getattr``.
    """
    if type(host_data) is not _host.HostData:
        return lambda key: getattr(host_data, key, _arguments.default_sentinel)
    layers = list(_host.extract_callable_datas(host_data.datas))
    if any(type(layer) is not dict for layer in layers):  # a mapping of its own: its own lookup
        return lambda key: getattr(host_data, key, _arguments.default_sentinel)
    merged: dict[str, Any] = {}
    for layer in reversed(layers):  # the first layer that has a key wins, as in pyinfra's walk
        merged.update(layer)

    def lookup(key: str) -> Any:
        if key in host_data.__dict__ or hasattr(_host.HostData, key):
            return getattr(host_data, key, _arguments.default_sentinel)
        if key in merged:
            return copy(merged[key])
        return _arguments.default_sentinel

    return lookup


def pop_global_arguments_one_pass(state, host, kwargs: dict[str, Any]):
    """pyinfra's ``pop_global_arguments``, with ``host.data`` read once (``host_data_lookup``).

    The rest is pyinfra's own code, line for line: the order of precedence (the operation's
    arguments, the current @deploy's, the host's data, the config), the handlers, the type checks.
    """
    config = state.config
    if _arguments.ctx_config.isset():
        config = _arguments.ctx_config.get()
        assert config is not None

    cdkwargs = host.current_deploy_kwargs
    meta_kwargs: dict[str, Any] = cdkwargs or {}

    arguments: dict[str, Any] = {}
    found_keys: list[str] = []
    host_default_of = host_data_lookup(host.data)

    for key, type_ in _arguments.all_global_arguments():
        argument_meta = _arguments.all_argument_meta[key]
        handler = argument_meta.handler
        default: Any = argument_meta.default(config)

        host_default = host_default_of(key)
        if host_default is not _arguments.default_sentinel:
            default = host_default

        if key in kwargs:
            found_keys.append(key)
            value = kwargs.pop(key)
        else:
            value = meta_kwargs.get(key, default)

        if handler:
            value = handler(config, value)

        if value != default:
            _arguments.raise_if_bad_type(
                value,
                type_,
                _arguments.ArgumentTypeError,
                f"Invalid argument `{key}`:",
            )

        arguments[key] = value
    return arguments, found_keys


@functools.lru_cache(maxsize=1024)
def _split_once(string: str, comments: bool, posix: bool) -> tuple[str, ...]:
    return tuple(shlex.split(string, comments, posix))


class SplitRemembered:
    """``shlex`` as ``pyinfra.api.command`` uses it, with ``split`` remembering each string's
    answer (a new list per call, as ``shlex.split`` returns); everything else is ``shlex``'s."""

    quote = staticmethod(shlex.quote)  # StringCommand quotes every bit with it: no __getattr__ on the way

    def __getattr__(self, name: str) -> Any:
        return getattr(shlex, name)

    @staticmethod
    def split(s, comments: bool = False, posix: bool = True) -> list[str]:
        if type(s) is not str:
            return shlex.split(s, comments, posix)  # anything else (a stream): as shlex reads it
        return list(_split_once(s, comments, posix))


@functools.cache
def install() -> bool:
    """Put all four in place in pyinfra's modules, once; False (nothing replaced) for another pyinfra."""
    try:
        if pinned_sources() != REPLACED:
            return False
    except (OSError, TypeError):  # pyinfra installed without its sources: cannot tell, leave it
        return False
    _util.get_operation_order_from_stack = operation_order_from_frames
    _operation.get_operation_order_from_stack = operation_order_from_frames
    _arguments.all_global_arguments = global_arguments_once
    _facts.all_global_arguments = global_arguments_once
    for module in (_arguments, _deploy, _facts, _operation):
        module.pop_global_arguments = pop_global_arguments_one_pass
    _command.shlex = SplitRemembered()
    return True
