"""numaplan's benchmark suite: ``python -m numaplan.bench`` (or ``numaplan bench``).

Sub-benchmarks, every figure measured in this run:

- ``allreduce``: latency of numaplan's shared-memory all-reduce for W ranks (processes pinned
  to this machine's CPUs), per message size and algorithm;
- ``planner``: end-to-end planning of a Llama-3-70B-shaped workload (q4f16_1, W=8) on the
  8-node EPYC fixture;
- ``load``: the loader's throughput on the example model against a plain read of its files;
- ``decode``: tokens/s of the example model under numaplan with W workers (and with
  ``--enable-numa-tp`` off, the same workers without placement).

Results (``--output-file``) carry the machine (topology summary, CPU model), the model, the
method and the git commit, so numbers can be compared honestly.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from numaplan._io import atomic_file, write_atomic
from numaplan._version import __version__
from numaplan.ccl_abi import ALGORITHMS
from numaplan.errors import NumaplanError

#: The checkout numaplan runs from, if any: its commit is recorded with the results.
CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = (1024, 8192, 65536)  # elements (float16: 2 KiB, 16 KiB, 128 KiB)


def _progress(msg: str) -> None:
    print(f"[numaplan bench] {msg}", file=sys.stderr, flush=True)


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict[str, Any]:
    """What ran the benchmark."""
    from numaplan.topology import read_sysfs

    t = read_sysfs("/")
    return {"cpu_model": t.cpu_model, "machine": platform.machine(),
            "nodes": [{"node_id": n.node_id, "cpus": len(n.cpus),
                       "mem_total_bytes": n.mem_total_bytes} for n in t.nodes],
            "distances": [list(r) for r in t.distances], "allowed_cpus": len(t.allowed_cpus),
            "kernel": platform.release(), "python": platform.python_version()}


def _rank_main(rank: int, cpu: int, namespace: str, world: int, sizes: Sequence[int],
               dtype: str, algorithms: Sequence[str], iters: int, conn: Any) -> None:
    try:
        from numaplan.osnuma import set_affinity
        from numaplan.runtime.ccl import CommSpec, Communicator

        set_affinity([cpu])
        itemsize = np.dtype(dtype).itemsize
        spec = CommSpec(namespace=namespace, node_of_rank=(0,) * world,
                        slot_bytes=max(sizes) * itemsize, timeout_s=60)
        out: dict[str, list[float]] = {}
        with Communicator.create(spec, rank) as comm:
            comm.barrier()
            for n in sizes:
                x = np.random.default_rng(rank).standard_normal(n).astype(dtype)
                y = np.empty_like(x)
                for algo in algorithms:
                    for _ in range(max(20, iters // 10)):
                        comm.allreduce(x, 0, 0, "tp", algo, y)
                    samples = []
                    for _ in range(iters):
                        t0 = time.perf_counter_ns()
                        comm.allreduce(x, 0, 0, "tp", algo, y)
                        samples.append((time.perf_counter_ns() - t0) / 1e3)
                    out[f"{algo}|{n}"] = samples
                    comm.barrier()
        conn.send(("ok", out))
    except BaseException as exc:  # report instead of hanging the parent
        conn.send(("error", repr(exc)))


def _collect(procs: Sequence[Any], readers: Sequence[Any], timeout_s: float) -> list[Any]:
    """Each rank's report, in rank order; a rank that dies or stays silent is an error naming it
    (a bare ``recv`` would wait for it forever)."""
    from multiprocessing.connection import wait

    deadline = time.monotonic() + timeout_s
    pending = dict(enumerate(readers))
    got: dict[int, Any] = {}
    while pending:
        ready = wait(list(pending.values()), timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise RuntimeError(f"all-reduce ranks {sorted(pending)} did not report within "
                               f"{timeout_s:g} s")
        for rank in [r for r, conn in pending.items() if conn in ready]:
            try:
                got[rank] = pending.pop(rank).recv()
            except EOFError:
                procs[rank].join(5)
                raise RuntimeError(f"all-reduce rank {rank} died before reporting (exit code "
                                   f"{procs[rank].exitcode})") from None
    return [got[r] for r in range(len(readers))]


class NUMATensorParallelBenchmark:
    """The proposal's benchmark class, on numaplan's measured runtime.

    Parameters
    ----------
    config
        A dict or an :class:`numaplan.engine.EngineConfig`-like object with
        ``tensor_parallel_shards`` and ``numa_tensor_parallel`` (or ``enable_numa_tp``);
        optionally ``dtype``, ``iters`` and ``timeout_s`` (how long the all-reduce benchmark
        waits for its ranks' results, default 600).
    """

    def __init__(self, config: Any = None) -> None:
        get = (config.get if isinstance(config, dict) else
               (lambda k, d=None: getattr(config, k, d))) if config is not None else \
            (lambda k, d=None: d)
        self.tensor_parallel_shards = int(get("tensor_parallel_shards", 2) or 2)
        self.enable_numa_tp = bool(get("numa_tensor_parallel", get("enable_numa_tp", True)))
        self.dtype = str(get("dtype", "float16"))
        self.iters = int(get("iters", 2000))
        self.timeout_s = float(get("timeout_s", 600))

    #: What each rank process runs (a module-level function: spawned processes import it).
    rank_main = staticmethod(_rank_main)

    def run_allreduce_benchmark(self, sizes: Sequence[int] = DEFAULT_SIZES,
                                algorithms: Sequence[str] = ALGORITHMS[:2]
                                ) -> dict[str, Any]:
        """All-reduce latency (us) of W pinned ranks for each size (elements) and algorithm."""
        from numaplan.runtime.ccl import cleanup, new_namespace

        W = self.tensor_parallel_shards
        cpus = sorted(os.sched_getaffinity(0))
        ns = new_namespace("bench")
        ctx = mp.get_context("spawn")
        pipes = [ctx.Pipe(duplex=False) for _ in range(W)]
        procs = [ctx.Process(target=self.rank_main, args=(r, cpus[r % len(cpus)], ns, W,
                                                          list(sizes), self.dtype,
                                                          list(algorithms), self.iters,
                                                          pipes[r][1]))
                 for r in range(W)]
        got = None
        try:
            for p in procs:
                p.start()
            for _, send in pipes:
                send.close()  # a rank that dies then closes the last writer: its reader sees EOF
            got = _collect(procs, [recv for recv, _ in pipes], self.timeout_s)
        finally:
            for p in procs:
                # After a failure the others wait on the missing rank: do not wait for them.
                p.join(30 if got is not None else 0)
                if p.is_alive():
                    p.kill()
                    p.join()
            cleanup(ns)
        for status, payload in got:
            if status != "ok":
                raise RuntimeError(f"all-reduce rank failed: {payload}")
        rows = []
        for key, samples in got[0][1].items():
            algo, n = key.split("|")
            rows.append({"algorithm": algo, "elements": int(n),
                         "bytes": int(n) * np.dtype(self.dtype).itemsize,
                         "median_us": statistics.median(samples),
                         "p90_us": float(np.percentile(samples, 90)), "iters": len(samples)})
        return {"benchmark": "allreduce", "world_size": W, "dtype": self.dtype,
                "oversubscribed": W > len(cpus), "rows": rows}

    @staticmethod
    def print_results(results: dict[str, Any]) -> None:
        """Print results as tables: one sub-benchmark's dict, the whole suite's, or the
        proposal's ``{"allreduce_benchmark": results}`` (any dict of named results)."""
        if "benchmark" in results:
            subs = {results["benchmark"]: results}
        elif isinstance(results.get("results"), dict):
            subs = results["results"]
        else:
            subs = results
        for name, r in subs.items():
            print(f"\n== {name}")
            if not isinstance(r, dict):
                print(f"  {r}")
            elif r.get("benchmark") == "allreduce" and "rows" in r:
                print(f"{r['world_size']} ranks, {r['dtype']}"
                      + (" (more ranks than CPUs: oversubscribed)" if r["oversubscribed"]
                         else ""))
                print(f"{'algorithm':<10} {'elements':>9} {'bytes':>9} {'median us':>10} "
                      f"{'p90 us':>9}")
                for row in r["rows"]:
                    print(f"{row['algorithm']:<10} {row['elements']:>9} {row['bytes']:>9} "
                          f"{row['median_us']:>10.2f} {row['p90_us']:>9.2f}")
            else:
                for k, v in r.items():
                    if k != "benchmark":
                        print(f"  {k}: {v}")


def bench_planner() -> dict[str, Any]:
    from numaplan.cost import cost_from_slit
    from numaplan.model import load_workload
    from numaplan.model.presets import write_hf_config
    from numaplan.plan import PlanOptions, make_plan
    from numaplan.topology import read_sample

    with tempfile.TemporaryDirectory(prefix="numaplan-bench-") as tmp:
        d = Path(tmp) / "llama3-70b"
        write_hf_config(d, "llama3-70b")
        t0 = time.perf_counter()
        wl = load_workload(d, quantization="q4f16_1")
    topo = read_sample("epyc")
    planned = make_plan(wl, topo, cost_from_slit(topo), PlanOptions(tensor_parallel_shards=8),
                        model_name="70b")
    plan = planned.plan
    return {"benchmark": "planner", "case": "Llama-3-70B-shaped q4f16_1, W=8, EPYC 8 nodes",
            "wall_s": round(time.perf_counter() - t0, 3), "solver": plan.solver.name,
            "status": plan.solver.status, "solve_s": planned.report.solve_s,
            "fraction_of_bound": plan.prediction.fraction_of_bound}


def _example_model(tmp: Path, size: str = "default") -> Path:
    from numaplan.tiny_llama.build import build_model_dir

    return build_model_dir(tmp / f"tiny-llama-{size}", size=size, dtype="float32")


def load_inputs(model_dir: Path) -> tuple[Any, Any, list[str], list[Path], int]:
    """What a loading benchmark needs: the model's workload, a one-worker plan for this
    machine, the parameter names, the shard files and their total size."""
    from numaplan.cost import cost_from_slit
    from numaplan.model import load_workload
    from numaplan.plan import PlanOptions, make_plan
    from numaplan.topology import read_sysfs

    wl = load_workload(model_dir)
    topo = read_sysfs("/")
    plan = make_plan(wl, topo, cost_from_slit(topo), PlanOptions(tensor_parallel_shards=1),
                     model_name=model_dir.name).plan
    files = sorted(model_dir.glob("params_shard_*.bin"))
    return wl, plan, [t.name for t in plan.tensors], files, sum(f.stat().st_size for f in files)


def bench_load(model_dir: Path) -> dict[str, Any]:
    from numaplan.runtime.loader import load_worker_params

    wl, plan, names, files, nbytes = load_inputs(model_dir)

    def plain() -> None:
        # Fresh, uninitialised memory, as the loader's arena: both pay the first touch.
        buf = np.empty(nbytes, dtype=np.uint8)
        pos = 0
        for f in files:
            with open(f, "rb", buffering=0) as fh:
                pos += fh.readinto(memoryview(buf)[pos:])

    def load() -> Any:
        arena, arrays, rep = load_worker_params(model_dir, wl, plan, 0, names)
        del arrays
        arena.close()
        return rep

    plain()
    load()
    tp = min(_timed(plain) for _ in range(3))
    tl, rep = min((_timed_with(load) for _ in range(3)), key=lambda t: t[0])
    return {"benchmark": "load", "file_bytes": nbytes, "plain_read_gbps": nbytes / tp / 1e9,
            "loader_gbps": rep.bytes_read_from_files / tl / 1e9, "ratio": tp / tl,
            "audit_on_planned_node": rep.on_planned_fraction}


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _timed_with(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def compile_example(model_dir: Path, w: int) -> Path:
    """Plan the example model for ``w`` workers on this machine and build its library.

    What ``numaplan compile MODEL_DIR --tp W`` does (with ``--oversubscribe`` on a machine with
    fewer CPUs than workers), through the library.

    Parameters
    ----------
    model_dir
        A directory written by :func:`numaplan.tiny_llama.build.build_model_dir`.
    w
        Tensor-parallel workers.

    Returns
    -------
    pathlib.Path
        The library, ``<model_dir>/../tp<w>/<name>-numa-llvm.so``; the plan is embedded in it.
    """
    from numaplan.model import load_workload
    from numaplan.model.relax_source import relax_source_for
    from numaplan.passes.build import build_library, library_name
    from numaplan.plan import PlanSettings, make_plan, resolve_settings
    from numaplan.topology import read_sysfs

    wl = load_workload(model_dir)
    topo = read_sysfs("/")
    settings = PlanSettings(tensor_parallel_shards=w,
                            oversubscribe=w > len(os.sched_getaffinity(0)))
    opts, cost = resolve_settings(settings, wl, topo)
    plan = make_plan(wl, topo, cost, opts, model_name=model_dir.name).plan
    src, why_not = relax_source_for(model_dir)
    if src is None:
        raise RuntimeError(f"cannot build {model_dir}: {why_not}")
    out = model_dir.parent / f"tp{w}" / library_name(model_dir.name)
    return Path(build_library(model_dir, src, plan, out).path)


def bench_decode(model_dir: Path, w: int, numa: bool, tokens: int) -> dict[str, Any]:
    from numaplan.runtime.session import NumaRuntime, RunOptions

    lib = compile_example(model_dir, w)
    with NumaRuntime(model_dir, lib, options=RunOptions(enforce_placement=numa,
                                                        max_seq_len=256)) as rt:
        rt.generate([1, 2, 3, 4], 4)
        res = rt.generate([1, 2, 3, 4], tokens + 1)
        s = rt.stats()
    med = statistics.median(res.step_s)
    return {"benchmark": "decode", "tensor_parallel_shards": w, "numa_placement": numa,
            "tokens": tokens, "median_ms_per_token": 1e3 * med, "tokens_per_s": 1 / med,
            "weight_local_percentage": s.weight_local_percentage,
            "inter_node_percentage": s.inter_node_percentage,
            "collective_ms_per_token": None if s.collective_s_per_step is None
            else 1e3 * s.collective_s_per_step}


def plot(results: dict[str, Any], path: str) -> bool:
    """All-reduce latency vs message size, one line per algorithm; False (nothing drawn) when
    the all-reduce stage did not run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = results["results"].get("allreduce")
    if not r or "rows" not in r:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for algo in sorted({row["algorithm"] for row in r["rows"]}):
        rows = sorted((x for x in r["rows"] if x["algorithm"] == algo), key=lambda x: x["bytes"])
        ax.plot([x["bytes"] for x in rows], [x["median_us"] for x in rows], marker="o",
                label=algo)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("message bytes")
    ax.set_ylabel("median latency (us)")
    ax.set_title(f"numaplan all-reduce, {r['world_size']} ranks ({r['dtype']})")
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as f:
        # The format follows the file name, as savefig(path) would choose it.
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", dpi=100)
    plt.close(fig)
    return True


#: The stages, in the order they run (``--only`` picks a subset).
STAGES = ("allreduce", "planner", "load", "decode")


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def _sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(s) for s in text.split(","))
    if not sizes or min(sizes) < 1:
        raise ValueError(text)
    return sizes


def _stages(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown stage {','.join(unknown) or text!r}; "
                                         f"choose from {','.join(STAGES)}")
    return names


# argparse names the type in its message: "invalid positive integer value: '0'".
_positive.__name__ = "positive integer"
_sizes.__name__ = "list of sizes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The suite's options, the same for ``numaplan bench`` and ``python -m numaplan.bench``.

    The first three are the MLC proposal's benchmark command's.
    """
    parser.add_argument("--tensor-parallel-shards", type=_positive, default=2, metavar="W",
                        help="ranks of the all-reduce and workers of the decode stage "
                             "(default 2)")
    parser.add_argument("--enable-numa-tp", action="store_true",
                        help="decode with numaplan's placement enforced (default: the same "
                             "workers without placement)")
    parser.add_argument("--output-file", metavar="JSON",
                        help="write the results, the machine and the method here (written "
                             "even when a stage is skipped or fails)")
    parser.add_argument("--png", metavar="FILE",
                        help="draw the all-reduce latencies to this picture (needs matplotlib: "
                             "pip install 'numaplan[plot]')")
    parser.add_argument("--sizes", type=_sizes, default=DEFAULT_SIZES, metavar="N,N,...",
                        help="all-reduce message sizes in elements (default "
                             f"{','.join(map(str, DEFAULT_SIZES))})")
    parser.add_argument("--iters", type=_positive, default=2000, metavar="N",
                        help="timed all-reduces per size and algorithm (default 2000)")
    parser.add_argument("--only", type=_stages, default=STAGES, metavar="STAGE,...",
                        help=f"run only these stages (default {','.join(STAGES)})")
    parser.add_argument("--tokens", type=_positive, default=16, metavar="N",
                        help="decode steps measured (default 16)")


def _stage(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    W = args.tensor_parallel_shards
    if name == "allreduce":
        b = NUMATensorParallelBenchmark({"tensor_parallel_shards": W, "iters": args.iters,
                                         "enable_numa_tp": args.enable_numa_tp})
        return b.run_allreduce_benchmark(args.sizes)
    if name == "planner":
        return bench_planner()
    if name == "load":
        # Loading is measured on the bandwidth-bound size: on a few MB fixed costs dominate.
        return bench_load(_example_model(tmp, "bench"))
    return bench_decode(_example_model(tmp), W, args.enable_numa_tp, args.tokens)


_STAGE_TITLE = {"allreduce": "all-reduce, {W} ranks", "planner": "planner scale (70B-shaped, "
                "W=8, 8 nodes)", "load": "shard loading throughput (example model, bench "
                "size, ~210 MB of files)", "decode": "decode, W={W}, placement {numa}"}


def _writable(path: str | None) -> None:
    """Create the output's directory now, so a bad path fails before minutes of measuring."""
    if path is None:
        return
    try:
        Path(path).resolve().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NumaplanError(f"cannot write here: {exc.strerror}", path=path) from None
    if Path(path).is_dir():
        raise NumaplanError("is a directory, expected a file name", path=path)


def run(args: argparse.Namespace) -> int:
    """Run the stages ``args`` asks for (parsed by :func:`add_arguments`'s options).

    A stage that cannot run at this W (a :class:`~numaplan.errors.NumaplanError`, such as a W
    that does not divide the example model's KV heads) is skipped, its reason recorded; a stage
    that crashes is recorded with its error. The results are written either way.

    Returns
    -------
    int
        0, or 1 when a stage failed (not skipped).

    Raises
    ------
    NumaplanError
        Before any stage runs: ``--output-file`` or ``--png`` cannot be written, or ``--png``
        without matplotlib.
    """
    _writable(args.output_file)
    _writable(args.png)
    if args.png and importlib.util.find_spec("matplotlib") is None:
        raise NumaplanError("--png needs matplotlib: pip install 'numaplan[plot]'")
    W = args.tensor_parallel_shards
    t_start = time.perf_counter()
    results: dict[str, Any] = {}
    doc = {"numaplan_version": __version__, "commit": _commit(), "machine": machine_info(),
           "model": "numaplan.tiny_llama default (q0f32)", "method": {
               "tensor_parallel_shards": W, "enable_numa_tp": args.enable_numa_tp,
               "statistic": "median over iterations after warm-up"}, "results": results}
    failed = False
    # The example models and their libraries: up to ~200 MB, removed however the run ends.
    tmp_dir = tempfile.TemporaryDirectory(prefix="numaplan-bench-")
    tmp = Path(tmp_dir.name)
    try:
        for name in STAGES:
            if name not in args.only:
                continue
            _progress(_STAGE_TITLE[name].format(W=W, numa="on" if args.enable_numa_tp
                                                else "off"))
            try:
                results[name] = _stage(name, args, tmp)
            except NumaplanError as exc:
                results[name] = {"benchmark": name, "skipped": str(exc)}
                _progress(f"{name} skipped at W={W}: {exc}")
            except Exception as exc:  # recorded, and the other stages still run
                results[name] = {"benchmark": name, "error": f"{type(exc).__name__}: {exc}"}
                _progress(f"{name} failed: {type(exc).__name__}: {exc}")
                failed = True
    finally:
        tmp_dir.cleanup()
        # Also on ^C: what was measured so far is kept.
        doc["wall_s"] = round(time.perf_counter() - t_start, 1)
        if args.output_file:
            write_atomic(args.output_file, json.dumps(doc, indent=2) + "\n")
            _progress(f"wrote {args.output_file}")
    NUMATensorParallelBenchmark.print_results(doc)
    if args.png:
        _progress(f"wrote {args.png}" if plot(doc, args.png) else
                  f"{args.png} not drawn: the all-reduce stage did not run")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m numaplan.bench``: parse, run, and report a user error in one line.

    Parameters
    ----------
    argv
        Arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog="python -m numaplan.bench",
                                     description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except NumaplanError as exc:
        print(f"numaplan bench: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
