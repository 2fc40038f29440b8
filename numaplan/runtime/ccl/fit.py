"""The all-reduce's per-call cost on this machine, ``alpha + beta * bytes``, from a short run.

The predictor prices two all-reduces per layer per token (:mod:`numaplan.plan.collective`);
at decode sizes (a few KiB) the fixed cost per call, not the bytes, dominates, and a nominal
figure underestimated it several times here. Two ranks in two spawned processes, each pinned to
one CPU, call the all-reduce the way the compiled model does: through the registered TVM global
function (``numaplan.ccl.allreduce``, so the FFI round trip is included), at a few message sizes;
a least-squares line through rank 0's median times gives alpha and beta.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from collections.abc import Sequence

import numpy as np

from numaplan.errors import CollectiveError

#: Message sizes of the fit (bytes): decode all-reduces are batch x hidden x 2-4 bytes.
FIT_SIZES = (1 << 10, 4 << 10, 16 << 10, 64 << 10)


def _rank(rank: int, cpu: int, namespace: str, sizes: Sequence[int], iters: int,
          conn) -> None:
    """One rank: pin, connect, time ``iters`` calls per size, send rank 0's medians back."""
    try:
        import tvm_ffi

        from numaplan.ccl_abi import ALLREDUCE, FUNCTION_NAMES
        from numaplan.osnuma import set_affinity
        from numaplan.runtime.ccl import CommSpec, Communicator
        from numaplan.runtime.ccl.tvm_functions import register_tvm_functions

        set_affinity([cpu])
        spec = CommSpec(namespace=namespace, node_of_rank=(0, 0), slot_bytes=max(sizes),
                        timeout_s=60)
        medians = []
        with Communicator.create(spec, rank) as comm:
            register_tvm_functions(comm)
            fn = tvm_ffi.get_global_func(FUNCTION_NAMES[ALLREDUCE])
            comm.barrier()
            for nbytes in sizes:
                x = tvm_ffi.from_dlpack(np.ones(nbytes // 4, "float32"))
                out = tvm_ffi.from_dlpack(np.empty(nbytes // 4, "float32"))
                for _ in range(iters // 4):
                    fn(x, 0, 0, "tp", "by_size", out)
                samples = []
                for _ in range(iters):
                    t0 = time.perf_counter_ns()
                    fn(x, 0, 0, "tp", "by_size", out)
                    samples.append(time.perf_counter_ns() - t0)
                medians.append(statistics.median(samples) * 1e-9)
                comm.barrier()
        conn.send(("ok", medians))
    except BaseException as exc:  # report, do not hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def fit_allreduce(cpus: tuple[int, int], *, sizes: Sequence[int] = FIT_SIZES,
                  iters: int = 300, timeout_s: float = 60.0) -> tuple[float, float, dict]:
    """Fit ``alpha + beta * bytes`` to numaplan's 2-rank all-reduce on two CPUs.

    Parameters
    ----------
    cpus
        The two CPUs the ranks are pinned to (two cores of one node: the probe's case).
    sizes
        Message sizes in bytes.
    iters
        Timed calls per size and rank.
    timeout_s
        How long to wait for the ranks.

    Returns
    -------
    tuple
        ``(alpha_s, beta_s_per_byte, {size: median seconds})``; both coefficients clipped at 0.

    Raises
    ------
    CollectiveError
        When a rank fails or does not answer in time.
    """
    from numaplan.runtime.shm import new_namespace

    ctx = mp.get_context("spawn")
    namespace = new_namespace("numaplan-fit")
    pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
    procs = [ctx.Process(target=_rank, args=(r, cpus[r], namespace, tuple(sizes), iters,
                                             pipes[r][1]), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        answers = []
        for recv, _ in pipes:
            if not recv.poll(timeout_s):
                raise CollectiveError("the all-reduce fit's ranks did not answer in "
                                      f"{timeout_s:.0f} s")
            answers.append(recv.recv())
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
    for status, payload in answers:
        if status != "ok":
            raise CollectiveError(f"the all-reduce fit failed: {payload}")
    times = answers[0][1]
    beta, alpha = np.polyfit(np.asarray(sizes, float), np.asarray(times, float), 1)
    return max(float(alpha), 0.0), max(float(beta), 0.0), dict(zip(sizes, times, strict=True))
