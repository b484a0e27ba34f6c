"""Operations fed with facts, asserting the exact commands they yield (pyinfra's own harness).

Each folder under tests/operations/ is ``<module>.<operation>`` of operations/; each JSON file
in it is one case: ``args``/``kwargs``, the ``facts`` the host reports, and the ``commands``
expected (``[]`` plus ``noop_description`` when nothing must change). Most cases are stored by
tests/operations/make_*_cases.py from what the operations yield; the command lines that matter most
(vLLM's ``docker run``, nginx's swap script, the NCCL apt pin) are also written out by hand in
tests/unit/test_handwritten_commands.py.
"""

from pathlib import Path

from pyinfra_testing.operations import make_operation_tests

CASES = Path(__file__).parent / "operations"

for _folder in sorted(p for p in CASES.iterdir() if p.is_dir()):
    _name = "Test" + "".join(part.title() for part in _folder.name.replace("_", ".").split("."))
    globals()[_name] = make_operation_tests("operations", _folder.name, _folder)
