"""Topology JSON round trip, version checks and restrictions."""

from __future__ import annotations

import json

import pytest

from numaplan.errors import SchemaVersionError, TopologyError
from numaplan.topology import load_topology, read_topology_json, synthetic_topology


def test_roundtrip(tmp_path):
    t = synthetic_topology(sockets=2, nodes_per_socket=2, smt=2, cpuless_nodes_per_socket=1)
    p = tmp_path / "t.json"
    p.write_text(t.to_json())
    assert read_topology_json(p) == t
    assert load_topology(json_path=p) == t


@pytest.mark.parametrize(("mutate", "error", "message"), [
    (lambda d: d.update(schema_version=2), SchemaVersionError, "unknown topology schema_version 2"),
    (lambda d: d.pop("schema_version"), SchemaVersionError, "schema_version None"),
    (lambda d: d.update(distances=[[10, 21]]), TopologyError, "distance matrix has 1 rows"),
    (lambda d: d.update(distances=[[10, 21], [21]]), TopologyError, "has 1 entries, expected 2"),
    (lambda d: d.pop("nodes"), TopologyError, "nodes: Field required"),
    (lambda d: d.update(surprise=1), TopologyError, "surprise"),
])
def test_bad_json(tmp_path, mutate, error, message):
    d = json.loads(synthetic_topology(sockets=2).to_json())
    mutate(d)
    p = tmp_path / "t.json"
    p.write_text(json.dumps(d))
    with pytest.raises(error, match=message) as exc:
        read_topology_json(p)
    assert str(p) in str(exc.value)


def test_empty_and_garbage(tmp_path):
    p = tmp_path / "t.json"
    p.write_text("")
    with pytest.raises(TopologyError, match="file is empty"):
        read_topology_json(p)
    p.write_text("{nope")
    with pytest.raises(TopologyError, match="invalid JSON at line 1"):
        read_topology_json(p)
    with pytest.raises(TopologyError, match="file not found"):
        read_topology_json(tmp_path / "missing.json")


def test_restricted_to_numa_nodes():
    t = synthetic_topology(sockets=2, nodes_per_socket=2, cores_per_node=2)
    r = t.restricted_to([1, 2])
    assert r.cpu_node_ids() == (1, 2) and r.memory_node_ids() == (1, 2)
    assert r.fingerprint() != t.fingerprint()
    with pytest.raises(TopologyError, match="nodes \\[7\\] that do not exist"):
        t.restricted_to([7])


def test_fingerprint_ignores_memory_sizes():
    a = synthetic_topology(sockets=2, free_fraction=0.9)
    b = synthetic_topology(sockets=2, free_fraction=0.5, mem_per_node_bytes=96 << 30)
    assert a.fingerprint() == b.fingerprint()  # hotplug or free memory: same machine
    assert a.fingerprint() != synthetic_topology(sockets=2, cores_per_node=5).fingerprint()
    assert a.fingerprint() != synthetic_topology(sockets=2, memoryless_nodes=[1]).fingerprint()
