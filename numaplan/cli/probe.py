"""``numaplan probe``: measure what crossing a node costs on this machine, how fast the decode
kernels compute on each CPU node, and what one all-reduce call costs."""

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
    p.add_argument("--no-compute", action="store_true", help=HELP["no_compute"])
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
    if not args.no_compute:
        cost = add_compute_figures(cost, topo, quick=args.quick,
                                   threads_per_node=args.threads_per_node)
    if args.output:
        emit(cost.to_json(), args.output)
    print(cost.to_json() if args.json else render_cost(cost, topo), end="")
    return 0


def add_compute_figures(cost: CostModel, topo: Topology, *, quick: bool,
                        threads_per_node: int | None = None) -> CostModel:
    """``cost`` plus the decode kernels' weight bytes per second per core on every CPU node it
    measured (:mod:`numaplan.nn.throughput`) and the all-reduce's fitted alpha and beta
    (:mod:`numaplan.runtime.ccl.fit`, on two cores of the first node that has two).

    The kernels and the collective need tvm, which the cost layer must not import: the probe
    command brings them in here, only when it runs.
    """
    import sys

    from numaplan.cost import CollectiveFit, NodeCompute, build_cost_model
    from numaplan.cost.probe import reader_cpus

    try:
        from numaplan.nn.throughput import kernel_rates
        from numaplan.runtime.ccl.fit import fit_allreduce
    except ImportError as exc:  # a machine that plans but does not run models
        print(f"compute: not measured ({exc}); the cost model prices memory reads only",
              file=sys.stderr)
        return cost

    compute, kernels = [], set()
    seconds = 0.05 if quick else 0.5
    for n in topo.cpu_node_ids():
        cpus = reader_cpus(topo, n, threads_per_node)
        if not cpus or n not in cost.node_ids:
            continue
        print(f"compute: decode kernels on node {n} ({len(cpus)} cores)...", file=sys.stderr)
        rates = kernel_rates(cpus, seconds=seconds)
        kernels.update(name for _, _, name in rates.values())
        compute.append(NodeCompute(node_id=n, cores_measured=len(cpus),
                                   weight_bytes_per_s_per_core={q: round(r, -3) for q, (r, _, _)
                                                                in rates.items()},
                                   call_s={q: float(f"{c:.4g}") for q, (_, c, _)
                                           in rates.items()}))
    pair = next((c[:2] for n in topo.cpu_node_ids()
                 if len(c := reader_cpus(topo, n, threads_per_node)) >= 2), None)
    collective = None
    params = dict(cost.params)
    params["compute_kernels"] = ",".join(sorted(kernels))
    if pair is not None:
        print(f"collective: all-reduce fit on CPUs {pair[0]},{pair[1]}...", file=sys.stderr)
        alpha, beta, _ = fit_allreduce(pair, iters=100 if quick else 1000)
        collective = CollectiveFit(alpha_s=float(f"{alpha:.4g}"),
                                   beta_s_per_byte=float(f"{beta:.4g}"), ranks=2)
    else:
        params["collective_fit"] = "skipped: no node has two usable cores"
    return build_cost_model(None, **{**cost.model_dump(exclude={"compute", "collective",
                                                                 "params"}),
                                     "params": params, "compute": tuple(compute),
                                     "collective": collective})


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
    if c.compute:
        out.append("decode kernels, weight GB/s per core (in cache: the compute ceiling):")
        for nc in c.compute:
            out.append(f"  node {nc.node_id} ({nc.cores_measured} cores): " + ", ".join(
                f"{q} {v / 1e9:.2f}" + (f" (+{nc.call_s[q] * 1e6:.1f} us per call)"
                                        if q in nc.call_s else "")
                for q, v in sorted(nc.weight_bytes_per_s_per_core.items())))
    if c.collective:
        out.append(f"all-reduce per call: {c.collective.alpha_s * 1e6:.2f} us + "
                   f"{c.collective.beta_s_per_byte * 1e12:.1f} ps/byte "
                   f"({c.collective.ranks} ranks)")
    extra = {k: v for k, v in sorted(c.params.items())}
    if extra:
        out.append("details: " + ", ".join(f"{k}={v}" for k, v in extra.items()))
    return "\n".join(out) + "\n"
