"""Shared fixtures: paths of the sample topology dumps shipped with the project."""

from __future__ import annotations

from pathlib import Path

import pytest

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
