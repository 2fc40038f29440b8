"""Insert numaplan's passes into MLC LLM's own ``mlc_llm compile`` pipeline.

MLC builds a model library with ``relax.get_pipeline("mlc_llm", ...)`` inside its own
``PassContext``. :func:`numaplan.passes.wrap_mlc_pipeline` replaces that registered pipeline, in
this process, with one that first runs numaplan's ``AnnotateNumaPlan`` (the plan, readable by
the runtime from ``_numaplan_plan``) and ``LowerCollectivesToNuma`` (``R.ccl.*`` -> numaplan's
CPU collective, before MLC's ``LegalizeOps`` would lower them to NCCL-only ``runtime.disco.*``).

Usage (MLC LLM installed, a plan made for the model and the target machine)::

    numaplan compile ~/models/Llama-3-8B-q4f16_1-MLC -o out/llama --tp 2
    python examples/mlc_compile.py ~/models/Llama-3-8B-q4f16_1-MLC out/llama/numa-plan.json \\
        out/llama/llama-numa-llvm.so

Without MLC installed the script says so and exits 1 (``tests/passes/test_pipeline.py`` tests
the wrapper against a stand-in pipeline registered under MLC's name).
"""

from __future__ import annotations

import sys

from numaplan.plan import read_plan


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__)
        return 2
    model_dir, plan_path, out = argv
    try:
        from mlc_llm.interface.compile import compile as mlc_compile  # noqa: F401
        from mlc_llm.support.auto_target import detect_target_and_host  # noqa: F401
    except ImportError:
        print("mlc_llm is not installed here; install MLC LLM to build its model libraries",
              file=sys.stderr)
        return 1
    from numaplan.passes import wrap_mlc_pipeline

    plan = read_plan(plan_path)
    undo = wrap_mlc_pipeline(plan)  # every relax.get_pipeline("mlc_llm") now runs ours first
    try:
        # MLC's CLI entry point, in this process so that the wrapped pipeline is the one used.
        from mlc_llm.cli.compile import main as mlc_main

        mlc_main([model_dir, "--device", "cpu", "--overrides",
                  f"tensor_parallel_shards={plan.request.tensor_parallel_shards}", "-o", out])
    finally:
        undo()
    print(f"built {out}; run it with: numaplan run {model_dir} --lib {out} "
          f"--prompt-ids 1,2,3", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
