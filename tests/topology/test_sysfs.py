"""The sysfs reader on fake trees of every shape, and on this machine."""

from __future__ import annotations

import logging
import os

import pytest

from numaplan.errors import TopologyError
from numaplan.topology import (
    FALLBACK_MESSAGE,
    MemoryAttributes,
    read_sysfs,
    synthetic_topology,
    write_sysfs_tree,
)

GiB = 1 << 30


def _roundtrip(tmp_path, topo):
    got = read_sysfs(write_sysfs_tree(topo, tmp_path))
    assert got.source == f"sysfs:{tmp_path}"
    return got


def _same_machine(a, b):
    """Equal up to the source name and the socket of CPU-less nodes (sysfs cannot know it)."""
    assert a.node_ids == b.node_ids
    for x, y in zip(a.nodes, b.nodes, strict=True):
        assert x.cpus == y.cpus
        assert x.mem_total_bytes == y.mem_total_bytes
        assert x.mem_free_bytes == y.mem_free_bytes
        if x.cpus:
            assert x.socket_id == y.socket_id
        assert a.socket_of(x.node_id) == b.socket_of(y.node_id)
    assert a.distances == b.distances
    assert a.cpus == b.cpus
    assert a.allowed_cpus == b.allowed_cpus
    assert a.allowed_mem_node_ids == b.allowed_mem_node_ids
    assert a.fingerprint() == b.fingerprint()


@pytest.mark.parametrize("nodes_per_socket", [1, 2, 4])
@pytest.mark.parametrize("smt", [1, 2])
def test_two_socket_shapes(tmp_path, nodes_per_socket, smt):
    topo = synthetic_topology(sockets=2, nodes_per_socket=nodes_per_socket, cores_per_node=4,
                              smt=smt)
    got = _roundtrip(tmp_path, topo)
    _same_machine(got, topo)
    assert len(got.nodes) == 2 * nodes_per_socket
    for nid in got.node_ids:
        cores = got.physical_cores(nid)
        assert len(cores) == 4
        assert all(len(c) == smt for c in cores)
    if nodes_per_socket > 1:
        assert got.distance(0, 1) == 12
    assert got.distance(0, got.node_ids[-1]) == 21


def test_memoryless_node(tmp_path):
    topo = synthetic_topology(sockets=2, nodes_per_socket=2, memoryless_nodes=[1, 3])
    got = _roundtrip(tmp_path, topo)
    _same_machine(got, topo)
    assert got.node(1).mem_total_bytes == 0 and got.node(1).has_cpus
    assert got.cpu_node_ids() == (0, 1, 2, 3)
    assert got.memory_node_ids() == (0, 2)


def test_cpuless_hbm_nodes_with_hmat(tmp_path):
    topo = synthetic_topology(sockets=2, cpuless_nodes_per_socket=1)
    hbm = topo.node(2).model_copy(update={"hmat": MemoryAttributes(
        initiator_node_ids=(0,), read_bw_mbps=400000, read_lat_ns=130)})
    topo = topo.model_copy(update={"nodes": (*topo.nodes[:2], hbm, topo.nodes[3])})
    got = _roundtrip(tmp_path, topo)
    _same_machine(got, topo)
    assert got.cpu_node_ids() == (0, 1)
    assert got.memory_node_ids() == (0, 1, 2, 3)
    assert got.node(2).hmat == hbm.hmat
    assert got.distance(0, 2) == 13 and got.distance(1, 2) == 23


def test_cpuset_restricted_process(tmp_path):
    topo = synthetic_topology(sockets=2, cores_per_node=4, allowed_cpus=[0, 1, 4],
                              allowed_mem_node_ids=[0])
    got = _roundtrip(tmp_path, topo)
    assert got.allowed_cpus == (0, 1, 4)
    assert got.usable_cpus(0) == (0, 1) and got.usable_cpus(1) == (4,)
    assert got.memory_node_ids() == (0,)


def test_sparse_ids_interleaved_uneven(tmp_path):
    topo = synthetic_topology(sockets=1, nodes_per_socket=3, cores_per_node=[3, 3, 2],
                              interleave_cpus=True, node_id_stride=2)
    got = _roundtrip(tmp_path, topo)
    _same_machine(got, topo)
    assert got.node_ids == (0, 2, 4)
    assert got.node(0).cpus == (0, 3, 6) and got.node(4).cpus == (2, 5)


def test_possible_cpus_in_status_are_trimmed(tmp_path):
    # The kernel lists *possible* CPUs in Cpus_allowed_list (often 0-255 on an 8-CPU box).
    write_sysfs_tree(synthetic_topology(sockets=1, cores_per_node=4), tmp_path)
    (tmp_path / "proc/self/status").write_text(
        "Cpus_allowed_list:\t0-255\nMems_allowed_list:\t0-3\n")
    got = read_sysfs(tmp_path)
    assert got.allowed_cpus == (0, 1, 2, 3) and got.allowed_mem_node_ids == (0,)


def test_no_numa_falls_back_to_one_node(tmp_path, caplog):
    (tmp_path / "sys/devices/system/cpu").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/online").write_text("0-3\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal: 1024 kB\nMemAvailable: 512 kB\n")
    with caplog.at_level(logging.WARNING):
        got = read_sysfs(tmp_path)
    assert FALLBACK_MESSAGE in caplog.text
    assert got.node_ids == (0,) and got.node(0).cpus == (0, 1, 2, 3)
    assert got.node(0).mem_total_bytes == 1024 * 1024


def test_truncated_distance_row(tmp_path):
    write_sysfs_tree(synthetic_topology(sockets=2), tmp_path)
    (tmp_path / "sys/devices/system/node/node1/distance").write_text("21\n")
    with pytest.raises(TopologyError, match=r"node1/distance: distance row has 1 entries"):
        read_sysfs(tmp_path)


def test_overlapping_cpu_lists(tmp_path):
    write_sysfs_tree(synthetic_topology(sockets=2, cores_per_node=2), tmp_path)
    (tmp_path / "sys/devices/system/node/node1/cpulist").write_text("1-3\n")
    with pytest.raises(TopologyError, match="CPU 1 is listed on node 0 and node 1"):
        read_sysfs(tmp_path)


def test_missing_and_garbage_files(tmp_path):
    write_sysfs_tree(synthetic_topology(sockets=2), tmp_path)
    (tmp_path / "sys/devices/system/node/node0/meminfo").unlink()
    with pytest.raises(TopologyError, match="node0/meminfo: file missing"):
        read_sysfs(tmp_path)
    (tmp_path / "sys/devices/system/node/node0/meminfo").write_text("garbage\n")
    with pytest.raises(TopologyError, match="no MemTotal/MemFree"):
        read_sysfs(tmp_path)
    (tmp_path / "sys/devices/system/node/node0/meminfo").write_text(
        "Node 0 MemTotal: 10 kB\nNode 0 MemFree: 5 kB\n")
    (tmp_path / "sys/devices/system/node/node0/cpulist").write_text("zero\n")
    with pytest.raises(TopologyError, match="node0/cpulist"):
        read_sysfs(tmp_path)


def test_this_machine():
    t = read_sysfs("/")
    assert set(t.allowed_cpus) == os.sched_getaffinity(0)
    assert t.cpu_node_ids()
    assert all(n.mem_total_bytes is not None for n in t.nodes)
