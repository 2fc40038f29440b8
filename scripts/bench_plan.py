"""Planner scale benchmark: times `numaplan compile` end to end (a fresh process each run).

Cases (issue 3): a Llama-3-70B-shaped workload (80 layers; q4f16_1 and q0f16; index built from
the config, no weights) with W=8 on the 8-node EPYC fixture (target < 3 s, MIP proven optimal);
W=32 on a 32-node synthetic machine (< 20 s); a 256-node synthetic machine through recursive
bisection (< 60 s). Llama-3-70B has 8 KV heads, so W=32 and W=64 use the same shape with
multi-head attention (64 KV heads, as Llama-1-65B), the only way those degrees are valid.

Usage: python scripts/bench_plan.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from numaplan.model.presets import write_hf_config  # noqa: E402
from numaplan.topology import sample_path, synthetic_topology  # noqa: E402

EPYC = sample_path("epyc")


def compile_case(name, model, quant, topo_args, w, out, extra=()):
    cmd = [sys.executable, "-m", "numaplan.cli", "compile", str(model), "--quantization", quant,
           "--tp", str(w), "-o", str(out / name), *topo_args, *extra]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"case": name, "error": r.stderr.strip()}
    plan = json.loads((out / name / "numa-plan.json").read_text())
    report = json.loads((out / name / "numa-plan.report.json").read_text())
    pr = plan["prediction"]
    return {"case": name, "wall_s": round(wall, 2), "solver": plan["solver"]["name"],
            "status": plan["solver"]["status"], "gap": plan["solver"]["gap"],
            "solve_s": report["solve_s"], "tokens_per_s": pr["tokens_per_s"],
            "fraction_of_bound": pr["fraction_of_bound"],
            "best_baseline": max(pr["baselines"].items(), key=lambda kv: kv[1]["tokens_per_s"])[0]
            if pr["baselines"] else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="numaplan-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    m70 = out / "llama3-70b"
    write_hf_config(m70, "llama3-70b")
    mha = out / "llama-70b-mha"
    write_hf_config(mha, "llama3-70b", num_key_value_heads=64)
    t32 = out / "synthetic-32.json"
    t32.write_text(synthetic_topology(sockets=4, nodes_per_socket=8, cores_per_node=8,
                                      mem_per_node_bytes=64 << 30).to_json())
    t256 = out / "synthetic-256.json"
    t256.write_text(synthetic_topology(sockets=8, nodes_per_socket=32, cores_per_node=4,
                                       mem_per_node_bytes=32 << 30).to_json())
    cases = [
        ("70b-q4f16_1-W8-epyc8", m70, "q4f16_1", ["--numactl-file", str(EPYC)], 8, ()),
        ("70b-q0f16-W8-epyc8", m70, "q0f16", ["--numactl-file", str(EPYC)], 8, ()),
        ("70b-mha-q4f16_1-W32-synth32", mha, "q4f16_1", ["--topology", str(t32)], 32, ()),
        ("70b-mha-q4f16_1-W64-synth256", mha, "q4f16_1", ["--topology", str(t256)], 64, ()),
    ]
    print(f"{'case':<32} {'wall s':>7} {'solver':<10} {'status':<9} {'gap':>8} "
          f"{'tok/s':>8} {'of bound':>8}")
    results = []
    for name, model, quant, targs, w, extra in cases:
        r = compile_case(name, model, quant, targs, w, out, extra)
        results.append(r)
        if "error" in r:
            print(f"{name:<32} ERROR {r['error']}")
            continue
        gap = "-" if r["gap"] is None else f"{r['gap']:.1e}"
        print(f"{name:<32} {r['wall_s']:>7.2f} {r['solver']:<10} {r['status']:<9} {gap:>8} "
              f"{r['tokens_per_s']:>8.3g} {r['fraction_of_bound']:>8.3f}", flush=True)
    (out / "bench_plan.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"(results in {out / 'bench_plan.json'}; predictions use nominal SLIT-derived costs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
