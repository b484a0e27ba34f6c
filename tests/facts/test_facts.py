"""pyinfra-testing fact cases: tests/facts/<module.Class>/*.json, for the facts in operations/facts/.

make_fact_tests("operations.facts", "gpu.NvidiaGpus", dir) imports operations.facts.gpu and takes
its NvidiaGpus, so each directory is named <module under operations.facts>.<Class>. Each case
checks the exact command and the parsed value for the given output lines. (This file lives in
tests/facts/ so that `pytest tests/unit tests/facts` collects it.)
"""

from pathlib import Path

from pyinfra_testing.facts import make_fact_tests

BASE = Path(__file__).parent
CASE_DIRS = sorted(p.name for p in BASE.iterdir() if p.is_dir() and "." in p.name)

for _name in CASE_DIRS:
    _cls = make_fact_tests("operations.facts", _name, BASE / _name)
    _cls.__name__ = "TestFact_" + _name.replace(".", "_")
    globals()[_cls.__name__] = _cls
del _cls  # pytest collects every TestCase subclass it finds, whatever the name


def test_every_fact_class_has_cases():
    from operations.facts import gpu, kernel, pci
    from pyinfra.api import FactBase

    facts = {f"{m.__name__.rsplit('.', 1)[1]}.{name}" for m in (gpu, kernel, pci)
             for name, obj in vars(m).items()
             if isinstance(obj, type) and issubclass(obj, FactBase) and obj.__module__ == m.__name__}
    assert facts and facts <= set(CASE_DIRS), facts - set(CASE_DIRS)
