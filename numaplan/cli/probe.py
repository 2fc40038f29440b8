"""``numaplan probe``: measure what crossing a node costs on this machine."""

from __future__ import annotations

import argparse

from numaplan.cli._common import add_topology_args, emit, topology_from_args
from numaplan.cli.help import HELP
from numaplan.cost import CostModel
from numaplan.topology import Topology


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help=HELP["probe"], description=HELP["probe"])
    p.add_argument("--quick", action="store_true", help=HELP["quick"])
    p.add_argument("-o", "--output", metavar="FILE", help=HELP["probe_output"])
    p.add_argument("--buffer-mib", type=int, metavar="MIB", help=HELP["buffer_mib"])
    p.add_argument("--threads-per-node", type=int, metavar="N", help=HELP["threads_per_node"])
    p.add_argument("--json", action="store_true", help=HELP["json"])
    add_topology_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from numaplan.cost.probe import ProbeSettings, print_progress, probe

    topo = topology_from_args(args)
    settings = ProbeSettings(
        quick=args.quick, threads_per_node=args.threads_per_node,
        buffer_bytes=None if args.buffer_mib is None else args.buffer_mib << 20)
    cost = probe(topo, settings, progress=print_progress)
    if args.output:
        emit(cost.to_json(), args.output)
    print(cost.to_json() if args.json else render_cost(cost, topo), end="")
    return 0


def render_cost(c: CostModel, t: Topology) -> str:
    """Bandwidth and latency matrices plus the placement audit, as a reader wants them."""
    ids = c.node_ids
    out = [f"method: {c.method}"]

    def matrix(title: str, m: tuple, fmt: str) -> None:
        out.append(title)
        out.append("reader\\memory" + "".join(f"{i:>10}" for i in ids))
        for r, row in zip(ids, m, strict=True):
            if all(v is None for v in row):
                continue
            out.append(f"{r:>13}" + "".join(f"{'-':>10}" if v is None else f"{v:>10{fmt}}"
                                            for v in row))

    matrix("read bandwidth (GB/s):", c.read_bw_gbps, ".1f")
    matrix("latency (ns):", c.lat_ns, ".0f")
    if c.audit:
        out.append("placement audit (move_pages):")
        for a in c.audit:
            flag = "" if a.pages_on_target == a.pages_checked else "   <-- NOT WHERE ASKED"
            out.append(f"  CPUs of node {a.reader_node_id} -> memory of node {a.mem_node_id}: "
                       f"{a.pages_on_target}/{a.pages_checked} pages on node {a.mem_node_id} "
                       f"({100 * a.on_target_fraction:.1f}%), nodes seen "
                       f"{list(a.nodes_seen)}{flag}")
    extra = {k: v for k, v in sorted(c.params.items())}
    if extra:
        out.append("details: " + ", ".join(f"{k}={v}" for k, v in extra.items()))
    return "\n".join(out) + "\n"
