"""Topology layer: what the machine is (nodes, CPUs, memory, distances, cpuset).

Knows nothing of models, costs or TVM.
"""

from numaplan.topology.cpulist import (
    format_cpulist,
    parse_cpulist,
    parse_cpumask,
    parse_numactl_cpus,
)
from numaplan.topology.hwloc import parse_hwloc_xml, read_hwloc_file
from numaplan.topology.io import load_topology, read_topology_json, topology_from_dict
from numaplan.topology.model import CpuInfo, MemoryAttributes, Node, Topology, build_topology
from numaplan.topology.samples import SAMPLE_FILES, read_sample, sample_path
from numaplan.topology.synthetic import synthetic_topology, write_sysfs_tree
from numaplan.topology.sysfs import FALLBACK_MESSAGE, read_sysfs
from numaplan.topology.text import parse_lscpu, parse_numactl, read_lscpu_file, read_numactl_file

__all__ = [
    "FALLBACK_MESSAGE",
    "SAMPLE_FILES",
    "CpuInfo",
    "MemoryAttributes",
    "Node",
    "Topology",
    "build_topology",
    "format_cpulist",
    "load_topology",
    "parse_cpulist",
    "parse_cpumask",
    "parse_hwloc_xml",
    "parse_lscpu",
    "parse_numactl",
    "parse_numactl_cpus",
    "read_hwloc_file",
    "read_lscpu_file",
    "read_numactl_file",
    "read_sample",
    "read_sysfs",
    "read_topology_json",
    "sample_path",
    "synthetic_topology",
    "topology_from_dict",
    "write_sysfs_tree",
]
