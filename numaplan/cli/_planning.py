"""Options shared by the commands that plan (compile, check, ...) and how they load inputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from numaplan.cli.help import HELP
from numaplan.cost import CostModel, cost_from_slit, read_cost_json, read_mlc_files
from numaplan.errors import ModelFormatError, UsageError
from numaplan.model import Workload, load_workload, valid_tp_degrees
from numaplan.topology import Topology, parse_cpulist


def add_cost_args(p: argparse.ArgumentParser) -> None:
    """Where the cost model comes from."""
    g = p.add_argument_group("cost model (default: SLIT distances + penalty)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--cost", metavar="JSON", help=HELP["cost"])
    x.add_argument("--mlc-output", metavar="FILE", help=HELP["mlc_output"])
    g.add_argument("--numa-inter-node-penalty", type=float, default=0.3, metavar="P",
                   help=HELP["penalty"])


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """The knobs of a plan (MLC proposal names)."""
    g = p.add_argument_group("plan")
    g.add_argument("--tensor-parallel-shards", "--tp", type=int, metavar="W", help=HELP["tp"])
    g.add_argument("--numa-nodes", metavar="LIST", help=HELP["numa_nodes"])
    g.add_argument("--no-prefer-local-memory", action="store_true", help=HELP["no_prefer_local"])
    g.add_argument("--node-affinity", metavar="W:N,...", help=HELP["node_affinity"])
    g.add_argument("--solver", default="auto", help=HELP["solver"])
    g.add_argument("--mip-backend", default="auto", help=HELP["mip_backend"])
    g.add_argument("--time-limit", type=float, default=30.0, metavar="S", help=HELP["time_limit"])
    g.add_argument("--batch-size", type=int, default=1, metavar="B", help=HELP["batch_size"])
    g.add_argument("--context-tokens", type=int, metavar="N", help=HELP["context_tokens"])
    g.add_argument("--quantization", metavar="NAME", help=HELP["quantization"])
    g.add_argument("--oversubscribe", action="store_true", help=HELP["oversubscribe"])


def load_cost(args: argparse.Namespace, topo: Topology) -> CostModel:
    """The cost model the options name, checked against the topology."""
    if args.cost:
        cost = read_cost_json(args.cost)
        cost.check_covers(topo, source=args.cost)
        return cost
    if args.mlc_output:
        return read_mlc_files(args.mlc_output, None, topo)
    return cost_from_slit(topo, penalty=args.numa_inter_node_penalty)


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


def default_tp(workload: Workload, topo: Topology) -> int:
    """The config's degree if > 1, else the largest valid W <= usable CPU nodes."""
    if workload.tensor_parallel_shards > 1:
        return workload.tensor_parallel_shards
    n = len(topo.cpu_node_ids())
    valid = [w for w in valid_tp_degrees(workload) if w <= n]
    return max(valid or [1])
