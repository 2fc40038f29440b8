"""Run ``numaplan probe`` on this machine and print what it measured and how long it took.

Usage: ``python scripts/bench_probe.py [--skip-quick] [--json FILE]``

Runs a quick probe (for its wall time) and then the full probe ``probe(read_sysfs("/"))``,
and prints for each: the read-bandwidth and latency matrices, the plain
``np.copyto`` figures per CPU node next to the probe's local read bandwidth, the page audit and
the wall time.
"""

from __future__ import annotations

import argparse
import sys
import time

from numaplan.cost.model import CostModel
from numaplan.cost.probe import ProbeSettings, print_progress, probe
from numaplan.topology import read_sysfs


def report(title: str, cost: CostModel, seconds: float) -> str:
    """Matrices, numpy copy comparison, audit and timing as plain text."""
    ids = cost.node_ids
    p = cost.params
    out = [f"== {title}: {seconds:.1f} s wall ==",
           f"buffers: bandwidth {int(p['buffer_bytes']) >> 20} MiB, latency "
           f"{int(p['latency_buffer_bytes']) >> 20} MiB; threads/node {p['threads_per_node']}; "
           f"{p['bw_statistic']}; latency {p['lat_statistic']} x {p['latency_loads']} loads; "
           f"kernel {p['kernel']}; backend {p['backend']}; THP {p['thp']} "
           f"({p['thp_mode']}, fraction {p.get('thp_fraction', '-')}); numa_balancing "
           f"{p['numa_balancing']}; LLC {p['llc_bytes']}; load average at start "
           f"{p.get('loadavg_1min', '-')}, hypervisor steal {p.get('cpu_steal_pct', '-')}%"]
    for name, m, fmt in (("read GB/s", cost.read_bw_gbps, "{:10.1f}"),
                         ("latency ns", cost.lat_ns, "{:10.0f}")):
        out.append(f"{name:>14}" + "".join(f"{'mem ' + str(j):>10}" for j in ids))
        for i, row in zip(ids, m, strict=True):
            if any(v is not None for v in row):
                out.append(f"{'cpus ' + str(i):>14}" + "".join(
                    f"{'-':>10}" if v is None else fmt.format(v) for v in row))
    out.append("numpy copy (np.copyto, same threads, node-local buffers):")
    for i in ids:
        key = f"numpy_copy_gbps_node{i}"
        if key in p:
            local = cost.bw(i, i) if i in ids else None
            out.append(f"  node {i}: copy {p[key]:.1f} GB/s (read+write, STREAM counting), "
                       f"read-only equivalent {p[f'numpy_copy_read_gbps_node{i}']:.1f} GB/s; "
                       f"probe read {'-' if local is None else f'{local:.1f}'} GB/s, "
                       f"median {p.get(f'bw_median_gbps_n{i}_m{i}', '-')} GB/s")
    for a in cost.audit:
        out.append(f"  audit {a.reader_node_id}->{a.mem_node_id}: {a.pages_on_target}/"
                   f"{a.pages_checked} pages on node {a.mem_node_id}")
    for key in ("warning", "size_warning", "load_warning"):
        if key in p:
            out.append(f"  WARNING: {p[key]}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-quick", action="store_true", help="run only the full probe")
    ap.add_argument("--json", metavar="FILE", help="also write the full probe's cost model")
    args = ap.parse_args(argv)
    topo = read_sysfs("/")
    runs = [] if args.skip_quick else [("quick probe", True)]
    runs.append(("full probe", False))
    for title, quick in runs:
        t0 = time.perf_counter()
        cost = probe(topo, ProbeSettings(quick=quick), progress=print_progress)
        seconds = time.perf_counter() - t0
        print(report(title, cost, seconds), flush=True)
        if not quick and args.json:
            with open(args.json, "w") as f:
                f.write(cost.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
