"""numaplan's predictions for machines nobody here has, next to what others published for them
(docs/validation.md's table).

Every case plans a model from its Hugging Face config (no weights) on a described machine with
a cost model from memory specifications (``--memory-spec``; efficiency 0.8 everywhere, no
per-case tuning) through ``numaplan compile --no-build``, exactly the command printed, and reads
the plan's prediction back. The inputs live in ``docs/validation/``: machine descriptions
(``*.topology.json``, written here from their published shapes, or a shipped ``numactl -H``
dump) and model configs (``models/*/config.json``, the published architectures).

Usage: python scripts/validate_published.py [--write-inputs]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VALIDATION = ROOT / "docs" / "validation"
GIB = 1 << 30

#: Published architectures (Hugging Face configs of the named checkpoints).
MODELS = {
    # DeepSeek-R1-Distill-Llama-70B is Llama-3.3-70B-shaped.
    "llama-70b": dict(hidden_size=8192, intermediate_size=28672, num_attention_heads=64,
                      num_key_value_heads=8, num_hidden_layers=80, vocab_size=128256,
                      max_position_embeddings=131072, tie_word_embeddings=False),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=24,
                         num_key_value_heads=8, num_hidden_layers=28, vocab_size=128256,
                         max_position_embeddings=131072, tie_word_embeddings=True),
    # guanaco-65B is LLaMA-65B-shaped.
    "llama-65b": dict(hidden_size=8192, intermediate_size=22016, num_attention_heads=64,
                      num_key_value_heads=64, num_hidden_layers=80, vocab_size=32000,
                      max_position_embeddings=2048, tie_word_embeddings=False),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                       num_key_value_heads=8, num_hidden_layers=32, vocab_size=128256,
                       max_position_embeddings=8192, tie_word_embeddings=False),
}

#: (label, source, model, quantization, machine file, memory spec, extra args, published ms
#: per token or None, what the published figure is)
CASES = [
    ("SGLang TP6, 2x Xeon 6980P SNC3", "LMSYS/Intel SGLang CPU blog (2025), Table 1",
     "llama-70b", "int8_weight_only", "xeon6980p_2s_snc3.topology.json", "4x8800",
     ["--tp", "8", "--context-tokens", "1536"], 76.53, "TPOT, 1 request, 1024 in / 1024 out"),
    ("SGLang, 1 socket of the same (3 SNC nodes)", "same table",
     "llama-3.2-3b", "q0bf16", "xeon6980p_2s_snc3.topology.json", "4x8800",
     ["--tp", "2", "--numa-nodes", "0-2", "--context-tokens", "1536"], 16.98,
     "TPOT, 1 request, 1024 in / 1024 out"),
    ("llama.cpp, 16 threads on one socket", "llama.cpp PR #1556",
     "llama-65b", "q5_1_sizing", "hsw_2s_e5-2698bv3.txt", "4x2133",
     ["--tp", "1", "--numa-nodes", "0", "--context-tokens", "256"], 1114.0, "ms/token"),
    ("llama.cpp, 32 threads over both sockets", "llama.cpp PR #1556",
     "llama-65b", "q5_1_sizing", "hsw_2s_e5-2698bv3.txt", "4x2133",
     ["--tp", "2", "--context-tokens", "256"], 1296.0,
     "ms/token (one process over both sockets, no placement)"),
    ("vLLM tp=1, one node of Graviton4", "vLLM PR #32792 (relative figures only)",
     "llama-3-8b", "q0bf16", "graviton4_2s.topology.json", "12x5600",
     ["--tp", "1", "--numa-nodes", "0", "--context-tokens", "1024"], None,
     "baseline of the relative table"),
    ("vLLM tp=2, shm communicator + binding", "vLLM PR #32792 (relative figures only)",
     "llama-3-8b", "q0bf16", "graviton4_2s.topology.json", "12x5600",
     ["--tp", "2", "--context-tokens", "1024"], None, "53.6 % of the tp=1 TPOT"),
]


def write_inputs() -> None:
    """The machine descriptions and model configs the cases read (committed)."""
    from numaplan.model.presets import write_hf_config
    from numaplan.topology import synthetic_topology

    VALIDATION.mkdir(parents=True, exist_ok=True)
    # 2 x 128 cores, SNC3: 43/43/42 cores per node, 12 MRDIMM channels per socket (4 per node);
    # memory size per node as shipped in the blog's system is not needed beyond fitting.
    gnr = synthetic_topology(sockets=2, nodes_per_socket=3, cores_per_node=[43, 43, 42] * 2,
                             mem_per_node_bytes=256 * GIB, cpu_model="Intel Xeon 6980P (described)")
    (VALIDATION / "xeon6980p_2s_snc3.topology.json").write_text(gnr.to_json())
    grav = synthetic_topology(sockets=2, nodes_per_socket=1, cores_per_node=96,
                              mem_per_node_bytes=384 * GIB,
                              cpu_model="AWS Graviton4 c8g.metal-48xl (described)")
    (VALIDATION / "graviton4_2s.topology.json").write_text(grav.to_json())
    for name, cfg in MODELS.items():
        write_hf_config(VALIDATION / "models" / name, "tiny-llama", **cfg)


def machine_args(machine: str) -> list[str]:
    if machine.endswith(".txt"):
        from numaplan.topology import sample_path

        return ["--numactl-file", str(sample_path(machine.split("_")[0]))]
    return ["--topology", str(VALIDATION / machine)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write-inputs", action="store_true")
    args = ap.parse_args()
    if args.write_inputs:
        write_inputs()
    from numaplan.cli.main import main as cli
    from numaplan.plan import read_plan

    tmp = Path(tempfile.mkdtemp(prefix="numaplan-validate-"))
    rows = []
    for k, (label, source, model, quant, machine, spec, extra, published, what) in \
            enumerate(CASES):
        out = tmp / f"case{k}"
        argv = ["compile", str(VALIDATION / "models" / model), "--quantization", quant,
                *machine_args(machine), "--memory-spec", spec, *extra, "--no-build",
                "-o", str(out)]
        with contextlib.redirect_stdout(io.StringIO()):
            if cli(argv) != 0:
                raise SystemExit(f"compile failed: {shlex.join(argv)}")
        plan = read_plan(out)
        pr = plan.prediction
        rel = [a.replace(str(ROOT) + "/", "") for a in argv[:-2]]
        rows.append((label, source, model, quant, pr, published, what, rel, plan))
    for label, source, model, quant, pr, published, what, rel, plan in rows:
        counts = {n.node_id: len(n.worker_ids) for n in plan.nodes if n.worker_ids}
        ratio = "" if published is None else \
            f", published/predicted {published / 1e3 / pr.token_s:.2f}"
        print(f"{label} [{source}]\n  model {model} {quant} "
              f"({plan.model.weight_bytes / 1e9:.1f} GB), workers per node {counts}\n"
              f"  predicted {pr.token_s * 1e3:.2f} ms/token (read {pr.read_s * 1e3:.2f}, "
              f"collectives {pr.collective_s * 1e3:.2f}); published "
              f"{'-' if published is None else f'{published:.2f} ms'} ({what}){ratio}\n"
              f"  baselines (predicted ms/token): " + ", ".join(
                  f"{k} {v.token_s * 1e3:.1f}" for k, v in pr.baselines.items()) + "\n"
              f"  $ numaplan {shlex.join(rel)}")
    base = rows[4][4].token_s
    print(f"\nvLLM relative: predicted tp=2 / tp=1 TPOT {rows[5][4].token_s / base:.3f} "
          "(published 0.536)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
