"""Decode tokens/s of the bandwidth-bound example model: TP=2 under numaplan vs one process.

Both sides run the same weights (the example's ``bench`` size, q0f32: ~430 MB read per token)
and the same compiled kernels (numaplan's pipeline): the single process is the TP=1 library
driven by TVM's VM with a 2-thread pool on this machine's 2 CPUs; numaplan is the TP=2 library,
two pinned workers of one thread each, the shared-memory collective between them. On a
one-node machine this measures numaplan's overhead (collectives, Disco), not a NUMA gain.
Target: TP=2 at >= 0.9x the single process.

Usage: python scripts/bench_decode.py [--tokens 32] [--size bench]
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
    import tvm
    from tvm import relax

    from examples.tiny_llama.compile import VMRunner
    from examples.tiny_llama.reference import load_shard_params
    from numaplan.runtime.session import _ensure_ccl_resolvable

    _ensure_ccl_resolvable()
    tvm.get_global_func("runtime.config_threadpool")(-2, threads,
                                                    [str(c) for c in range(threads)])
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    runner = VMRunner(vm, load_shard_params(model_dir, 1, 0), max_seq_len=256)
    runner.prefill(PROMPT)
    steps = []
    tok = 1
    for _ in range(tokens):
        t0 = time.perf_counter()
        tok = int(runner.decode(tok).argmax())
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--size", default="bench")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    from examples.tiny_llama.build import build_model_dir

    root = Path(tempfile.mkdtemp(prefix="numaplan-decode-"))
    d = build_model_dir(root / f"tiny-{args.size}", size=args.size, dtype="float32")
    libs = {}
    for w in (1, 2):
        out = root / f"tp{w}"
        assert cli(["compile", str(d), "--tp", str(w), "-o", str(out)]) == 0
        libs[w] = out / f"{d.name}-numa-llvm.so"
    # numaplan first: the single-process run reconfigures this process's TVM pool.
    tp2 = numaplan_tp(d, libs[2], args.tokens)
    one = single_process(d, libs[1], args.tokens, threads=2)
    med1, med2 = statistics.median(one["step_s"]), statistics.median(tp2["step_s"])
    print(f"\nmodel {d.name} (q0f32), {args.tokens} decode steps, median per token:")
    print(f"  one process, 2 threads : {1e3 * med1:8.2f} ms  ({1 / med1:6.1f} tokens/s)")
    print(f"  numaplan TP=2          : {1e3 * med2:8.2f} ms  ({1 / med2:6.1f} tokens/s), "
          f"weights {tp2['weight_local_percentage']:.1f}% on planned node")
    if tp2.get("collective_s_per_step") is not None:
        print(f"  of which collectives   : {1e3 * tp2['collective_s_per_step']:8.3f} ms per token")
    print(f"  ratio TP=2 / single    : {med1 / med2:.2f}x (target >= 0.9)")
    if args.json:
        Path(args.json).write_text(json.dumps({"single": one, "tp2": tp2}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
