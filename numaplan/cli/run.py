"""``numaplan run``: generate with pinned, NUMA-local tensor-parallel workers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from numaplan.cli.help import HELP
from numaplan.errors import UsageError
from numaplan.plan.formatting import human_bytes


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help=HELP["run"], description=HELP["run"])
    p.add_argument("model_dir", metavar="MODEL_DIR", help=HELP["run_model"])
    p.add_argument("--lib", required=True, metavar="SO", help=HELP["lib"])
    p.add_argument("--plan", metavar="JSON", help=HELP["run_plan"])
    p.add_argument("--prompt-ids", required=True, metavar="IDS", help=HELP["prompt_ids"])
    p.add_argument("--max-new-tokens", type=int, default=16, metavar="N",
                   help=HELP["max_new_tokens"])
    p.add_argument("--stats", action="store_true", help=HELP["stats"])
    p.add_argument("--json", action="store_true", help=HELP["json"])
    p.add_argument("--force", action="store_true", help=HELP["force"])
    p.add_argument("--strict-placement", action="store_true", help=HELP["strict_placement"])
    p.add_argument("--allow-fallback", action="store_true", help=HELP["allow_fallback"])
    p.add_argument("--max-seq-len", type=int, metavar="N", help=HELP["max_seq_len"])
    p.add_argument("--no-share-replicated", action="store_true",
                   help=HELP["no_share_replicated"])
    p.set_defaults(run=run)


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
    from numaplan.runtime.session import NumaRuntime, RunOptions

    ids = _ids(args.prompt_ids)
    opts = RunOptions(force=args.force, strict_placement=args.strict_placement,
                      allow_fallback=args.allow_fallback, max_seq_len=args.max_seq_len,
                      share_replicated=not args.no_share_replicated)
    with NumaRuntime(args.model_dir, args.lib, plan_path=args.plan, options=opts) as rt:
        for w in rt.warnings:
            print(f"numaplan run: warning: {w} (--force)", file=sys.stderr)
        res = rt.generate(ids, args.max_new_tokens)
        stats = rt.stats() if args.stats or args.json else None
    if args.json:
        doc = {"tokens": list(res.tokens), "result": res.model_dump(exclude={"logits"}),
               "stats": stats.model_dump() if stats else None}
        print(json.dumps(doc, indent=2))
        return 0
    print(" ".join(str(t) for t in res.tokens), flush=True)
    if stats is not None:
        print(render_stats(stats, Path(args.lib).name), file=sys.stderr)
    return 0


def render_stats(s, name: str) -> str:
    """The --stats block: measured placement, load and collective figures."""
    lines = [f"--- stats ({name}) ---"]
    for w in s.workers:
        ok = "yes" if w.threads_on_planned_cpus else "NO"
        local = (100.0 * w.weight_bytes_on_planned_node / w.weight_bytes) if w.weight_bytes \
            else 0.0
        lines.append(f"worker {w.worker_id} (pid {w.pid}): node {w.node_id}, CPUs {w.cpus_planned}"
                     f" (threads {', '.join(w.thread_cpus)}: on plan {ok}), memory "
                     f"{w.mempolicy}; weights {human_bytes(w.weight_bytes)}, {local:.2f}% on "
                     f"planned node; loaded {human_bytes(w.weight_bytes_loaded)} in "
                     f"{w.load_s:.3f} s" + (f", mapped {human_bytes(w.weight_bytes_shared_mapped)}"
                                             " of shared copies"
                                             if w.weight_bytes_shared_mapped else ""))
    lines.append(f"weight bytes on their planned node: {s.weight_local_percentage:.2f}%")
    lines.append(f"collectives: {s.collective_calls} calls, {human_bytes(s.collective_bytes)} "
                 f"read, {s.inter_node_percentage:.1f}% across nodes")
    if s.decode_s_per_step is not None:
        coll = "" if s.collective_s_per_step is None else \
            f", of which collectives {1e3 * s.collective_s_per_step:.3f} ms"
        lines.append(f"decode: {1e3 * s.decode_s_per_step:.3f} ms per token{coll} "
                     f"({s.tokens_per_s:.1f} tokens/s)")
    return "\n".join(lines)
