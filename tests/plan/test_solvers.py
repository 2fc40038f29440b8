"""What the planner does on the machines real servers are, and how it refuses."""

from __future__ import annotations

import pytest

from numaplan.cost import cost_from_slit
from numaplan.errors import InfeasiblePlanError
from numaplan.plan import (
    PlanOptions,
    build_problem,
    make_plan,
    solver_greedy,
    solver_ilp,
    solver_partition,
)
from numaplan.topology import synthetic_topology

from .helpers import fixture_topology, scaled_cost, small_workload

MiB = 1 << 20


@pytest.fixture(scope="module")
def wl(tmp_path_factory):
    return small_workload(tmp_path_factory.mktemp("wl"))


def plan_for(wl, topo, cost=None, **kw):
    return make_plan(wl, topo, cost or cost_from_slit(topo), PlanOptions(**kw),
                     model_name="t").plan


def test_memoryless_node_workers_bind_to_nearest_memory(wl):
    topo = synthetic_topology(sockets=2, nodes_per_socket=2, cores_per_node=4,
                              memoryless_nodes=[1])
    plan = plan_for(wl, topo, tensor_parallel_shards=2, node_affinity={1: 1})
    w1 = plan.workers[1]
    assert w1.node_id == 1 and w1.mem_node_id == 0  # same-socket neighbour (SLIT 12)
    assert all(h.node_id == 0 for t in plan.tensors for h in plan.tensor_homes(t, 1))


def test_cpuless_memory_node_used_as_home_when_local_is_full(tmp_path):
    # ~460 MB of weights; DDR nodes keep ~130 MiB after the workers' reserves, so the rest must
    # go to the CPU-less (HBM / CXL-like) nodes.
    wl = small_workload(tmp_path, num_hidden_layers=16, hidden_size=2048,
                        intermediate_size=5632)
    topo = synthetic_topology(sockets=2, cores_per_node=4, mem_per_node_bytes=600 * MiB,
                              cpuless_nodes_per_socket=1, cpuless_mem_bytes=1024 * MiB)
    with pytest.raises(InfeasiblePlanError, match=r"node \d lacks \d+ bytes"):
        plan_for(wl, topo, tensor_parallel_shards=8)
    plan = plan_for(wl, topo, tensor_parallel_shards=8, numa_prefer_local_memory=False)
    cpuless = {n.node_id for n in topo.nodes if not n.cpus}
    assert any(n.bytes_homed > 0 for n in plan.nodes if n.node_id in cpuless)
    assert all(w.node_id not in cpuless for w in plan.workers)


def test_slower_node_gets_fewer_workers(tmp_path):
    wl = small_workload(tmp_path, num_hidden_layers=32, hidden_size=2048,
                        intermediate_size=5632)
    topo = synthetic_topology(sockets=2, cores_per_node=8)
    plan = plan_for(wl, topo, scaled_cost(topo, {1: 0.5}), tensor_parallel_shards=8)
    counts = {n.node_id: len(n.worker_ids) for n in plan.nodes}
    assert counts[0] > counts[1] > 0


def test_w_not_divisible_by_node_count(wl):
    topo = synthetic_topology(sockets=1, nodes_per_socket=3, cores_per_node=4)
    plan = plan_for(wl, topo, tensor_parallel_shards=4)
    assert sum(len(n.worker_ids) for n in plan.nodes) == 4


def test_numa_nodes_subset(wl):
    plan = plan_for(wl, fixture_topology("epyc"), tensor_parallel_shards=4,
                    numa_nodes=(4, 5, 6, 7))
    assert {w.node_id for w in plan.workers} <= {4, 5, 6, 7}
    assert plan.request.numa_nodes == (4, 5, 6, 7)


def test_node_affinity_honoured_even_when_unattractive(wl):
    topo = synthetic_topology(sockets=2, cores_per_node=4)
    plan = plan_for(wl, topo, scaled_cost(topo, {1: 0.3}), tensor_parallel_shards=4,
                    node_affinity={0: 1, 3: 1})
    assert plan.workers[0].node_id == 1 and plan.workers[3].node_id == 1


def test_model_that_does_not_fit_names_node_and_bytes(wl):
    topo = synthetic_topology(sockets=2, cores_per_node=4, mem_per_node_bytes=80 * MiB)
    with pytest.raises(InfeasiblePlanError, match=r"node \d lacks \d+ bytes"):
        plan_for(wl, topo, tensor_parallel_shards=2, solver="greedy")


def test_invalid_w_lists_valid_values(wl):
    with pytest.raises(InfeasiblePlanError, match="valid values: 1, 2, 4, 8"):
        plan_for(wl, synthetic_topology(sockets=2, cores_per_node=4), tensor_parallel_shards=3)


def test_more_workers_than_cores(wl):
    with pytest.raises(InfeasiblePlanError, match="need 8 physical cores"):
        plan_for(wl, synthetic_topology(sockets=2, cores_per_node=2), tensor_parallel_shards=8)


def test_solvers_agree_on_uniform_machine(tmp_path):
    wl = small_workload(tmp_path, num_hidden_layers=16)
    topo = fixture_topology("epyc")
    p = build_problem(wl, topo, cost_from_slit(topo), num_workers=8)
    from numaplan.plan import predict

    costs = {name: predict(p, mod.solve(p)).token_s
             for name, mod in (("greedy", solver_greedy), ("ilp", solver_ilp),
                               ("partition", solver_partition))}
    assert costs["ilp"] <= min(costs.values()) * (1 + 1e-9)
    assert max(costs.values()) <= costs["ilp"] * 1.01


def test_uniform_plan_near_lower_bound_and_beats_baselines(tmp_path):
    wl = small_workload(tmp_path, num_hidden_layers=32, hidden_size=4096,
                        intermediate_size=14336, num_attention_heads=32, vocab_size=32000)
    plan = plan_for(wl, fixture_topology("hsw"), tensor_parallel_shards=8)
    pr = plan.prediction
    assert pr.fraction_of_bound >= 0.99
    assert all(pr.tokens_per_s >= b.tokens_per_s * (1 - 1e-6) for b in pr.baselines.values())
    assert pr.tokens_per_s > pr.baselines["single_node"].tokens_per_s * 1.5
