"""The README's main job on the embedded default.

Run with ``make demo`` (or ``.venv/bin/python examples/demo.py``). Every step runs the same code
as the ``numaplan`` command line and prints the command it stands for.

1. what this machine is (topology);
2. what crossing a node costs here (a quick probe, every buffer's placement audited);
3. the embedded default model: a small Llama-style model described by its Hugging Face config
   (no weights needed to plan), planned on this machine with the measured cost model;
4. the same model planned on a 2-socket AMD EPYC 7742 in NPS4 mode (8 NUMA nodes, a real
   `numactl -H` dump shipped with the tests), the plan shown and checked as CI would.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from numaplan.cli.main import main
from numaplan.model.presets import write_hf_config

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "demo"
EPYC = ROOT / "tests" / "data" / "topologies" / "epyc7742_2s_nps4_archer2.txt"
MODEL = dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=16,
             num_key_value_heads=8, num_hidden_layers=8, vocab_size=8192,
             max_position_embeddings=2048)


def step(title: str, argv: list[str]) -> None:
    """Run one numaplan command; stop the demo if it fails."""
    print(f"\n=== {title}\n$ numaplan {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    print(f"(exit {code}, {time.perf_counter() - t0:.1f} s)", flush=True)
    if code != 0:
        sys.exit(code)


if __name__ == "__main__":
    model = OUT / "demo-llama"
    write_hf_config(model, "tiny-llama", **MODEL)
    step("1. What this machine is", ["topology"])
    step("2. What crossing a node costs here (measured, with a page audit)",
         ["probe", "--quick", "-o", str(OUT / "cost.json")])
    step("3. Plan the embedded default model on this machine (measured costs)",
         ["compile", str(model), "--quantization", "q4f16_1", "--cost", str(OUT / "cost.json"),
          "-o", str(OUT / "here")])
    step("4a. What if: the same model on a 2-socket EPYC 7742, NPS4 (8 nodes)",
         ["compile", str(model), "--quantization", "q4f16_1", "--numactl-file", str(EPYC),
          "--tp", "8", "-o", str(OUT / "epyc")])
    step("4b. The plan as a reviewer sees it (table + picture)",
         ["show", str(OUT / "epyc"), "--png", str(OUT / "epyc" / "plan.png")])
    step("4c. The CI gate on that plan",
         ["check", str(OUT / "epyc"), "--model", str(model), "--quantization", "q4f16_1",
          "--numactl-file", str(EPYC)])
    print(f"\nOutputs are in {OUT}")
