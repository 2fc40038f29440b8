"""Fixtures of the pass tests: a real plan (a golden one) and the tvm marker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from numaplan.plan import plan_from_dict

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.tvm)


@pytest.fixture(scope="session")
def plan():
    """A 4-worker plan on 2 sockets (hidden 512, float16: decode all-reduce of 1 KiB)."""
    return plan_from_dict(json.loads((GOLDEN / "2s1n.plan.json").read_text()))
