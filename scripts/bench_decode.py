"""Decode tokens/s of the bandwidth-bound example model: TP=2 under numaplan vs one process.

Both sides run the same weights (the example's ``bench`` size, q0f32: ~430 MB read per token)
and the same compiled kernels (numaplan's pipeline): the single process is the TP=1 library
driven by TVM's VM with a 2-thread pool on this machine's 2 CPUs; numaplan is the TP=2 library,
two pinned workers of one thread each, the shared-memory collective between them. On a
one-node machine this measures numaplan's overhead (collectives, Disco), not a NUMA gain.
Target: TP=2 at >= 0.9x the single process.

The two sides alternate for ``--rounds`` rounds (the single process in a fresh subprocess each
time, numaplan in a fresh session), so that a change in the machine's background load hits both
alike; each round gives a ratio of medians, and the median of those is the figure.

Usage: python scripts/bench_decode.py [--tokens 32] [--size bench] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from numaplan.cli.main import main as cli  # noqa: E402

PROMPT = [11, 22, 33, 44, 55, 66, 77, 88]


def single_process(model_dir: Path, lib: Path, tokens: int, threads: int) -> dict:
    import numpy as np
    import tvm
    from tvm import relax

    from numaplan.model.reference import read_tensors
    from numaplan.runtime.ccl.tvm_functions import register_placeholders
    from numaplan.runtime.paged_kv import PagedKVModel, read_metadata

    register_placeholders()
    tvm.get_global_func("runtime.config_threadpool")(-2, threads,
                                                    [str(c) for c in range(threads)])
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    weights = read_tensors(model_dir)
    params = [tvm.runtime.tensor(np.ascontiguousarray(weights[p["name"]].astype(p["dtype"])))
              for p in read_metadata(vm)["params"]]
    model = PagedKVModel(vm, params, max_total_seq_len=256)
    model.add_sequence(0)
    tok = int(model.prefill([0], [PROMPT])[0].argmax())
    steps = []
    for _ in range(tokens):
        t0 = time.perf_counter()
        tok = int(model.decode([0], [tok])[0].argmax())
        steps.append(time.perf_counter() - t0)
    return {"step_s": steps}


def numaplan_tp(model_dir: Path, lib: Path, tokens: int) -> dict:
    from numaplan.runtime.session import NumaRuntime, RunOptions

    with NumaRuntime(model_dir, lib, options=RunOptions(max_seq_len=256)) as rt:
        rt.generate(PROMPT, 4)  # warm-up
        res = rt.generate(PROMPT, tokens + 1)
        stats = rt.stats()
    return {"step_s": list(res.step_s), "collective": res.collective,
            "weight_local_percentage": stats.weight_local_percentage,
            "collective_s_per_step": stats.collective_s_per_step}


def single_in_subprocess(model_dir: Path, lib: Path, tokens: int) -> dict:
    """:func:`single_process` in a fresh interpreter (its TVM pool is the process's own)."""
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--single", str(model_dir), str(lib),
                          "--tokens", str(tokens)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--size", default="bench")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--single", nargs=2, metavar=("MODEL_DIR", "LIB"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.single:
        print(json.dumps(single_process(Path(args.single[0]), Path(args.single[1]),
                                        args.tokens, threads=2)))
        return 0
    from numaplan.tiny_llama.build import build_model_dir

    root = Path(tempfile.mkdtemp(prefix="numaplan-decode-"))
    d = build_model_dir(root / f"tiny-{args.size}", size=args.size, dtype="float32")
    libs = {}
    for w in (1, 2):
        out = root / f"tp{w}"
        assert cli(["compile", str(d), "--tp", str(w), "-o", str(out)]) == 0
        libs[w] = out / f"{d.name}-numa-llvm.so"
    rounds = []
    for r in range(args.rounds):
        tp2 = numaplan_tp(d, libs[2], args.tokens)
        one = single_in_subprocess(d, libs[1], args.tokens)
        med1, med2 = statistics.median(one["step_s"]), statistics.median(tp2["step_s"])
        rounds.append({"single": one, "tp2": tp2, "single_median_s": med1,
                       "tp2_median_s": med2, "ratio": med1 / med2})
    print(f"\nmodel {d.name} (q0f32), {args.tokens} decode steps per run, median per token:")
    print(f"  {'round':>5}  {'one process, 2 threads':>22}  {'numaplan TP=2':>13}  "
          f"{'collectives':>11}  {'ratio':>5}")
    for i, r in enumerate(rounds, 1):
        coll = r["tp2"].get("collective_s_per_step")
        print(f"  {i:>5}  {1e3 * r['single_median_s']:>19.2f} ms  "
              f"{1e3 * r['tp2_median_s']:>10.2f} ms  "
              f"{'-' if coll is None else f'{1e3 * coll:.3f} ms':>11}  {r['ratio']:>4.2f}x")
    ratio = statistics.median(r["ratio"] for r in rounds)
    local = {r["tp2"]["weight_local_percentage"] for r in rounds}
    print(f"  weights on their planned node: {', '.join(f'{v:.1f}%' for v in sorted(local))}")
    print(f"  ratio TP=2 / single (median of {len(rounds)} rounds): {ratio:.2f}x "
          f"(target >= 0.9)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rounds": rounds, "ratio": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
