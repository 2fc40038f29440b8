"""The roofline: a compute term per CPU node, in the predictor, the solvers and the plan."""

from __future__ import annotations

import pytest

from numaplan.cost import cost_from_slit, read_cost_json
from numaplan.cost.model import CollectiveFit, CostModel, NodeCompute
from numaplan.plan import PlanOptions, build_problem, lower_bound, make_plan, predict
from numaplan.plan.solver_ilp import available_backends
from numaplan.topology import synthetic_topology

from .helpers import small_workload

pytestmark = pytest.mark.skipif(not available_backends(), reason="no MIP solver")


def with_compute(cost: CostModel, rate: float, nodes=(0, 1), quant="q4f16_1",
                 call_s: float | None = None) -> CostModel:
    """``cost`` plus a per-core compute figure of ``rate`` bytes/s (and a fixed ``call_s`` per
    product) on ``nodes``."""
    return cost.model_copy(update={"compute": tuple(
        NodeCompute(node_id=n, weight_bytes_per_s_per_core={quant: rate}, cores_measured=2,
                    call_s={} if call_s is None else {quant: call_s})
        for n in nodes)})


@pytest.fixture
def few_cores():
    return synthetic_topology(sockets=2, nodes_per_socket=1, cores_per_node=2)


@pytest.mark.parametrize("solver", ["ilp", "greedy"])
def test_few_cores_spread_wider_under_the_roofline(tmp_path, few_cores, solver):
    # Bandwidth alone: a small model's two workers share one node (crossing sockets costs more
    # in collectives than it saves in reads). With two slow cores per node, the products set the
    # pace and a worker per node halves them.
    wl = small_workload(tmp_path)
    opts = PlanOptions(tensor_parallel_shards=2, collective_alpha_s=30e-6, solver=solver)
    bw_only = make_plan(wl, few_cores, cost_from_slit(few_cores), opts, model_name="m").plan
    roof = make_plan(wl, few_cores, with_compute(cost_from_slit(few_cores), 0.5e9), opts,
                     model_name="m").plan
    assert [len(n.worker_ids) for n in bw_only.nodes] == [2, 0]
    assert [len(n.worker_ids) for n in roof.nodes] == [1, 1]
    assert [n.bound for n in roof.nodes] == ["compute", "compute"]
    assert bw_only.prediction.compute_source is None and bw_only.prediction.compute_s == 0
    assert roof.prediction.compute_source == "slit: q4f16_1 decode kernels"
    # The baselines are priced by the same roofline: single_node is now the slow one.
    assert roof.prediction.baselines["single_node"].tokens_per_s < roof.prediction.tokens_per_s


def test_prediction_is_the_roofline(tmp_path, few_cores):
    wl = small_workload(tmp_path)
    rate = 0.5e9
    p = build_problem(wl, few_cores, with_compute(cost_from_slit(few_cores), rate),
                      num_workers=2)
    from numaplan.plan.solver_greedy import place

    sol = place(p, {0: 2})
    pr = predict(p, sol)
    weights = p.split_bytes_per_worker + p.replica_stream_bytes
    assert pr.per_node_compute_s[0] == pytest.approx(2 * weights / (rate * 2))
    assert pr.compute_s == pr.per_node_compute_s[0] > pr.read_s
    assert pr.token_s == pytest.approx(pr.compute_s + pr.collective_s)
    assert pr.bound == {0: "compute"}
    # A fast core makes the same placement read-bound, and the token time the read time's.
    fast = build_problem(wl, few_cores, with_compute(cost_from_slit(few_cores), 1e15),
                         num_workers=2)
    pf = predict(fast, sol)
    assert pf.bound == {0: "read"} and pf.token_s == pytest.approx(pf.read_s + pf.collective_s)


def test_fixed_call_costs_are_paid_once_per_active_node(tmp_path, few_cores):
    from numaplan.plan.problem import products_per_token
    from numaplan.plan.solver_greedy import place

    wl = small_workload(tmp_path)
    # 4 layers x (qkv, o, gate_up, down) + the untied lm_head.
    assert products_per_token(wl) == 17
    rate, call = 0.5e9, 20e-6
    p = build_problem(wl, few_cores, with_compute(cost_from_slit(few_cores), rate, call_s=call),
                      num_workers=2)
    weights = p.split_bytes_per_worker + p.replica_stream_bytes
    # Two workers on one node run their calls side by side: the fixed part counts once.
    pr = predict(p, place(p, {0: 2}))
    assert pr.per_node_compute_s[0] == pytest.approx(2 * weights / (rate * 2) + 17 * call)
    assert lower_bound(p) <= pr.token_s


@pytest.mark.parametrize("call_s", [None, 20e-6])
def test_ilp_objective_equals_the_roofline_prediction(tmp_path, few_cores, call_s):
    from numaplan.plan import solver_ilp

    p = build_problem(small_workload(tmp_path), few_cores,
                      with_compute(cost_from_slit(few_cores), 0.5e9, call_s=call_s),
                      num_workers=2)
    sol = solver_ilp.solve(p)
    assert sol.objective_s == pytest.approx(predict(p, sol).token_s, rel=1e-6)


def test_partial_compute_figures_mean_no_compute_term(tmp_path, few_cores):
    # One node measured, the other not: a partial term would favour the unmeasured node.
    wl = small_workload(tmp_path)
    p = build_problem(wl, few_cores, with_compute(cost_from_slit(few_cores), 1e9, nodes=(0,)),
                      num_workers=2)
    assert p.compute_bytes_per_s == {} and p.compute_source is None
    # Figures for another quantization do not price this one either.
    q = build_problem(wl, few_cores, with_compute(cost_from_slit(few_cores), 1e9, quant="q0f16"),
                      num_workers=2)
    assert q.compute_bytes_per_s == {}


def test_measured_collective_alpha_is_used_and_named(tmp_path, few_cores):
    wl = small_workload(tmp_path)
    cost = cost_from_slit(few_cores).model_copy(
        update={"collective": CollectiveFit(alpha_s=40e-6, beta_s_per_byte=1e-10, ranks=2)})
    plan = make_plan(wl, few_cores, cost, PlanOptions(tensor_parallel_shards=2),
                     model_name="m").plan
    assert plan.prediction.collective_alpha_s == 4e-05
    assert plan.prediction.collective_alpha_source == "measured"
    nominal = make_plan(wl, few_cores, cost_from_slit(few_cores),
                        PlanOptions(tensor_parallel_shards=2), model_name="m").plan
    assert nominal.prediction.collective_alpha_source == "nominal"
    assert nominal.prediction.collective_s < plan.prediction.collective_s


def test_cost_json_round_trips_with_and_without_figures(tmp_path, few_cores):
    base = cost_from_slit(few_cores)
    full = with_compute(base, 1.5e9).model_copy(
        update={"collective": CollectiveFit(alpha_s=4e-5, beta_s_per_byte=2e-10, ranks=2)})
    path = tmp_path / "cost.json"
    path.write_text(full.to_json())
    assert read_cost_json(str(path)) == full
    assert full.fingerprint() != base.fingerprint()
    # A cost file written before the figures existed still loads: no compute term.
    old = base.model_dump(mode="json")
    del old["compute"], old["collective"]
    import json

    path.write_text(json.dumps(old))
    loaded = read_cost_json(str(path))
    assert loaded.compute == () and loaded.collective is None
    assert loaded.fingerprint() == base.fingerprint()


def test_compute_figures_are_validated(few_cores):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be positive"):
        NodeCompute(node_id=0, weight_bytes_per_s_per_core={"q4f16_1": 0.0}, cores_measured=1)
    with pytest.raises(ValidationError, match="each once"):
        with_compute(cost_from_slit(few_cores), 1e9, nodes=(0, 0)).model_validate(
            with_compute(cost_from_slit(few_cores), 1e9, nodes=(0, 0)).model_dump())
