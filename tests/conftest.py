"""Test layout: tests/unit and tests/operations need nothing; tests/lab needs the fleet lab."""

# pyinfra (and gpufleet's CLI) run on gevent: patch the stdlib once, before anything else imports
# it, as pyinfra's own CLI does. Patching later, from inside an import, breaks import locks.
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

LAB_TESTS = Path(__file__).parent / "lab"
# --doctest-modules imports every module under tests/: the case generators (they rewrite the
# cases they are imported by) and the capture scripts run on a GPU machine are not test modules.
collect_ignore_glob = ["operations/make_*.py", "fixtures/*"]


def pytest_configure(config):
    # Plans remember their facts on the control host (operations/fact_prefetch.py): a test run keeps
    # that cache to itself (one per session, shared by the lab's deploys), not in the user's home.
    if "GPUFLEET_CACHE_DIR" not in os.environ:
        os.environ["GPUFLEET_CACHE_DIR"] = tempfile.mkdtemp(prefix="gpufleet-test-cache-")


def pytest_collection_modifyitems(items):
    for item in items:
        if LAB_TESTS in Path(item.fspath).parents:
            item.add_marker(pytest.mark.lab)
