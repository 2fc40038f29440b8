"""The three real `numactl -H` dumps parse to the right nodes, CPUs, memory and distances."""

from __future__ import annotations

from numaplan.topology import read_numactl_file

MiB = 1 << 20


def test_epyc_nps4(topo_file):
    t = read_numactl_file(topo_file("epyc"))
    assert t.node_ids == tuple(range(8))
    for i, n in enumerate(t.nodes):
        # 16 cores x 2 threads per node; SMT siblings numbered +128.
        first, second = range(16 * i, 16 * i + 16), range(128 + 16 * i, 144 + 16 * i)
        assert n.cpus == (*first, *second)
    assert [n.mem_total_bytes // MiB for n in t.nodes] == [
        63733, 64502, 64456, 64490, 64502, 64502, 64502, 64428]
    assert t.node(0).mem_free_bytes == 62780 * MiB
    assert t.distances[0] == (10, 12, 12, 12, 32, 32, 32, 32)
    assert t.distances[5] == (32, 32, 32, 32, 12, 10, 12, 12)
    assert [t.socket_of(i) for i in t.node_ids] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert len(t.allowed_cpus) == 256
    assert t.cpu_node_ids() == t.memory_node_ids() == tuple(range(8))


def test_haswell_two_sockets(topo_file):
    t = read_numactl_file(topo_file("hsw"))
    assert t.node_ids == (0, 1)
    assert t.node(0).cpus == tuple(range(16)) + tuple(range(32, 48))
    assert t.node(1).cpus == tuple(range(16, 32)) + tuple(range(48, 64))
    assert t.node(0).mem_total_bytes == 128788 * MiB
    assert t.node(1).mem_free_bytes == 128514 * MiB
    assert t.distances == ((10, 21), (21, 10))
    assert t.socket_of(0) != t.socket_of(1)


def test_xeon_max_hbm_cpuless_nodes(topo_file):
    t = read_numactl_file(topo_file("xeonmax"))
    assert t.node_ids == (0, 1, 2, 3)
    assert len(t.node(0).cpus) == len(t.node(1).cpus) == 104
    assert t.node(0).cpus[:2] == (0, 1) and 155 in t.node(0).cpus
    assert t.node(2).cpus == () and t.node(3).cpus == ()
    assert not t.node(2).has_cpus and t.node(2).has_memory
    assert t.node(2).mem_total_bytes == 65536 * MiB
    assert t.cpu_node_ids() == (0, 1)
    assert t.memory_node_ids() == (0, 1, 2, 3)
    assert t.distances[0] == (10, 21, 13, 23)
    # Local HBM belongs to its socket; remote HBM does not.
    assert t.socket_of(2) == t.socket_of(0) and t.socket_of(3) == t.socket_of(1)
