"""The plan's predicted tokens/s against the lower bound and every baseline (issue 3's table).

A Llama-3-70B-shaped workload (q4f16_1, from its config) on uniform machines (the Haswell and
EPYC fixtures, a synthetic 2 sockets x 2 SNC nodes) and heterogeneous ones (memoryless CPU nodes,
the Xeon Max HBM fixture as SLIT describes it and with HBM measured at 4x DDR, one node at half
bandwidth). Predictions, nominal SLIT-derived figures except where a scaled matrix is named.

Usage: python scripts/prediction_table.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from numaplan.cost import build_cost_model, cost_from_slit  # noqa: E402
from numaplan.model import load_workload  # noqa: E402
from numaplan.model.presets import write_hf_config  # noqa: E402
from numaplan.plan import PlanOptions, make_plan  # noqa: E402
from numaplan.topology import read_sample, synthetic_topology  # noqa: E402


def scaled(topo, factors):
    base = cost_from_slit(topo)
    bw = tuple(tuple(None if v is None else v * factors.get(base.node_ids[j], 1.0)
                     for j, v in enumerate(row)) for row in base.read_bw_gbps)
    return build_cost_model(None, node_ids=base.node_ids, read_bw_gbps=bw, lat_ns=base.lat_ns,
                            method="json", params={"scaled": str(factors)})


def main() -> None:
    d = Path(tempfile.mkdtemp()) / "llama3-70b"
    write_hf_config(d, "llama3-70b")
    wl = load_workload(d, quantization="q4f16_1")
    hsw = read_sample("hsw")
    epyc = read_sample("epyc")
    xmax = read_sample("xeonmax")
    snc = synthetic_topology(sockets=2, nodes_per_socket=2, cores_per_node=16,
                             mem_per_node_bytes=128 << 30)
    memless = synthetic_topology(sockets=2, nodes_per_socket=2, cores_per_node=16,
                                 mem_per_node_bytes=256 << 30, memoryless_nodes=[1, 3])
    cases = [
        ("uniform", "2s Haswell (2 nodes)", hsw, cost_from_slit(hsw), 2, True),
        ("uniform", "2s EPYC NPS4 (8 nodes)", epyc, cost_from_slit(epyc), 8, True),
        ("uniform", "2s x 2 SNC synthetic (4 nodes)", snc, cost_from_slit(snc), 4, True),
        ("hetero", "memoryless nodes 1,3 (4 nodes)", memless, cost_from_slit(memless), 4, True),
        ("hetero", "Xeon Max HBM flat, SLIT", xmax, cost_from_slit(xmax), 2, False),
        ("hetero", "Xeon Max HBM flat, HBM 4x DDR", xmax, scaled(xmax, {2: 4.0, 3: 4.0}), 2,
         False),
        ("hetero", "Haswell, socket 1 at 60% bw", hsw, scaled(hsw, {1: 0.6}), 8, True),
        ("hetero", "EPYC NPS4, node 5 at half bw", epyc, scaled(epyc, {5: 0.5}), 4, True),
        # The limit of even shards: one worker per node, so the slow node sets the pace.
        ("hetero", "EPYC NPS4, node 5 half, W=8", epyc, scaled(epyc, {5: 0.5}), 8, True),
    ]
    print(f"{'kind':<8} {'machine':<32} {'W':>2} {'plan tok/s':>10} {'bound':>8} {'of bound':>8}"
          f"  best baseline (tok/s)          plan vs best")
    for kind, name, topo, cost, w, local in cases:
        plan = make_plan(wl, topo, cost, PlanOptions(tensor_parallel_shards=w,
                                                     numa_prefer_local_memory=local),
                         model_name="70b").plan
        pr = plan.prediction
        best = max(pr.baselines.items(), key=lambda kv: kv[1].tokens_per_s)
        print(f"{kind:<8} {name:<32} {w:>2} {pr.tokens_per_s:>10.3f} "
              f"{pr.lower_bound_tokens_per_s:>8.3f} {100 * pr.fraction_of_bound:>7.1f}%  "
              f"{best[0]:<12} {best[1].tokens_per_s:>8.3f}          "
              f"{pr.tokens_per_s / best[1].tokens_per_s:.3f}x")


if __name__ == "__main__":
    main()
