"""Sample machines shipped with numaplan: ``numactl -H`` dumps of three real servers.

They are package data (``numaplan/topology/machines/``), so that the benchmark's planner case,
the examples and the tests can plan for a machine other than the one at hand, from a checkout or
from an installed wheel alike. Each file starts with comments naming its public source.

==========  ==============================================================================
name        machine
==========  ==============================================================================
``epyc``    2 x AMD EPYC 7742 in NPS4 mode: 8 NUMA nodes, 16 cores each (ARCHER2)
``hsw``     2 x Intel Xeon E5-2698B v3 (Haswell-EP): 2 NUMA nodes
``xeonmax`` 2 x Intel Xeon CPU Max, HBM in flat mode: 2 DDR nodes with CPUs, 2 CPU-less HBM
            nodes (ALCF Aurora)
==========  ==============================================================================
"""

from __future__ import annotations

from pathlib import Path

from numaplan.errors import TopologyError
from numaplan.topology.model import Topology
from numaplan.topology.text import read_numactl_file

#: Short name -> file name under ``machines/``.
SAMPLE_FILES = {
    "epyc": "epyc7742_2s_nps4_archer2.txt",
    "hsw": "hsw_2s_e5-2698bv3.txt",
    "xeonmax": "xeonmax_2s_hbm_flat_aurora.txt",
}

_MACHINES = Path(__file__).with_name("machines")


def sample_path(name: str) -> Path:
    """The ``numactl -H`` dump of a sample machine.

    Parameters
    ----------
    name
        One of :data:`SAMPLE_FILES` (``epyc``, ``hsw``, ``xeonmax``).

    Returns
    -------
    pathlib.Path
        The file (it exists).

    Raises
    ------
    TopologyError
        For an unknown name.
    """
    try:
        return _MACHINES / SAMPLE_FILES[name]
    except KeyError:
        raise TopologyError(f"no sample machine {name!r}; choose one of "
                            f"{', '.join(SAMPLE_FILES)}") from None


def read_sample(name: str) -> Topology:
    """The topology of a sample machine.

    Parameters
    ----------
    name
        One of :data:`SAMPLE_FILES` (``epyc``, ``hsw``, ``xeonmax``).

    Returns
    -------
    Topology
        Read from the shipped dump; its ``source`` names the file.

    Raises
    ------
    TopologyError
        For an unknown name.

    Examples
    --------
    >>> len(read_sample("epyc").nodes)
    8
    """
    return read_numactl_file(sample_path(name))
