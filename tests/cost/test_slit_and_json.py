"""Cost model from SLIT + penalty (its definition and monotonicity), JSON round trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from numaplan.cost import bandwidth_factor, cost_from_slit, read_cost_json
from numaplan.errors import CostModelError, SchemaVersionError
from numaplan.topology import MemoryAttributes, read_numactl_file, synthetic_topology


def test_documented_factors():
    # The module docstring promises these numbers for the default penalty 0.3.
    assert bandwidth_factor(10, 21, 0.3) == pytest.approx(0.41, abs=0.005)
    assert bandwidth_factor(10, 12, 0.3) == pytest.approx(0.80, abs=0.005)
    assert bandwidth_factor(10, 32, 0.3) == pytest.approx(0.25, abs=0.005)
    assert bandwidth_factor(10, 21, 0.0) == 1.0
    assert bandwidth_factor(10, 21, 1.0) == pytest.approx(0.051, abs=0.001)


@given(st.floats(0, 1), st.floats(0, 1), st.integers(11, 60))
def test_penalty_is_monotone(p, q, d):
    lo, hi = sorted((p, q))
    assert bandwidth_factor(10, d, hi) <= bandwidth_factor(10, d, lo)


@pytest.mark.parametrize("penalty", [-0.1, 1.5])
def test_penalty_range(penalty):
    with pytest.raises(CostModelError, match=r"must be in 0\.\.1"):
        cost_from_slit(synthetic_topology(sockets=2), penalty=penalty)


def test_hbm_topology(topo_file):
    t = read_numactl_file(topo_file("xeonmax"))
    c = cost_from_slit(t, penalty=0.3, local_bw_gbps=100)
    assert c.method == "slit" and c.node_ids == (0, 1, 2, 3)
    assert c.bw(0, 0) == 100
    assert c.bw(0, 2) == pytest.approx(100 * (10 / 13) ** 1.2)
    assert c.bw(0, 2) > c.bw(0, 1) > c.bw(0, 3)
    assert c.bw(2, 0) is None  # CPU-less node reads nothing
    assert c.lat(0, 1) == pytest.approx(100 * 2.1)
    c.check_covers(t)


def test_hmat_bandwidth_is_used():
    t = synthetic_topology(sockets=1)
    n0 = t.nodes[0].model_copy(update={"hmat": MemoryAttributes(read_bw_mbps=80000,
                                                                 read_lat_ns=90)})
    t = t.model_copy(update={"nodes": (n0,)})
    c = cost_from_slit(t)
    assert c.bw(0, 0) == 80.0 and c.lat(0, 0) == 90.0
    assert c.params["local_bw_source"] == "hmat"


def test_memoryless_column_is_none():
    t = synthetic_topology(sockets=2, memoryless_nodes=[1])
    c = cost_from_slit(t)
    assert c.bw(0, 1) is None and c.bw(1, 0) is not None


def test_json_roundtrip_and_errors(tmp_path):
    c = cost_from_slit(synthetic_topology(sockets=2, nodes_per_socket=2))
    p = tmp_path / "cost.json"
    p.write_text(c.to_json())
    back = read_cost_json(str(p))
    assert back == c and back.fingerprint() == c.fingerprint()
    d = json.loads(c.to_json())
    d["schema_version"] = 9
    p.write_text(json.dumps(d))
    with pytest.raises(SchemaVersionError, match="schema_version 9"):
        read_cost_json(str(p))
    d["schema_version"] = 1
    d["read_bw_gbps"] = d["read_bw_gbps"][:2]
    p.write_text(json.dumps(d))
    with pytest.raises(CostModelError, match="must be 4x4"):
        read_cost_json(str(p))
    d = json.loads(c.to_json())
    d["read_bw_gbps"][0][0] = -1
    p.write_text(json.dumps(d))
    with pytest.raises(CostModelError, match="non-positive"):
        read_cost_json(str(p))


def test_check_covers_names_the_gap():
    big = synthetic_topology(sockets=2, nodes_per_socket=2)
    small = cost_from_slit(synthetic_topology(sockets=2))
    with pytest.raises(CostModelError, match="no node"):
        small.check_covers(big)
