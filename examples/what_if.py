"""What if: Llama-3-8B- and 70B-shaped models on the sample machines, every strategy priced.

No weights, no hardware: the workloads are built from the models' Hugging Face configs (the
``numaplan.model.presets``), the machines from real ``numactl -H`` dumps shipped with numaplan,
the costs from SLIT distances (nominal figures, so read the numbers as a comparison of
strategies, not a promise; give a measured cost model with ``numaplan probe`` for real ones).

Usage: python examples/what_if.py [--quantization q4f16_1] [--penalty 0.3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from numaplan.cost import cost_from_slit
from numaplan.model import load_workload, valid_tp_degrees
from numaplan.model.presets import write_hf_config
from numaplan.plan import PlanOptions, make_plan
from numaplan.topology import read_sample

MACHINES = {
    "2x Xeon E5-2698B v3 (2 nodes)": "hsw",
    "2x EPYC 7742 NPS4 (8 nodes)": "epyc",
    "2x Xeon Max, HBM flat (2+2 nodes)": "xeonmax",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quantization", default="q4f16_1")
    ap.add_argument("--penalty", type=float, default=0.3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    for preset in ("llama3-8b", "llama3-70b"):
        write_hf_config(tmp / preset, preset)
        wl = load_workload(tmp / preset, quantization=args.quantization)
        for label, sample in MACHINES.items():
            topo = read_sample(sample)
            nodes = len(topo.cpu_node_ids())
            w = max(x for x in valid_tp_degrees(wl) if x <= max(nodes, 1))
            plan = make_plan(wl, topo, cost_from_slit(topo, penalty=args.penalty),
                             PlanOptions(tensor_parallel_shards=w,
                                         numa_inter_node_penalty=args.penalty),
                             model_name=preset).plan
            pr = plan.prediction
            print(f"\n{preset} {args.quantization} on {label}, W={w} "
                  f"(predicted, nominal figures):")
            print(f"  {'numaplan plan':<14} {pr.tokens_per_s:8.2f} tokens/s  "
                  f"({100 * pr.fraction_of_bound:.1f}% of the bound "
                  f"{pr.lower_bound_tokens_per_s:.2f})")
            for name, b in pr.baselines.items():
                note = "" if b.fits else "  (does not fit in memory)"
                print(f"  {name:<14} {b.tokens_per_s:8.2f} tokens/s  "
                      f"plan is {pr.tokens_per_s / b.tokens_per_s:4.2f}x{note}")


if __name__ == "__main__":
    main()
