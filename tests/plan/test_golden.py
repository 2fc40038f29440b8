"""Golden plans: committed files that change only on purpose.

Regenerate with ``NUMAPLAN_UPDATE_GOLDEN=1 pytest tests/plan/test_golden.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from numaplan.cost import NodeCompute, cost_from_slit
from numaplan.plan import PlanOptions, make_plan, plan_from_dict
from numaplan.plan.solver_ilp import available_backends
from numaplan.topology import synthetic_topology

from .helpers import fixture_topology, scaled_cost, small_workload

GOLDEN = Path(__file__).resolve().parents[1] / "golden"

CASES = {
    "2s1n": (lambda: synthetic_topology(sockets=2, nodes_per_socket=1, cores_per_node=8), 4, {}),
    "2s2n_snc": (lambda: synthetic_topology(sockets=2, nodes_per_socket=2, cores_per_node=8),
                 4, {}),
    "epyc_nps4": (lambda: fixture_topology("epyc"), 8, {}),
    "memoryless": (lambda: synthetic_topology(sockets=2, nodes_per_socket=2, cores_per_node=8,
                                              memoryless_nodes=[1, 3]), 4, {}),
    "xeonmax_hbm": (lambda: fixture_topology("xeonmax"), 8, {}),
    "xeonmax_hbm_remote_ok": (lambda: fixture_topology("xeonmax"), 8,
                              {"numa_prefer_local_memory": False}),
    # HBM as a measurement shows it (about 4x the DDR bandwidth per socket), not as SLIT
    # guesses it (13 > 10 reads as "slower"): the plan homes the weights in HBM.
    "xeonmax_hbm_measured": (lambda: fixture_topology("xeonmax"), 8,
                             {"numa_prefer_local_memory": False}),
    # Few slow cores per node under the roofline (compute figures as a probe writes them): the
    # products, not the reads, set the pace, and the workers spread over both sockets where
    # bandwidth alone keeps them on one (tests/plan/test_roofline.py).
    "2s_fewcores_roofline": (lambda: synthetic_topology(sockets=2, nodes_per_socket=1,
                                                        cores_per_node=2), 2,
                             {"collective_alpha_s": 30e-6}),
}
COSTS = {"xeonmax_hbm_measured": lambda t: scaled_cost(t, {2: 4.0, 3: 4.0}),
         "2s_fewcores_roofline": lambda t: cost_from_slit(t).model_copy(update={"compute": tuple(
             NodeCompute(node_id=n, weight_bytes_per_s_per_core={"q4f16_1": 0.5e9},
                         cores_measured=2) for n in t.cpu_node_ids())})}


@pytest.mark.skipif("highs" not in available_backends(), reason="goldens are made with HiGHS")
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_plan(tmp_path, case):
    make_topo, w, extra = CASES[case]
    topo = make_topo()
    cost = COSTS.get(case, cost_from_slit)(topo)
    plan = make_plan(small_workload(tmp_path), topo, cost,
                     PlanOptions(tensor_parallel_shards=w, mip_backend="highs", **extra),
                     model_name="golden-llama").plan
    text = plan.to_json()
    path = GOLDEN / f"{case}.plan.json"
    if os.environ.get("NUMAPLAN_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with NUMAPLAN_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{case} changed; review and regenerate deliberately"
    # The golden parses back to the same plan.
    import json

    assert plan_from_dict(json.loads(path.read_text())) == plan


def test_plans_are_byte_identical_across_runs(tmp_path):
    topo = fixture_topology("epyc")
    opts = PlanOptions(tensor_parallel_shards=8)
    wl = small_workload(tmp_path)
    a = make_plan(wl, topo, cost_from_slit(topo), opts, model_name="m").plan.to_json()
    b = make_plan(wl, topo, cost_from_slit(topo), opts, model_name="m").plan.to_json()
    assert a == b
    # Volatile facts (solve times) live in the report, never in the plan.
    assert '"solve_s"' not in a and '"total_s"' not in a
