"""Test layout: tests/unit and tests/operations need nothing; tests/lab needs the fleet lab."""

from pathlib import Path

import pytest

LAB_TESTS = Path(__file__).parent / "lab"


def pytest_collection_modifyitems(items):
    for item in items:
        if LAB_TESTS in Path(item.fspath).parents:
            item.add_marker(pytest.mark.lab)
