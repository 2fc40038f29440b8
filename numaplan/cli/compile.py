"""``numaplan compile``: plan a model's placement into OUT/numa-plan.json and build its library
(when the model directory names its Relax module)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from numaplan._io import write_atomic
from numaplan.cli._common import add_topology_args, topology_from_args
from numaplan.cli._planning import add_cost_args, add_plan_args, load_model, settings_from_args
from numaplan.cli.help import HELP
from numaplan.errors import UsageError
from numaplan.model.quantization import get_quantization
from numaplan.model.relax_source import relax_source_for
from numaplan.plan import Plan, make_plan, resolve_settings, write_plan
from numaplan.plan.formatting import format_tps, human_bytes, roofline_text


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help=HELP["compile"], description=HELP["compile"])
    p.add_argument("model_dir", metavar="MODEL_DIR", help=HELP["model_dir"])
    p.add_argument("-o", "--output", metavar="OUT", help=HELP["out_dir"])
    add_topology_args(p)
    add_cost_args(p)
    add_plan_args(p)
    g = p.add_argument_group("library")
    g.add_argument("--target", default="llvm", help=HELP["target"])
    g.add_argument("--no-build", action="store_true", help=HELP["no_build"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    workload = load_model(args.model_dir, args.quantization)
    topo = topology_from_args(args)
    opts, cost = resolve_settings(settings_from_args(args), workload, topo)
    name = Path(args.model_dir).resolve().name
    planned = make_plan(workload, topo, cost, opts, model_name=name)
    plan, report = planned.plan, planned.report
    out = Path(args.output or Path("out") / name)
    src, why_not = relax_source_for(args.model_dir)
    if get_quantization(workload.quantization).sizing_only:
        # Sizing-only presets exist to plan and predict; no kernels can build them.
        src, why_not = None, f"{workload.quantization} is a sizing-only preset"
    built = None
    if src is not None and not args.no_build:
        # Build before writing anything: a failed build leaves no half-made output.
        from numaplan.passes.build import build_library, library_name

        target = _parse_target(args.target)
        kind = target["kind"] if isinstance(target, dict) else str(target).split()[0]
        built = build_library(args.model_dir, src, plan, out / library_name(name, kind),
                              target=target)
    path = write_plan(plan, out)
    doc = report.model_dump()
    if built is not None:
        doc["library"] = built.model_dump()
    write_atomic(out / "numa-plan.report.json", json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(render_summary(plan, str(path), report.total_s))
    if built is not None:
        print(f"library: {built.path} ({built.nbytes / 2**20:.2f} MiB, built in "
              f"{built.compile_s:.1f} s for {built.target}, plan embedded, collectives -> "
              f"numaplan.ccl)")
    elif args.no_build:
        print("library: not built (--no-build)")
    elif src is None and why_not.endswith("sizing-only preset"):
        print(f"library: not built: {why_not} (MLC and numaplan have no kernels for it)")
    else:
        print(f"library: not built: {why_not}; to build it with the plan, run `mlc_llm "
              f"compile` with numaplan's passes (numaplan.passes.wrap_mlc_pipeline, see README)")
    return 0


def _parse_target(text: str) -> str | dict:
    """``llvm`` / ``host``, or a JSON dict target (TVM 0.27 refuses CLI target strings)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--target: invalid JSON: {exc.msg}") from None
    return text


def render_summary(plan: Plan, path: str, seconds: float | None = None) -> str:
    """The short table `compile` prints."""
    pr = plan.prediction
    s = plan.solver
    gap = "" if s.gap is None else f", gap {s.gap:.2g}"
    lines = [f"plan: {path}  ({plan.model.name}, W={plan.request.tensor_parallel_shards}, "
             f"solver {s.name}: {s.status}{gap}"
             + (f", {seconds:.2f} s" if seconds is not None else "") + ")", ""]
    lines.append(f"{'node':>4}  {'workers':<12} {'cpus':<20} {'threads':>7} {'homed':>10} "
                 f"{'read/token':>11} {'compute/token':>13}")
    for n in plan.nodes:
        if not n.worker_ids and not n.bytes_homed:
            continue
        threads = sum(w.num_threads for w in plan.workers if w.node_id == n.node_id)
        cpus = ",".join(w.cpus for w in plan.workers if w.node_id == n.node_id) or "-"
        if len(cpus) > 20:
            cpus = cpus[:17] + "..."
        workers = ",".join(map(str, n.worker_ids)) or "-"
        read = "-" if n.predicted_read_s is None else f"{n.predicted_read_s * 1e3:.3f} ms"
        comp = "-" if n.predicted_compute_s is None else f"{n.predicted_compute_s * 1e3:.3f} ms"
        if n.bound == "compute":
            comp += " *"
        lines.append(f"{n.node_id:>4}  {workers:<12} {cpus:<20} {threads:>7} "
                     f"{human_bytes(n.bytes_homed):>10} {read:>11} {comp:>13}")
    label = "predicted (nominal cost figures)" if pr.nominal else "predicted"
    lines.append("")
    lines.append(f"{label}: {format_tps(pr.tokens_per_s)} tokens/s at batch {pr.batch_size} "
                 f"({roofline_text(pr)} + collectives {pr.collective_s * 1e3:.3f} ms "
                 f"per token); lower bound {format_tps(pr.lower_bound_tokens_per_s)} tokens/s: "
                 f"plan reaches {100 * pr.fraction_of_bound:.1f}%")
    if pr.baselines:
        lines.append("baselines (same model of the machine): " + ", ".join(
            f"{k} {format_tps(v.tokens_per_s)}" + ("" if v.fits else " (does not fit)")
            for k, v in pr.baselines.items()) + " tokens/s")
    crossing = pr.cross_node_read_bytes_per_token
    lines.append(f"cross-node reads: {human_bytes(crossing)} of "
                 f"{human_bytes(pr.bytes_read_per_token)} per token")
    kv = plan.kv_cache
    given_up = (f"; {kv.context_window_size - kv.max_total_seq_len} tokens of the "
                f"{kv.context_window_size}-token window given up"
                if kv.max_total_seq_len < kv.context_window_size else "")
    lines.append(f"KV cache: {kv.max_total_seq_len} tokens per worker ({kv.limited_by}), "
                 f"{human_bytes(kv.bytes_per_worker)} each{given_up}")
    bases = sorted({n.mem_capacity_basis for n in plan.nodes if n.mem_capacity_bytes})
    lines.append("memory planned against: " + ", ".join(bases))
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
