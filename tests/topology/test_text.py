"""numactl -H and lscpu text: variants that occur in the wild, and broken input."""

from __future__ import annotations

import pytest

from numaplan.errors import TopologyError
from numaplan.topology import parse_lscpu, parse_numactl

TWO = """available: 2 nodes (0-1)
node 0 cpus: 0 1 2 3
node 0 size: 1000 MB
node 0 free: 900 MB
node 1 cpus: 4 5 6 7
node 1 size: 1000 MB
node 1 free: 800 MB
node distances:
node   0   1
  0:  10  21
  1:  21  10
"""


def test_cpu_compress_and_trailing_spaces():
    text = TWO.replace("node 0 cpus: 0 1 2 3", "node 0 cpus: 0-3 (4)   ").replace(
        "node 1 cpus: 4 5 6 7", "node 1 cpus: 4-5 (2) 6-7 (2) ")
    t = parse_numactl(text.replace("\n", "   \n"))
    assert t.node(0).cpus == (0, 1, 2, 3) and t.node(1).cpus == (4, 5, 6, 7)


def test_empty_cpus_line_is_a_cpuless_node():
    text = TWO.replace("node 1 cpus: 4 5 6 7", "node 1 cpus:")
    t = parse_numactl(text)
    assert t.node(1).cpus == () and t.cpu_node_ids() == (0,)


def test_sparse_node_ids():
    text = TWO.replace("(0-1)", "(0,2)").replace("node 1", "node 2").replace(
        "node   0   1", "node   0   2").replace("  1:  21", "  2:  21")
    assert parse_numactl(text).node_ids == (0, 2)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty numactl -H output"),
    ("hello world\n", "not numactl -H output"),
    ("No NUMA available on this system\n", "No NUMA available"),
    (TWO.split("node 1 size")[0], "truncated: node 1 has no 'size:' line"),
    (TWO.split("node distances")[0], "truncated: no 'node distances:' table"),
    (TWO.rsplit("  1:", 1)[0], "truncated: distance row of node 1 is missing"),
    (TWO.replace("  1:  21  10", "  1:  21"), "matrix not square"),
    (TWO.replace("0 1 2 3", "0 1 2 4"), "CPU 4 is listed on node 0 and node 1"),
    (TWO.replace("0-3 (4)", "x").replace("0 1 2 3", "0-3 (5)"), "does not match the range"),
    (TWO.replace("2 nodes", "3 nodes"), "says 3 nodes but lists 2"),
    (TWO.replace("  0:  10  21", "  0:  30  21"),
     "distance of node 0 to itself is 30, Linux reports 10"),
    (TWO.replace("1000 MB\nnode 0 free", "lots\nnode 0 free"), "is not a size"),
])
def test_bad_numactl(text, message):
    with pytest.raises(TopologyError, match=message):
        parse_numactl(text, source="dump.txt")


def test_error_names_the_file():
    with pytest.raises(TopologyError) as exc:
        parse_numactl("garbage", source="dump.txt")
    assert str(exc.value).startswith("dump.txt: ")


LSCPU = """Architecture:            x86_64
Model name:              Intel(R) Xeon(R) CPU E5-2698B v3 @ 2.00GHz
Socket(s):               2
NUMA node(s):            2
NUMA node0 CPU(s):       0-15,32-47
NUMA node1 CPU(s):       16-31,48-63
"""


def test_lscpu():
    t = parse_lscpu(LSCPU)
    assert t.node(0).cpus == tuple(range(16)) + tuple(range(32, 48))
    assert t.node(1).mem_total_bytes is None and t.node(1).has_memory
    assert t.distances_assumed and t.distances == ((10, 20), (20, 10))
    assert t.cpu_model.startswith("Intel(R) Xeon(R)")


@pytest.mark.parametrize(("text", "message"), [
    ("Architecture: x86_64\n", "no 'NUMA node\\(s\\):' line"),
    (LSCPU.replace("NUMA node1 CPU(s):       16-31,48-63\n", ""), "truncated"),
    (LSCPU.replace("16-31", "15-31"), "CPU 15 is listed on node 0 and node 1"),
])
def test_bad_lscpu(text, message):
    with pytest.raises(TopologyError, match=message):
        parse_lscpu(text)
