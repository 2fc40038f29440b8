"""``numaplan check``: the CI gate for a committed plan.

Exit 0 when the plan file is valid, was made for this model index, this machine and this cost
model, fits in memory, uses CPUs the process may use, and is within ``--tolerance`` of a fresh
solve; exit 1 listing every reason otherwise.
"""

from __future__ import annotations

import argparse

from numaplan.cli._common import add_topology_args, topology_from_args
from numaplan.cli._planning import load_model
from numaplan.cli.help import HELP
from numaplan.cost import cost_from_slit, read_cost_json
from numaplan.errors import InfeasiblePlanError, NumaplanError
from numaplan.plan import PlanOptions, build_problem, make_plan, predict, read_plan
from numaplan.plan.planner import solution_from_plan
from numaplan.topology import parse_cpulist


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help=HELP["check"], description=HELP["check"])
    p.add_argument("plan", metavar="PLAN", help=HELP["plan_file"])
    p.add_argument("--model", required=True, metavar="DIR", help=HELP["check_model"])
    p.add_argument("--quantization", metavar="NAME", help=HELP["quantization"])
    p.add_argument("--cost", metavar="JSON", help=HELP["cost"])
    p.add_argument("--tolerance", type=float, default=0.01, metavar="F", help=HELP["tolerance"])
    add_topology_args(p)
    p.set_defaults(run=run)


def check_plan(args: argparse.Namespace) -> list[str]:
    """Every reason the plan is not acceptable (empty: it is)."""
    plan = read_plan(args.plan)
    workload = load_model(args.model, args.quantization)
    topo = topology_from_args(args)
    req = plan.request
    reasons: list[str] = []
    if workload.fingerprint != plan.model.fingerprint:
        reasons.append(f"stale: the model index changed (plan was made for "
                       f"{plan.model.fingerprint[:12]}, {args.model} is "
                       f"{workload.fingerprint[:12]})")
    try:
        used = topo.restricted_to(req.numa_nodes) if req.numa_nodes else topo
    except NumaplanError as exc:
        return [*reasons, f"machine: {exc}"]
    if used.fingerprint() != plan.topology.fingerprint:
        reasons.append(f"stale: the topology differs from the one planned for "
                       f"({plan.topology.source})")
    if plan.cost_model.method == "slit":
        cost = cost_from_slit(used, penalty=req.numa_inter_node_penalty)
    elif args.cost:
        cost = read_cost_json(args.cost)
    else:
        return [*reasons, f"the plan was priced with a {plan.cost_model.method} cost model: "
                          "pass it with --cost"]
    if cost.fingerprint() != plan.cost_model.fingerprint:
        reasons.append("stale: the cost model differs from the one the plan was priced with")
    allowed = set(used.allowed_cpus)
    for w in plan.workers:
        missing = set(parse_cpulist(w.cpus)) - allowed
        if missing:
            reasons.append(f"worker {w.worker_id} needs CPUs {sorted(missing)[:8]} that this "
                           f"process may not use")
    opts = PlanOptions(
        tensor_parallel_shards=req.tensor_parallel_shards, numa_nodes=req.numa_nodes,
        numa_inter_node_penalty=req.numa_inter_node_penalty,
        numa_prefer_local_memory=req.numa_prefer_local_memory,
        node_affinity=req.node_affinity, batch_size=req.batch_size,
        context_tokens=req.context_tokens, mem_headroom=req.mem_headroom,
        solver=req.solver, oversubscribe=req.oversubscribe,
        # A fresh solve reserves the KV cache this plan reserved, so the two compare alike.
        max_total_seq_len=plan.kv_cache.max_total_seq_len,
        plan_against_free=req.plan_against_free)
    try:
        problem = build_problem(
            workload, used, cost, num_workers=req.tensor_parallel_shards,
            batch_size=req.batch_size, context_tokens=req.context_tokens,
            prefer_local_memory=req.numa_prefer_local_memory, node_affinity=req.node_affinity,
            mem_headroom=req.mem_headroom, oversubscribe=req.oversubscribe,
            kv_capacity_tokens=plan.kv_cache.max_total_seq_len,
            plan_against_free=req.plan_against_free)
        mine = predict(problem, solution_from_plan(plan, problem))
    except InfeasiblePlanError as exc:
        return [*reasons, f"does not apply here: {exc}"]
    if not mine.fits:
        for j, b in sorted(mine.over_capacity.items()):
            reasons.append(f"does not fit: node {j} lacks {b} bytes ({b / 2**30:.2f} GiB)")
    try:
        fresh = make_plan(workload, topo, cost, opts, model_name=plan.model.name).plan
    except InfeasiblePlanError as exc:
        return [*reasons, f"a fresh solve finds no placement: {exc}"]
    if fresh.prediction.token_s * (1 + args.tolerance) < mine.token_s:
        reasons.append(f"not optimal: a fresh solve predicts {fresh.prediction.tokens_per_s:.3g} "
                       f"tokens/s against this plan's {1 / mine.token_s:.3g} (tolerance "
                       f"{args.tolerance:.0%})")
    return reasons


def run(args: argparse.Namespace) -> int:
    reasons = check_plan(args)
    if reasons:
        for r in reasons:
            print(f"numaplan check: {args.plan}: {r}")
        return 1
    print(f"numaplan check: {args.plan}: OK (valid, current, fits, within "
          f"{args.tolerance:.0%} of a fresh solve)")
    return 0
