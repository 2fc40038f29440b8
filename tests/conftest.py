"""Shared fixtures: paths of the sample topology dumps shipped with the package."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from numaplan.topology import sample_path

#: ``fake_numa``: a fake NUMA kernel of several nodes behind every NUMA call (tests/fake_kernel.py).
pytest_plugins = ["tests.fake_kernel"]

# CI runs the property tests on a fixed seed (a red run must be a real regression, not a draw);
# every failing example a search ever found is pinned with @example beside its test. Locally
# the search stays random: NUMAPLAN_HYPOTHESIS_PROFILE=ci reproduces CI's draws.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("NUMAPLAN_HYPOTHESIS_PROFILE")
                      or ("ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def topo_file():
    """Return the path of a sample topology dump by short name (they ship with the package)."""
    return sample_path


@pytest.fixture
def matplotlib_extra():
    """matplotlib, or a skip that names the ``plot`` extra: ``pip install -e '.[test]'`` alone
    must give a green run, and ``-ra`` prints the reason."""
    return pytest.importorskip("matplotlib",
                               reason="drawing needs the plot extra: pip install -e '.[plot]'")
