"""Invariants of the planner over generated problems (hypothesis)."""

from __future__ import annotations

import os
import random
import tempfile
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from numaplan.cost import cost_from_slit
from numaplan.errors import InfeasiblePlanError
from numaplan.plan import PlanOptions, build_problem, make_plan, predict, solver_greedy, solver_ilp
from numaplan.topology import Topology, synthetic_topology

from .helpers import scaled_cost, small_workload

MiB = 1 << 20
PAGE = 4096
# NUMAPLAN_HYPOTHESIS_EXAMPLES=300 for a deeper search than the default CI budget.
SETTINGS = settings(max_examples=int(os.environ.get("NUMAPLAN_HYPOTHESIS_EXAMPLES", 25)),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def workload():
    return small_workload(Path(tempfile.mkdtemp()))


machines = st.fixed_dictionaries({
    "sockets": st.integers(1, 2),
    "nodes_per_socket": st.integers(1, 3),
    "cores_per_node": st.integers(2, 6),
    "mem_mib": st.integers(90, 400),
    "memoryless": st.booleans(),
    "scale": st.lists(st.sampled_from([0.5, 0.75, 1.0, 1.25]), min_size=6, max_size=6),
    "W": st.sampled_from([1, 2, 4, 8]),
    "local": st.booleans(),
})


def _machine(m) -> tuple[Topology, object]:
    n = m["sockets"] * m["nodes_per_socket"]
    topo = synthetic_topology(sockets=m["sockets"], nodes_per_socket=m["nodes_per_socket"],
                              cores_per_node=m["cores_per_node"],
                              mem_per_node_bytes=m["mem_mib"] * MiB,
                              memoryless_nodes=[n - 1] if m["memoryless"] and n > 1 else [])
    cost = scaled_cost(topo, {i: m["scale"][i] for i in range(n)})
    return topo, cost


def _plan(m, **kw):
    topo, cost = _machine(m)
    opts = PlanOptions(tensor_parallel_shards=m["W"], numa_prefer_local_memory=m["local"], **kw)
    return make_plan(workload(), topo, cost, opts, model_name="prop")


@SETTINGS
@given(machines)
def test_every_piece_placed_once_and_capacity_respected(m):
    try:
        planned = _plan(m)
    except InfeasiblePlanError:
        assume(False)
    plan, problem, sol = planned.plan, planned.problem, planned.solution
    assert sorted(w.worker_id for w in plan.workers) == list(range(m["W"]))
    for t in plan.tensors:
        for w in plan.workers:
            homes = plan.tensor_homes(t, w.worker_id)
            assert sum(h.nbytes for h in homes) == t.piece_nbytes
            assert all(h.node_id in problem.mem_node_ids for h in homes)
    pred = predict(problem, sol)
    assert pred.fits
    for n in plan.nodes:
        if n.mem_capacity_bytes is not None:
            assert n.bytes_homed <= n.mem_capacity_bytes
    # Workers' CPUs are disjoint and on their node.
    seen = set()
    topo, _ = _machine(m)
    for w in plan.workers:
        from numaplan.topology import parse_cpulist

        cpus = set(parse_cpulist(w.cpus))
        assert cpus and not cpus & seen and cpus <= set(topo.node(w.node_id).cpus)
        seen |= cpus
    assert plan.prediction.token_s >= plan.prediction.lower_bound_token_s * (1 - 1e-6)


@SETTINGS
@given(machines)
# Found in CI: HiGHS met the split equality in GB units 309 bytes short and spent them on a
# cross-node replica home (solver_ilp.MB explains the fix).
@example({"sockets": 2, "nodes_per_socket": 3, "cores_per_node": 2, "mem_mib": 104,
          "memoryless": False, "scale": [0.5, 0.75, 1.25, 0.5, 1.0, 1.0], "W": 1,
          "local": False})
def test_ilp_never_worse_than_greedy(m):
    topo, cost = _machine(m)
    try:
        p = build_problem(workload(), topo, cost, num_workers=m["W"],
                          prefer_local_memory=m["local"])
        greedy = solver_greedy.solve(p)
    except InfeasiblePlanError:
        assume(False)
    ilp = solver_ilp.solve(p, warm_start=greedy)
    if ilp.status == "optimal":
        assert predict(p, ilp).token_s <= predict(p, greedy).token_s * (1 + 1e-6)
        # The MIP's objective is the predictor's price of its answer.
        assert ilp.objective_s == pytest.approx(predict(p, ilp).token_s, rel=1e-4)


def _relabel(topo: Topology, perm: dict[int, int]) -> Topology:
    nodes = sorted((n.model_copy(update={"node_id": perm[n.node_id]}) for n in topo.nodes),
                   key=lambda n: n.node_id)
    old = {perm[n.node_id]: i for i, n in enumerate(topo.nodes)}
    dist = tuple(tuple(topo.distances[old[a.node_id]][old[b.node_id]] for b in nodes)
                 for a in nodes)
    cpus = tuple(c.model_copy(update={"node_id": perm[c.node_id]}) for c in topo.cpus)
    return topo.model_copy(update={"nodes": tuple(nodes), "distances": dist, "cpus": cpus,
                                   "allowed_mem_node_ids": tuple(sorted(
                                       perm[n] for n in topo.allowed_mem_node_ids))})


@SETTINGS
@given(machines, st.randoms(use_true_random=False))
# Found by a full run: tied optima, a 288-byte piece folded into another home under one labelling.
@example({"sockets": 2, "nodes_per_socket": 2, "cores_per_node": 3, "mem_mib": 256,
          "memoryless": True, "scale": [0.5] * 6, "W": 4, "local": False}, random.Random(7))
def test_relabelling_nodes_keeps_the_objective(m, rnd):
    topo, _ = _machine(m)
    ids = list(topo.node_ids)
    shuffled = ids[:]
    rnd.shuffle(shuffled)
    perm = dict(zip(ids, shuffled, strict=True))
    other = _relabel(topo, perm)
    opts = PlanOptions(tensor_parallel_shards=m["W"], numa_prefer_local_memory=m["local"])
    try:
        a = make_plan(workload(), topo, cost_from_slit(topo), opts, model_name="x").plan
    except InfeasiblePlanError:
        assume(False)
    result = make_plan(workload(), other, cost_from_slit(other), opts, model_name="x")
    b, problem = result.plan, result.problem
    # The solver's split is continuous; pieces under a page go to the main home (pages are the
    # unit a home is bound in), which may move up to a page per worker and home between two
    # labellings of tied optima. Beyond that slack the price must not depend on the labels.
    slowest = min(bw for i in problem.cpu_node_ids for j in problem.mem_node_ids
                  if (bw := problem.bw(i, j)) is not None)
    page_slack_s = 2 * m["W"] * PAGE / slowest
    assert abs(b.prediction.token_s - a.prediction.token_s) <= \
        1e-5 * a.prediction.token_s + page_slack_s


@SETTINGS
@given(machines, st.floats(0.0, 0.9), st.floats(0.05, 0.5))
def test_higher_penalty_never_more_cross_node_bytes(m, p, dp):
    topo, _ = _machine(m)
    results = []
    for pen in (p, min(1.0, p + dp)):
        opts = PlanOptions(tensor_parallel_shards=m["W"], numa_prefer_local_memory=False,
                           numa_inter_node_penalty=pen)
        try:
            plan = make_plan(workload(), topo, cost_from_slit(topo, penalty=pen), opts,
                             model_name="x").plan
        except InfeasiblePlanError:
            assume(False)
        results.append(plan.prediction.cross_node_read_bytes_per_token)
    assert results[1] <= results[0]


@SETTINGS
@given(machines, st.data())
def test_numa_nodes_and_affinity_honoured(m, data):
    topo, cost = _machine(m)
    cpu_nodes = list(topo.cpu_node_ids())
    subset = data.draw(st.lists(st.sampled_from(cpu_nodes), min_size=1, unique=True))
    affinity = {0: subset[0]} if m["W"] > 1 else {}
    opts = PlanOptions(tensor_parallel_shards=m["W"], numa_nodes=tuple(sorted(subset)),
                       node_affinity=affinity, numa_prefer_local_memory=m["local"])
    try:
        plan = make_plan(workload(), topo, cost, opts, model_name="x").plan
    except InfeasiblePlanError:
        assume(False)
    assert {w.node_id for w in plan.workers} <= set(subset)
    for t in plan.tensors:
        for w in plan.workers:
            assert all(h.node_id in subset or not topo.node(h.node_id).has_cpus
                       for h in plan.tensor_homes(t, w.worker_id))
    if affinity:
        assert plan.workers[0].node_id == subset[0]
