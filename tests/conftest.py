"""Test layout: tests/unit and tests/operations need nothing; tests/lab needs the fleet lab."""

# pyinfra (and gpufleet's CLI) run on gevent: patch the stdlib once, before anything else imports
# it, as pyinfra's own CLI does. Patching later, from inside an import, breaks import locks.
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402
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
    """Mark the lab's tests, and run them after every other test (the order within each part kept):
    the lab starts in the background meanwhile (below)."""
    lab = [item for item in items if LAB_TESTS in Path(item.fspath).parents]
    for item in lab:
        item.add_marker(pytest.mark.lab)
    lab_ids = {id(item) for item in lab}
    items[:] = [item for item in items if id(item) not in lab_ids] + lab


def pytest_collection_finish(session):
    """With lab tests selected after others, start `gpufleet lab up` now, in the background: a cold
    lab (image builds, pushes) takes minutes that the other tests would otherwise wait in line for.
    tests/lab/conftest.py's ``lab`` fixture waits for it."""
    items = session.items
    if session.config.option.collectonly or not items or LAB_TESTS not in Path(items[-1].fspath).parents:
        return
    if LAB_TESTS in Path(items[0].fspath).parents:
        return  # nothing runs before the lab's tests: the fixture starts the lab itself
    from tests.lab.conftest import start_lab_in_background

    start_lab_in_background()


def pytest_sessionfinish(session):
    lab_conftest = sys.modules.get("tests.lab.conftest")
    if lab_conftest is not None:
        lab_conftest.stop_lab_in_background()
