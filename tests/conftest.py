"""Shared fixtures: paths of the sample topology dumps shipped with the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

# CI runs the property tests on a fixed seed (a red run must be a real regression, not a draw);
# every failing example a search ever found is pinned with @example beside its test. Locally
# the search stays random: NUMAPLAN_HYPOTHESIS_PROFILE=ci reproduces CI's draws.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("NUMAPLAN_HYPOTHESIS_PROFILE")
                      or ("ci" if os.environ.get("CI") else "dev"))

DATA = Path(__file__).parent / "data"
TOPOLOGIES = DATA / "topologies"


@pytest.fixture
def topo_file():
    """Return the path of a sample topology dump by short name."""
    names = {
        "epyc": "epyc7742_2s_nps4_archer2.txt",
        "hsw": "hsw_2s_e5-2698bv3.txt",
        "xeonmax": "xeonmax_2s_hbm_flat_aurora.txt",
    }
    return lambda name: TOPOLOGIES / names[name]
