"""``numaplan topology``: show what the machine is."""

from __future__ import annotations

import argparse

from numaplan.cli._common import add_topology_args, emit, topology_from_args
from numaplan.cli.help import HELP
from numaplan.plan.formatting import human_bytes
from numaplan.topology import Topology, format_cpulist


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("topology", help=HELP["topology"], description=HELP["topology"])
    add_topology_args(p)
    p.add_argument("--json", action="store_true", help=HELP["json"])
    p.add_argument("-o", "--output", metavar="FILE", help=HELP["output"])
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    topo = topology_from_args(args)
    emit(topo.to_json() if args.json else render_topology(topo), args.output)
    return 0


def render_topology(t: Topology) -> str:
    """A table a person reads: one row per node, then the distance matrix and the cpuset."""
    lines = [f"source: {t.source}" + (f"   CPU: {t.cpu_model}" if t.cpu_model else ""),
             f"{len(t.nodes)} NUMA node(s), {sum(len(n.cpus) for n in t.nodes)} CPUs", ""]
    header = f"{'node':>4} {'socket':>6} {'cpus':<24} {'usable':>6} {'cores':>5} " \
             f"{'memory':>10} {'free':>10}  kind"
    lines.append(header)
    for n in t.nodes:
        usable = t.usable_cpus(n.node_id)
        cores = len(t.physical_cores(n.node_id)) if usable else 0
        kind = ("cpu+mem" if n.has_cpus and n.has_memory else
                "cpu only (memoryless)" if n.has_cpus else
                "memory only (no CPUs)" if n.has_memory else "empty")
        if n.node_id not in t.allowed_mem_node_ids and n.has_memory:
            kind += ", memory not allowed"
        cpus = format_cpulist(n.cpus) or "-"
        if len(cpus) > 24:
            cpus = cpus[:21] + "..."
        lines.append(f"{n.node_id:>4} {t.socket_of(n.node_id):>6} {cpus:<24} "
                     f"{len(usable):>6} {cores:>5} {human_bytes(n.mem_total_bytes):>10} "
                     f"{human_bytes(n.mem_free_bytes):>10}  {kind}")
    lines.append("")
    lines.append("distances (SLIT" + (", assumed: the source has none)" if t.distances_assumed
                                      else ")") + ":")
    w = max(4, max(len(str(i)) for i in t.node_ids) + 2)
    lines.append(" " * 6 + "".join(f"{i:>{w}}" for i in t.node_ids))
    for i, row in zip(t.node_ids, t.distances, strict=True):
        lines.append(f"{i:>4}: " + "".join(f"{d:>{w}}" for d in row))
    lines.append("")
    lines.append(f"process may use CPUs {format_cpulist(t.allowed_cpus) or '-'} and memory of "
                 f"nodes {format_cpulist(t.allowed_mem_node_ids) or '-'}")
    return "\n".join(lines) + "\n"
