"""Decode speed of real-sized quantized models as a share of this machine's read bandwidth.

For each quantization (default ``q4f16_1`` and ``q0f16``) a SmolLM2-135M-shaped Llama (hidden
576, 30 layers, 9 heads / 3 KV heads, vocabulary 49152, tied embeddings: 135 M parameters)
is written with random weights in MLC's format, compiled by ``numaplan compile`` (TP=1 on this
machine's CPUs) and decoded by the pinned worker; ``numaplan probe`` measures the local read
bandwidth in the same run, before and after the models, and the figure is

    (weight bytes read per token / median time per token) / probe bandwidth.

Weights only: the KV cache read at these short contexts is under 1 % of the weights.

Usage: python scripts/bench_models.py [--quantizations q4f16_1,q0f16] [--tokens 64]
       [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9,
               num_key_value_heads=3, num_hidden_layers=30, vocab_size=49152,
               tie_word_embeddings=True, context_window_size=2048, prefill_chunk_size=256,
               rope_theta=100000.0)
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173]


def probe_bandwidth() -> float:
    """Local read bandwidth of node 0 (GB/s), measured by numaplan's probe."""
    from numaplan.cost.probe import ProbeSettings, probe
    from numaplan.topology import read_sysfs

    topo = read_sysfs("/")
    cost = probe(topo, ProbeSettings(quick=True))
    node = topo.node_ids[0]
    return float(cost.read_bw_gbps[cost.node_ids.index(node)][cost.node_ids.index(node)])


def main() -> int:
    from numaplan.cli.main import main as cli
    from numaplan.model.random_model import chat_config, write_random_model
    from numaplan.runtime.session import NumaRuntime
    from numaplan.sampling import SamplingParams

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quantizations", default="q4f16_1,q0f16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="numaplan-bench-models-"))
    root.mkdir(parents=True, exist_ok=True)
    bandwidth = [probe_bandwidth()]
    models = {}
    for quant in args.quantizations.split(","):
        d = root / f"smollm2-shaped-{quant}"
        if not (d / "tensor-cache.json").exists():
            write_random_model(d, chat_config("llama", quant, **SMOLLM2))
        out = root / f"lib-{quant}"
        lib = out / f"{d.name}-numa-llvm.so"
        if not lib.exists() and cli(["compile", str(d), "--tp", "1", "-o", str(out)]) != 0:
            raise SystemExit(f"compile failed: {quant}")
        index = json.loads((d / "tensor-cache.json").read_text())
        # bytes in memory: float32 records were stored as bf16 but are read as float32
        nbytes = sum(r["nbytes"] * (2 if r["dtype"] == "float32" else 1)
                     for s in index["records"] for r in s["records"])
        models[quant] = (d, lib, nbytes)
    times: dict[str, list[float]] = {q: [] for q in models}
    for _ in range(args.rounds):
        for quant, (d, lib, _) in models.items():
            with NumaRuntime(d, lib) as rt:
                rt.generate(PROMPT, 4)
                _, stats = rt.run([PROMPT], SamplingParams(max_new_tokens=args.tokens,
                                                           ignore_eos=True))
            times[quant].append(statistics.median(stats.step_s))
    bandwidth.append(probe_bandwidth())
    bw = statistics.median(bandwidth)
    rows = {}
    print(f"\nprobe read bandwidth (node 0, before and after): "
          f"{', '.join(f'{b:.1f}' for b in bandwidth)} GB/s")
    print(f"{'model':<28} {'weights':>9} {'ms/token':>9} {'tokens/s':>9} {'GB/s':>7} "
          f"{'of probe':>8}")
    for quant, (_, _, nbytes) in models.items():
        t = statistics.median(times[quant])
        gbs = nbytes / t / 1e9
        rows[quant] = {"weight_bytes": nbytes, "ms_per_token": 1e3 * t, "tokens_per_s": 1 / t,
                       "gb_per_s": gbs, "share_of_probe": gbs / bw,
                       "rounds_ms": [1e3 * x for x in times[quant]]}
        print(f"{'135M llama ' + quant:<28} {nbytes / 2**20:>6.1f} MiB {1e3 * t:>9.2f} "
              f"{1 / t:>9.1f} {gbs:>7.2f} {100 * gbs / bw:>7.1f}%")
    if args.json:
        args.json.write_text(json.dumps({"probe_gbps": bandwidth, "models": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
