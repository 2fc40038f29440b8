#!/usr/bin/env python
"""All-reduce latency of 2 ranks on one machine: numaplan's shared-memory collective vs
a ``multiprocessing.Pipe`` exchange vs ``torch.distributed`` (gloo).

Each rank is a separate process pinned to one CPU (``--cpus``, default the first two allowed
CPUs). For every backend, dtype and size, both ranks run ``--warmup`` calls, then time each of
``--iters`` calls on their own clock; the table shows rank 0's median and 90th percentile per
call. torch is optional: without it the gloo rows are skipped with a message
(``pip install torch`` to include them).

Backends:

- ``numaplan-c/<algorithm>``: numaplan's collective (its C kernel), for every algorithm that
  applies on one node
  (one_shot, two_shot, hierarchical: reduce to the leader, then broadcast);
- ``pipe``: rank 0 sends its array then receives the peer's, rank 1 the other way round, each
  adds (numpy, float32 accumulation for float16);
- ``gloo``: ``torch.distributed.all_reduce`` with the gloo backend over TCP on 127.0.0.1.

Usage::

    .venv/bin/python scripts/bench_allreduce.py [--sizes 4K,16K,64K,256K,1M]
        [--dtypes float16,float32] [--iters N] [--json FILE] [--no-gloo]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "": 1}


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = text[-1] if text and text[-1] in UNITS else ""
    return int(float(text[: len(text) - len(unit)]) * UNITS[unit])


def human(n: int) -> str:
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def iterations(nbytes: int, requested: int | None, cap: int = 5000) -> int:
    """Timed calls per case: ``--iters``, else 5000 for small messages, fewer for big ones
    (``cap`` bounds the slow baselines, whose calls take milliseconds)."""
    if requested:
        return requested
    return int(min(cap, max(300, 64_000_000 // max(nbytes, 1))))


def percentiles(samples: list[int]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_us": statistics.median(s) / 1e3,
            "p90_us": s[min(len(s) - 1, int(0.9 * len(s)))] / 1e3,
            "min_us": s[0] / 1e3, "n": len(s)}


def _input(rank: int, count: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng(rank)
    return rng.standard_normal(count).astype(dtype)


# -- the per-rank backends ------------------------------------------------------------------------
def run_numaplan(rank, cases, args, namespace):
    from numaplan.runtime.ccl import CommSpec, Communicator

    spec = CommSpec(namespace=namespace, node_of_rank=(0, 0), slot_bytes=max(c[1] for c in cases),
                    timeout_s=60)
    results = {}
    with Communicator.create(spec, rank) as comm:
        comm.barrier()
        for dtype, nbytes in cases:
            x = _input(rank, nbytes // np.dtype(dtype).itemsize, dtype)
            out = np.empty_like(x)
            for algo in ("one_shot", "two_shot", "hierarchical"):
                n = iterations(nbytes, args.iters)
                for _ in range(args.warmup):
                    comm.allreduce(x, 0, 0, "tp", algo, out)
                samples = []
                for _ in range(n):
                    t0 = time.perf_counter_ns()
                    comm.allreduce(x, 0, 0, "tp", algo, out)
                    samples.append(time.perf_counter_ns() - t0)
                results[(f"numaplan-c/{algo}", dtype, nbytes)] = samples
                comm.barrier()
        results["stats"] = comm.stats().model_dump()
    return results


def run_pipe(rank, cases, args, conn):
    results = {}
    for dtype, nbytes in cases:
        x = _input(rank, nbytes // np.dtype(dtype).itemsize, dtype)
        peer = np.empty_like(x)
        out = np.empty_like(x)
        acc = np.float32 if x.dtype == np.float16 else x.dtype

        def once():
            if rank == 0:
                conn.send_bytes(x)
                conn.recv_bytes_into(peer)
            else:
                conn.recv_bytes_into(peer)
                conn.send_bytes(x)
            # rank order, float32 accumulation: the same result on both ranks
            a, b = (x, peer) if rank == 0 else (peer, x)
            np.add(a, b, out=out, dtype=acc, casting="unsafe")

        for _ in range(args.warmup):
            once()
        samples = []
        for _ in range(iterations(nbytes, args.iters, cap=1000)):
            t0 = time.perf_counter_ns()
            once()
            samples.append(time.perf_counter_ns() - t0)
        results[("pipe", dtype, nbytes)] = samples
    return results


def run_gloo(rank, cases, args, port):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    results = {}
    try:
        for dtype, nbytes in cases:
            x = torch.from_numpy(_input(rank, nbytes // np.dtype(dtype).itemsize, dtype))
            t = x.clone()
            try:
                dist.all_reduce(t)
            except RuntimeError as exc:
                results[("gloo", dtype, nbytes)] = f"unsupported: {exc}"[:200]
                continue
            for _ in range(args.warmup):
                t.copy_(x)
                dist.all_reduce(t)
            samples = []
            for _ in range(iterations(nbytes, args.iters, cap=1000)):
                t.copy_(x)  # all_reduce is in place: restore the input (not timed)
                t0 = time.perf_counter_ns()
                dist.all_reduce(t)
                samples.append(time.perf_counter_ns() - t0)
            results[("gloo", dtype, nbytes)] = samples
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return results


def rank_main(rank, cpu, cases, args, namespace, conn, port, report):
    from numaplan.osnuma import set_affinity

    set_affinity([cpu])
    out = {}
    try:
        out.update(run_numaplan(rank, cases, args, namespace))
        out.update(run_pipe(rank, cases, args, conn))
        if port:
            out.update(run_gloo(rank, cases, args, port))
    except BaseException as exc:  # report, do not hang the parent
        import traceback

        report.send(("error", rank, traceback.format_exc()))
        raise SystemExit(1) from exc
    stats = out.pop("stats", None)
    report.send(("ok", rank, {"|".join(map(str, k)): v for k, v in out.items()}, stats))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4K,16K,64K,256K,1M")
    ap.add_argument("--dtypes", default="float16,float32")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per case "
                    "(default: 5000 for small messages, fewer for big ones)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--cpus", default=None, help="two CPU ids (default: first two allowed)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--no-gloo", action="store_true")
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    dtypes = args.dtypes.split(",")
    cases = [(d, s) for d in dtypes for s in sizes]
    cpus = ([int(c) for c in args.cpus.split(",")] if args.cpus
            else sorted(os.sched_getaffinity(0))[:2])
    if len(cpus) < 2:
        print("need two CPUs", file=sys.stderr)
        return 2

    port = 0
    gloo_note = ""
    if not args.no_gloo:
        try:
            import torch  # noqa: F401
            import torch.distributed as dist

            if dist.is_available() and dist.is_gloo_available():
                port = free_port()
            else:
                gloo_note = "torch.distributed has no gloo backend in this build"
        except ImportError:
            gloo_note = "torch is not installed (pip install torch): gloo skipped"
    if gloo_note:
        print(gloo_note)

    from numaplan.runtime.ccl import cleanup, new_namespace

    namespace = new_namespace("bench")
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe(duplex=True)
    reports = [ctx.Pipe(duplex=False) for _ in range(2)]
    procs = [ctx.Process(target=rank_main, args=(r, cpus[r], cases, args, namespace,
                                                 (a, b)[r], port, reports[r][1]))
             for r in range(2)]
    t0 = time.time()
    try:
        for p in procs:
            p.start()
        got = [reports[r][0].recv() for r in range(2)]
        for p in procs:
            p.join(60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        cleanup(namespace)
    for g in got:
        if g[0] == "error":
            print(f"rank {g[1]} failed:\n{g[2]}", file=sys.stderr)
            return 1
    rank0 = got[0][2]
    rows = []
    for key, samples in rank0.items():
        backend, dtype, nbytes = key.split("|")
        row = {"backend": backend, "dtype": dtype, "bytes": int(nbytes)}
        if isinstance(samples, str):
            row["note"] = samples
        else:
            row.update(percentiles(samples))
        rows.append(row)
    gloo = {(r["dtype"], r["bytes"]): r.get("median_us") for r in rows if r["backend"] == "gloo"}
    for r in rows:
        g = gloo.get((r["dtype"], r["bytes"]))
        if g and r.get("median_us"):
            r["speedup_vs_gloo"] = g / r["median_us"]

    print(f"\nall-reduce, 2 ranks pinned to CPUs {cpus[0]} and {cpus[1]}, rank 0's time per "
          f"call (us); {time.time() - t0:.0f} s")
    head = f"{'backend':28s} {'dtype':8s} {'size':>8s} {'median':>9s} {'p90':>9s} {'vs gloo':>8s}"
    print(head)
    print("-" * len(head))
    rows.sort(key=lambda r: (r["dtype"], r["bytes"],
                             (0, r["backend"]) if r["backend"].startswith("numaplan") else
                             (1, r["backend"])))
    last = None
    for r in rows:
        if last is not None and (r["dtype"], r["bytes"]) != last:
            print()
        last = (r["dtype"], r["bytes"])
        if "note" in r:
            print(f"{r['backend']:28s} {r['dtype']:8s} {human(r['bytes']):>8s} {r['note']}")
            continue
        sp = f"{r['speedup_vs_gloo']:.1f}x" if "speedup_vs_gloo" in r else ""
        print(f"{r['backend']:28s} {r['dtype']:8s} {human(r['bytes']):>8s} "
              f"{r['median_us']:9.1f} {r['p90_us']:9.1f} {sp:>8s}")
    if args.json:
        doc = {"cpus": cpus[:2], "gloo": gloo_note or "ok", "rows": rows,
               "numaplan_stats_rank0": got[0][3], "load_average": os.getloadavg()}
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
