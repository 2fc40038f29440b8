"""User settings -> (plan options, cost model): the one path the CLI and the engine share."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from numaplan.cost import DEFAULT_PENALTY, check_penalty, cost_from_slit
from numaplan.engine import EngineConfig, NUMATensorParallelConfig
from numaplan.errors import CostModelError
from numaplan.plan import PlanOptions, PlanSettings, default_tp, resolve_settings
from numaplan.topology import synthetic_topology

from .helpers import small_workload


@pytest.fixture(scope="module")
def wl(tmp_path_factory):
    return small_workload(tmp_path_factory.mktemp("wl"))


def test_defaults_are_the_one_penalty_default():
    assert PlanSettings().numa_inter_node_penalty == DEFAULT_PENALTY
    assert PlanOptions(tensor_parallel_shards=1).numa_inter_node_penalty == DEFAULT_PENALTY
    assert NUMATensorParallelConfig().inter_node_bandwidth_penalty == DEFAULT_PENALTY
    assert EngineConfig(model="m").numa_inter_node_penalty == DEFAULT_PENALTY


@pytest.mark.parametrize("make", [
    lambda p: PlanSettings(numa_inter_node_penalty=p),
    lambda p: PlanOptions(tensor_parallel_shards=1, numa_inter_node_penalty=p),
    lambda p: NUMATensorParallelConfig(inter_node_bandwidth_penalty=p),
    lambda p: EngineConfig(model="m", numa_inter_node_penalty=p),
])
def test_one_range_check_everywhere(make):
    with pytest.raises(ValidationError, match=r"numa_inter_node_penalty must be in 0\.\.1"):
        make(1.5)
    with pytest.raises(CostModelError, match=r"must be in 0\.\.1, got -0\.1"):
        check_penalty(-0.1)


def test_default_tp(wl):
    # The golden workload admits W up to 8 (8 KV heads): one per usable CPU node.
    assert default_tp(wl, synthetic_topology(sockets=2, nodes_per_socket=2)) == 4
    assert default_tp(wl, synthetic_topology(sockets=1)) == 1


def test_resolve_settings(wl):
    topo = synthetic_topology(sockets=2)
    opts, cost = resolve_settings(PlanSettings(numa_inter_node_penalty=0.52), wl, topo)
    assert opts.tensor_parallel_shards == 2
    assert opts.numa_inter_node_penalty == 0.5  # the planner's grid
    # The cost model is derived at the value asked (the planner re-prices it on the grid).
    assert cost.fingerprint() == cost_from_slit(topo, penalty=0.52).fingerprint()
    opts, _ = resolve_settings(PlanSettings(tensor_parallel_shards=1, node_affinity={0: 1}),
                               wl, topo)
    assert opts.tensor_parallel_shards == 1 and opts.node_affinity == {0: 1}


def test_resolve_settings_reads_and_checks_a_cost_file(wl, tmp_path):
    topo = synthetic_topology(sockets=2)
    path = tmp_path / "cost.json"
    path.write_text(cost_from_slit(synthetic_topology(sockets=1)).to_json())
    with pytest.raises(CostModelError, match="has no node 1"):
        resolve_settings(PlanSettings(cost_model=str(path)), wl, topo)
    path.write_text(cost_from_slit(topo).to_json())
    _, cost = resolve_settings(PlanSettings(cost_model=str(path)), wl, topo)
    assert cost.fingerprint() == cost_from_slit(topo).fingerprint()
    with pytest.raises(ValidationError, match="give one of"):
        PlanSettings(cost_model=str(path), mlc_output="x")
    with pytest.raises(ValidationError, match="give one of"):
        PlanSettings(cost_model=str(path), memory_spec="8x4800")
    _, spec = resolve_settings(PlanSettings(memory_spec="8x4800@0.5"), wl, topo)
    assert spec.method == "memory-spec" and spec.bw(0, 0) == pytest.approx(8 * 4800 * 8 * 0.5e-3)
