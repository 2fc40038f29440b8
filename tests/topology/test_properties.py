"""Property tests: CPU-list parsers and topology invariants."""

from __future__ import annotations

import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from numaplan.topology import (
    format_cpulist,
    parse_cpulist,
    parse_cpumask,
    parse_numactl,
    parse_numactl_cpus,
    read_sysfs,
    synthetic_topology,
    write_sysfs_tree,
)

id_sets = st.sets(st.integers(min_value=0, max_value=1023), max_size=64)


@given(id_sets)
def test_cpulist_roundtrip(ids):
    assert parse_cpulist(format_cpulist(ids)) == tuple(sorted(ids))


@given(id_sets)
def test_cpumask_matches_list(ids):
    value = sum(1 << i for i in ids)
    hexstr = f"{value:x}" if value else "0"
    # Kernel style: 32-bit words separated by commas, most significant first.
    hexstr = hexstr.zfill((len(hexstr) + 7) // 8 * 8)
    words = ",".join(hexstr[i:i + 8] for i in range(0, len(hexstr), 8))
    assert parse_cpumask(words) == tuple(sorted(ids))


@given(id_sets)
def test_numactl_compressed_equals_plain(ids):
    plain = " ".join(str(i) for i in sorted(ids))
    compressed = " ".join(
        f"{part} ({len(parse_cpulist(part))})" for part in format_cpulist(ids).split(",") if part)
    assert parse_numactl_cpus(plain) == parse_numactl_cpus(compressed) == tuple(sorted(ids))


@given(st.text(max_size=20))
def test_cpulist_parser_never_crashes_unexpectedly(text):
    try:
        parse_cpulist(text)
    except ValueError:
        pass


shapes = st.fixed_dictionaries({
    "sockets": st.integers(1, 3),
    "nodes_per_socket": st.integers(1, 4),
    "cores_per_node": st.integers(1, 6),
    "smt": st.integers(1, 2),
    "cpuless_nodes_per_socket": st.integers(0, 1),
    "interleave_cpus": st.booleans(),
    "node_id_stride": st.integers(1, 3),
})


def _numactl_text(t):
    lines = [f"available: {len(t.nodes)} nodes ({format_cpulist(t.node_ids)})"]
    for n in t.nodes:
        lines += [f"node {n.node_id} cpus: " + " ".join(map(str, n.cpus)),
                  f"node {n.node_id} size: {n.mem_total_bytes >> 20} MB",
                  f"node {n.node_id} free: {n.mem_free_bytes >> 20} MB"]
    lines.append("node distances:")
    lines.append("node " + " ".join(f"{i:>3}" for i in t.node_ids))
    for i, row in zip(t.node_ids, t.distances, strict=True):
        lines.append(f"{i:>3}: " + " ".join(f"{d:>3}" for d in row))
    return "\n".join(lines) + "\n"


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_topology_invariants_across_readers(shape):
    t = synthetic_topology(**shape)
    cpus = [c for n in t.nodes for c in n.cpus]
    assert len(cpus) == len(set(cpus)) == shape["sockets"] * shape["nodes_per_socket"] * \
        shape["cores_per_node"] * shape["smt"]
    for i, row in enumerate(t.distances):
        assert row[i] == min(row)
    # Every physical core is a set of SMT siblings on one node.
    for nid in t.cpu_node_ids():
        cores = t.physical_cores(nid)
        assert sorted(c for core in cores for c in core) == list(t.node(nid).cpus)
    with tempfile.TemporaryDirectory() as d:
        s = read_sysfs(write_sysfs_tree(t, d))
    n = parse_numactl(_numactl_text(t))
    for other in (s, n):
        assert other.node_ids == t.node_ids
        assert [x.cpus for x in other.nodes] == [x.cpus for x in t.nodes]
        assert other.distances == t.distances
        assert [other.socket_of(i) for i in t.node_ids] == [t.socket_of(i) for i in t.node_ids]
    assert s.fingerprint() == t.fingerprint()
