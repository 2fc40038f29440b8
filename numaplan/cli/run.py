"""``numaplan run``: generate with pinned, NUMA-local tensor-parallel workers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from numaplan.cli.help import HELP
from numaplan.errors import UsageError
from numaplan.plan.formatting import human_bytes


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help=HELP["run"], description=HELP["run"])
    add_session_args(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", metavar="TEXT", help=HELP["prompt"])
    src.add_argument("--prompt-ids", metavar="IDS", help=HELP["prompt_ids"])
    p.add_argument("--chat", action="store_true", help=HELP["chat_template"])
    p.add_argument("--system", metavar="TEXT", help=HELP["system"])
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help=HELP["max_new_tokens"])
    add_sampling_args(p)
    p.add_argument("--stats", action="store_true", help=HELP["stats"])
    p.add_argument("--json", action="store_true", help=HELP["json"])
    p.set_defaults(run=run)


def add_session_args(p: argparse.ArgumentParser) -> None:
    """The model, its library and how the session places it (shared with ``numaplan chat``)."""
    p.add_argument("model_dir", metavar="MODEL_DIR", help=HELP["run_model"])
    p.add_argument("--lib", required=True, metavar="SO", help=HELP["lib"])
    p.add_argument("--plan", metavar="JSON", help=HELP["run_plan"])
    p.add_argument("--force", action="store_true", help=HELP["force"])
    p.add_argument("--strict-placement", action="store_true", help=HELP["strict_placement"])
    p.add_argument("--allow-fallback", action="store_true", help=HELP["allow_fallback"])
    add_runtime_args(p)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Sampling and stopping options (shared with ``numaplan chat``)."""
    g = p.add_argument_group("sampling (greedy unless --temperature > 0)")
    g.add_argument("--temperature", type=float, default=0.0, help=HELP["temperature"])
    g.add_argument("--top-p", type=float, default=1.0, help=HELP["top_p"])
    g.add_argument("--top-k", type=int, default=0, help=HELP["top_k"])
    g.add_argument("--seed", type=int, default=None, help=HELP["seed"])
    g.add_argument("--stop", action="append", default=[], metavar="STR", help=HELP["stop"])
    g.add_argument("--ignore-eos", action="store_true", help=HELP["ignore_eos"])


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """Placement and memory options of a session (shared with ``numaplan chat``)."""
    p.add_argument("--max-seq-len", type=int, metavar="N", help=HELP["max_seq_len"])
    p.add_argument("--no-share-replicated", action="store_true",
                   help=HELP["no_share_replicated"])


def sampling_from_args(args: argparse.Namespace, default_max: int) -> Any:
    """:class:`~numaplan.sampling.SamplingParams` of the command line."""
    from numaplan.sampling import SamplingParams

    try:
        return SamplingParams(max_new_tokens=args.max_new_tokens or default_max,
                              temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                              seed=args.seed, stop=tuple(args.stop), ignore_eos=args.ignore_eos)
    except ValueError as exc:
        err = exc.errors()[0] if hasattr(exc, "errors") else None  # pydantic
        what = f"--{err['loc'][0].replace('_', '-')}: {err['msg']}" if err else str(exc)
        raise UsageError(what) from None


def options_from_args(args: argparse.Namespace) -> Any:
    """:class:`~numaplan.runtime.session.RunOptions` of the command line."""
    from numaplan.runtime.session import RunOptions

    return RunOptions(force=args.force, strict_placement=args.strict_placement,
                      allow_fallback=args.allow_fallback, max_seq_len=args.max_seq_len,
                      share_replicated=not args.no_share_replicated)


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise UsageError(f"--prompt-ids: expected comma-separated integers, got {text!r}") \
            from None
    if not ids:
        raise UsageError("--prompt-ids: empty prompt")
    return ids


def run(args: argparse.Namespace) -> int:
    from numaplan.conversation import conversation_from_config
    from numaplan.model.config import MLC_CONFIG_NAME
    from numaplan.runtime.session import NumaRuntime
    from numaplan.tokenizer import Tokenizer

    doc = json.loads((Path(args.model_dir) / MLC_CONFIG_NAME).read_text()) \
        if (Path(args.model_dir) / MLC_CONFIG_NAME).exists() else {}
    conv = conversation_from_config(doc, path=Path(args.model_dir) / MLC_CONFIG_NAME)
    text_mode = args.prompt is not None
    tokenizer = Tokenizer(args.model_dir) if text_mode else None
    if args.chat or args.system:
        if not text_mode:
            raise UsageError("--chat and --system apply a conversation template to --prompt")
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": args.prompt}]
        ids = tokenizer.encode(conv.prompt(messages), add_special_tokens=False)
    elif text_mode:
        ids = tokenizer.encode(args.prompt)
    else:
        ids = _ids(args.prompt_ids)
    params = sampling_from_args(args, default_max=256 if text_mode else 16)
    if args.chat:
        params = params.model_copy(update={
            "stop": tuple(dict.fromkeys((*params.stop, *conv.stop_str))),
            "stop_token_ids": tuple(conv.stop_token_ids)})
    if params.stop and not text_mode:
        raise UsageError("--stop needs a text prompt (--prompt) and the model's tokenizer")
    eos = doc.get("eos_token_id", [])
    eos_ids = list(eos) if isinstance(eos, list) else [eos]
    if not text_mode:
        eos_ids = []  # token-id runs generate exactly --max-new-tokens (as before)
    stream = not args.json

    def on_text(_: int, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def on_token(_: int, token: int) -> None:
        sys.stdout.write(f"{token} ")
        sys.stdout.flush()

    with NumaRuntime(args.model_dir, args.lib, plan_path=args.plan,
                     options=options_from_args(args)) as rt:
        for w in rt.warnings:
            print(f"numaplan run: warning: {w} (--force)", file=sys.stderr)
        outs, gen_stats = rt.run(
            [ids], params, tokenizer=tokenizer, eos_ids=eos_ids,
            on_text=on_text if stream and text_mode else None,
            on_token=on_token if stream and not text_mode else None)
        stats = rt.stats() if args.stats or args.json else None
        check = _prediction_check(rt.plan, stats)
    out = outs[0]
    if args.json:
        doc_out = {"prompt_ids": list(out.prompt_ids), "output_ids": list(out.output_ids),
                   "tokens": list(out.output_ids), "text": out.text,
                   "finish_reason": out.finish_reason,
                   "generation": gen_stats.model_dump(exclude={"step_s"}) |
                   {"decode_tokens_per_s": gen_stats.decode_tokens_per_s},
                   "stats": stats.model_dump() if stats else None,
                   "prediction_check": check.model_dump() if check else None}
        print(json.dumps(doc_out, indent=2))
        return 0
    print(flush=True)
    if stats is not None:
        print(render_stats(stats, Path(args.lib).name), file=sys.stderr)
    if check is not None:
        from numaplan.runtime.compare import render_prediction_check

        print(render_prediction_check(check), file=sys.stderr)
    return 0


def _prediction_check(plan, stats):
    """The plan's predicted time per token next to the run's (``None`` without stats)."""
    if stats is None or plan is None:
        return None
    from numaplan.runtime.compare import compare_prediction

    return compare_prediction(plan, stats)


def render_stats(s, name: str) -> str:
    """The --stats block: measured placement, load and collective figures."""
    lines = [f"--- stats ({name}) ---"]
    for w in s.workers:
        ok = "yes" if w.threads_on_planned_cpus else "NO"
        local = (100.0 * w.weight_bytes_on_planned_node / w.weight_bytes) if w.weight_bytes \
            else 0.0
        loaded = "not loaded" if w.load_s is None else \
            f"loaded {human_bytes(w.weight_bytes_loaded)} in {w.load_s:.3f} s"
        lines.append(f"worker {w.worker_id} (pid {w.pid}): node {w.node_id}, CPUs {w.cpus_planned}"
                     f" (threads {', '.join(w.thread_cpus)}: on plan {ok}), memory "
                     f"{w.mempolicy}; weights {human_bytes(w.weight_bytes)}, {local:.2f}% on "
                     f"planned node; {loaded}" + (
                         f", mapped {human_bytes(w.weight_bytes_shared_mapped)} of shared copies"
                         if w.weight_bytes_shared_mapped else ""))
        if w.kv_cache:
            lines.append(f"  {w.kv_cache}")
        if w.collective_kernel:
            lines.append(f"  collective kernel: {w.collective_kernel}")
        lines += [f"  collective segment: {a}" for a in w.collective_segments]
        lines += [f"  note: {n}" for n in w.notes]
        lines += [f"  downgrade: {d.describe()}" for d in w.downgrades]
    lines.append(f"weight bytes on their planned node: {s.weight_local_percentage:.2f}%")
    if any(w.kv_cache for w in s.workers):
        lines.append(f"KV-cache pages on their planned node: {s.kv_local_percentage:.2f}%")
    lines.append(f"placement downgrades (--allow-fallback): {len(s.downgrades)}")
    lines.append(f"collectives: {s.collective_calls} calls, {human_bytes(s.collective_bytes)} "
                 f"read, {s.inter_node_percentage:.1f}% across nodes")
    if s.decode_s_per_step is not None:
        coll = "" if s.collective_s_per_step is None else \
            f", of which collectives {1e3 * s.collective_s_per_step:.3f} ms"
        lines.append(f"decode: {1e3 * s.decode_s_per_step:.3f} ms per token{coll} "
                     f"({s.tokens_per_s:.1f} tokens/s)")
    return "\n".join(lines)
