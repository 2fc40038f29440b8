"""Every help string of the command line, in one place (so wording stays consistent)."""

HELP = {
    "prog": "Plan and enforce NUMA placement for tensor-parallel LLM inference on CPUs.",
    "verbose": "log decisions (-v: info, -vv: debug)",
    "debug": "show a traceback for internal errors",
    # topology
    "topology": "show the machine's NUMA topology (detected, or read from a file)",
    "sysfs_root": "read sysfs/procfs below this directory instead of / (fake trees, captures)",
    "numactl_file": "read the topology from saved `numactl -H` output",
    "lscpu_file": ("read the topology from saved `lscpu` output "
                   "(no memory sizes, assumed distances)"),
    "hwloc_file": "read the topology from hwloc 2.x XML (`lstopo --of xml`)",
    "topology_json": "read a topology JSON written by `numaplan topology --json`",
    "json": "print JSON instead of a table",
    "output": "write the result to this file (atomically)",
    # probe
    "probe": "measure read bandwidth and latency between every CPU node and memory node, how "
             "fast numaplan's decode kernels consume weights per core of each CPU node (the "
             "roofline's compute term), and the all-reduce's per-call cost",
    "no_compute": "measure memory only: no kernel or collective figures (the plan then prices "
                  "memory reads only, and says so)",
    "quick": "smaller buffers and fewer repeats (seconds instead of tens of seconds)",
    "probe_output": "write the measured cost model as JSON to this file",
    "buffer_mib": "buffer size per cell in MiB (default: at least 4x the last-level cache)",
    "threads_per_node": "reader threads per node (default: one per usable physical core)",
}

HELP.update({
    "compile": "plan a model's placement and build its library into OUT/",
    "model_dir": "MLC model directory (mlc-chat-config.json + tensor-cache.json), or a directory "
                 "with a Hugging Face config.json (then give --quantization)",
    "out_dir": "output directory (default: out/<model name>)",
    "cost": "cost model JSON from `numaplan probe -o` (default: derived from SLIT distances "
            "and --numa-inter-node-penalty)",
    "memory_spec": "derive the cost model from memory specifications, for a machine nobody can "
                   "measure: [NODES:]CHANNELSxMTS[@EFFICIENCY] entries separated by ';', e.g. "
                   "'12x6400' (every memory node: 12 channels of DDR5-6400 at the default "
                   "efficiency 0.8) or '0-2:4x8800@0.8;3-5:4x8800@0.8'; local bandwidth = "
                   "channels x MT/s x 8 bytes x efficiency, remote reads as SLIT and the penalty "
                   "derive them; no compute term (the prediction is labelled nominal)",
    "mlc_output": "Intel MLC output file (a full run, or --bandwidth_matrix output) to use as "
                  "the cost model",
    "tp": "tensor-parallel workers W (default: the config's tensor_parallel_shards if > 1, "
          "else the largest valid W not above the number of usable CPU nodes)",
    "numa_nodes": "comma-separated node ids the plan may use (default: all allowed)",
    "penalty": "numa_inter_node_penalty in 0..1, in steps of 0.05: the cost of crossing nodes "
               "when no measured matrix is given (README: exponent 4p on the SLIT ratio)",
    "no_prefer_local": "let the planner home shards on other nodes (numa_prefer_local_memory "
                       "off)",
    "node_affinity": "explicit worker:node pairs the plan must honour, e.g. 0:0,1:0,2:1",
    "solver": "auto (MIP up to 64 CPU nodes, recursive bisection above), greedy, ilp, partition",
    "mip_backend": "MIP solver behind pulp: auto (HiGHS when installed, else CBC), highs, cbc",
    "time_limit": "time limit of the MIP solver in seconds",
    "max_total_seq_len": "tokens of KV cache each worker reserves, summed over its sequences "
                         "(MLC's max_total_seq_len; default: the context window, or the "
                         "largest that fits after the weights)",
    "plan_against_free": "also cap each node at the free memory its source reported (a dump's "
                         "free figure is a snapshot of another machine: off by default)",
    "batch_size": "sequences decoded together (for the prediction)",
    "context_tokens": "context length whose KV cache is read per token (default: half the "
                      "context window)",
    "quantization": "quantization to plan with when MODEL_DIR holds only a Hugging Face "
                    "config.json (q4f16_1, q0f16, q0f32, ...)",
    "check": "CI gate: exit 0 when a committed plan is valid, current and near-optimal",
    "plan_file": "the plan JSON (or the directory holding numa-plan.json)",
    "tolerance": "accept the plan if a fresh solve is at most this much faster (fraction)",
    "check_model": "the model directory the plan must match",
})

HELP.update({
    "diff": "compare two plans and say what moved (workers, tensor homes, collectives, "
            "prediction), like a review comment",
    "diff_a": "the plan before (JSON, or the directory holding numa-plan.json)",
    "diff_b": "the plan after (JSON, or the directory holding numa-plan.json)",
    "exit_code": "exit 1 when the plans differ (like git diff --exit-code); default: exit 0",
    "diff_json": "print the differences as JSON (section, subject, text) instead of text",
    "show": "print a plan as tables (nodes, workers, collectives, prediction, non-local "
            "tensors), and optionally draw it",
    "png": "also draw the machine and the plan to this PNG file (needs matplotlib: "
           "pip install 'numaplan[plot]')",
    "show_json": "print the plan's canonical JSON (validated, current schema) instead of tables",
})

HELP.update({
    "target": "TVM target of the library: llvm (this machine's CPU) or a JSON dict such as "
              "'{\"kind\": \"llvm\", \"mcpu\": \"skylake-avx512\"}'",
    "no_build": "write the plan only, do not build the library",
})

HELP.update({
    "convert": "convert a GGUF model (llama.cpp's format; llama and qwen2 architectures) into "
               "an MLC model directory: weights, mlc-chat-config.json, tokenizer",
    "gguf": "the .gguf file",
    "convert_out": "the MLC model directory to create (must not exist or be empty)",
    "convert_quantization": "MLC quantization of the weights (default q4f16_1)",
    "run": "generate tokens with pinned, NUMA-local tensor-parallel workers",
    "run_model": "the MLC model directory (weights)",
    "lib": "the library built by `numaplan compile` (the plan is read from it)",
    "run_plan": "the plan file; refused if it differs from the plan inside the library",
    "prompt": "the prompt as text (the model directory's tokenizer.json encodes it); the "
              "answer is streamed as it is generated",
    "chat_template": "wrap --prompt in the model's conversation template (mlc-chat-config.json) "
                     "and stop at its stop strings",
    "system": "system message for --chat (default: the template's)",
    "temperature": "sampling temperature (0 = greedy, the default)",
    "top_p": "nucleus sampling: keep the most likely tokens up to this probability (default 1)",
    "top_k": "keep only the k most likely tokens (0 = off)",
    "seed": "random seed of the sampler (reproducible sampling)",
    "stop": "stop before this string (repeatable)",
    "ignore_eos": "do not stop at the model's end-of-sequence token (benchmarks)",
    "chat": "interactive multi-turn chat with pinned, NUMA-local workers; the history stays in "
            "the KV cache (empty line or EOF ends it)",
    "prompt_ids": "prompt token ids, comma-separated (e.g. 1,2,3)",
    "max_new_tokens": "tokens to generate at most (default 16 for --prompt-ids, 256 for text)",
    "stats": "print measured placement (with every fallback taken), load and collective "
             "figures to stderr, and the plan's predicted time per token next to the measured "
             "one",
    "force": "run a stale plan (model or machine fingerprints differ)",
    "strict_placement": "refuse to run when any weight byte or collective segment page is off "
                        "its planned node, or could not be audited",
    "allow_fallback": "continue when the kernel refuses a placement or an audit (each fallback "
                      "is recorded and shown by --stats)",
    "no_share_replicated": "give every worker its own copy of the replicated tensors (default: "
                           "the workers reading from one node share one copy in /dev/shm)",
    "max_seq_len": "tokens of KV cache the workers create (default: what the plan reserved)",
})

HELP.update({
    "oversubscribe": "allow more workers on a node than it has physical cores (they share "
                     "cores): for correctness runs on small machines, never for speed",
})

HELP.update({
    "bench": "run the benchmark suite (all-reduce, planner, load, decode); the options are "
             "those of `python -m numaplan.bench`",
})

HELP.update({
    "serve": "an OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, "
             "/v1/models, /health, /metrics) with continuous batching on pinned workers; "
             "plans and compiles on first start when no --lib is given",
    "serve_lib": "a library built by `numaplan compile` (default: plan and compile one, cached)",
    "host": "address to listen on (default 127.0.0.1: loopback only)",
    "port": "TCP port (default 8000)",
    "mode": "what the batch and the KV cache are sized for, as in MLC: interactive (1 "
            "sequence), local (4 sharing one context window; default), server (as many full "
            "context windows as memory allows)",
    "numa_tensor_parallel": "enforce the plan: pinned workers, node-bound memory (off: plain "
                            "tensor parallelism, the OS places them)",
    "max_queue": "requests that may wait for a place in the batch; more get 429 (default: 4x "
                 "the batch)",
    "serve_max_seq_len": "KV-cache tokens over all sequences (default: as --mode sizes it)",
    "cache_dir": "where compiled libraries are cached (default $NUMAPLAN_CACHE_DIR or "
                 "~/.cache/numaplan/libs)",
})
