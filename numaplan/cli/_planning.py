"""Options shared by the commands that plan (compile, check, ...) and how they load inputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from numaplan.cli.help import HELP
from numaplan.cost import DEFAULT_PENALTY, check_penalty
from numaplan.errors import ModelFormatError, UsageError
from numaplan.model import Workload, load_workload
from numaplan.plan.planner import DEFAULT_TIME_LIMIT_S
from numaplan.plan.settings import PlanSettings
from numaplan.topology import parse_cpulist


def add_cost_args(p: argparse.ArgumentParser) -> None:
    """Where the cost model comes from."""
    g = p.add_argument_group("cost model (default: SLIT distances + penalty)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--cost", metavar="JSON", help=HELP["cost"])
    x.add_argument("--mlc-output", metavar="FILE", help=HELP["mlc_output"])
    x.add_argument("--memory-spec", metavar="SPEC", help=HELP["memory_spec"])
    g.add_argument("--numa-inter-node-penalty", type=float, default=DEFAULT_PENALTY,
                   metavar="P", help=HELP["penalty"])


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """The knobs of a plan (MLC proposal names)."""
    g = p.add_argument_group("plan")
    g.add_argument("--tensor-parallel-shards", "--tp", type=int, metavar="W", help=HELP["tp"])
    g.add_argument("--numa-nodes", metavar="LIST", help=HELP["numa_nodes"])
    g.add_argument("--no-prefer-local-memory", action="store_true", help=HELP["no_prefer_local"])
    g.add_argument("--node-affinity", metavar="W:N,...", help=HELP["node_affinity"])
    g.add_argument("--solver", default="auto", help=HELP["solver"])
    g.add_argument("--mip-backend", default="auto", help=HELP["mip_backend"])
    g.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, metavar="S",
                   help=HELP["time_limit"])
    g.add_argument("--batch-size", type=int, default=1, metavar="B", help=HELP["batch_size"])
    g.add_argument("--context-tokens", type=int, metavar="N", help=HELP["context_tokens"])
    g.add_argument("--quantization", metavar="NAME", help=HELP["quantization"])
    g.add_argument("--oversubscribe", action="store_true", help=HELP["oversubscribe"])
    g.add_argument("--max-total-seq-len", type=int, metavar="N", help=HELP["max_total_seq_len"])
    g.add_argument("--plan-against-free", action="store_true", help=HELP["plan_against_free"])


def settings_from_args(args: argparse.Namespace) -> PlanSettings:
    """The plan settings the cost and plan options name."""
    # Checked here so that an out-of-range value is the library's one-line error, not a
    # pydantic report.
    check_penalty(args.numa_inter_node_penalty)
    if args.max_total_seq_len is not None and args.max_total_seq_len < 1:
        raise UsageError(f"--max-total-seq-len must be >= 1 token, got {args.max_total_seq_len}")
    return PlanSettings(
        tensor_parallel_shards=args.tensor_parallel_shards,
        numa_nodes=parse_nodes(args.numa_nodes),
        numa_inter_node_penalty=args.numa_inter_node_penalty,
        numa_prefer_local_memory=not args.no_prefer_local_memory,
        node_affinity=parse_affinity(args.node_affinity),
        cost_model=args.cost, mlc_output=args.mlc_output, memory_spec=args.memory_spec,
        batch_size=args.batch_size, context_tokens=args.context_tokens,
        solver=args.solver, mip_backend=args.mip_backend, time_limit_s=args.time_limit,
        oversubscribe=args.oversubscribe, max_total_seq_len=args.max_total_seq_len,
        plan_against_free=args.plan_against_free)


def parse_affinity(text: str | None) -> dict[int, int]:
    """``"0:0,1:0,2:1"`` -> ``{0: 0, 1: 0, 2: 1}``."""
    if not text:
        return {}
    out: dict[int, int] = {}
    for part in text.split(","):
        w, sep, n = part.strip().partition(":")
        if not sep or not w.strip().isdigit() or not n.strip().isdigit():
            raise UsageError(f"--node-affinity: expected WORKER:NODE pairs, got {part!r}")
        if int(w) in out:
            raise UsageError(f"--node-affinity names worker {w} twice")
        out[int(w)] = int(n)
    return out


def parse_nodes(text: str | None) -> tuple[int, ...] | None:
    """``"0,1"`` or ``"0-3"`` -> node ids."""
    if not text:
        return None
    try:
        return parse_cpulist(text)
    except ValueError as exc:
        raise UsageError(f"--numa-nodes: {exc}") from None


def load_model(path: str, quantization: str | None) -> Workload:
    """The workload of a model directory."""
    if not Path(path).exists():
        raise ModelFormatError("model directory not found", path=path)
    return load_workload(path, quantization=quantization)

