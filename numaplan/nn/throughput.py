"""How fast numaplan's own decode kernels consume weights on a set of CPUs: the roofline's
compute ceiling (``CostModel.compute``, docs/cost-model.md "Compute").

Decode multiplies one activation row by every weight matrix; per token a worker's kernels turn
its weight bytes into products. On a machine with few cores, dequantizing and multiplying, not
memory, sets that pace (llama.cpp reads SmolLM2-135M's Q4_1 weights here at about a third of the
probed bandwidth). This module times the kernels the compiled model uses for one token
(:func:`numaplan.nn.kernels.q4_gemv` / ``q4_gemv_int8`` as the default policy picks, and
``dense_gemv``) on a weight matrix small enough to stay in each core's cache, so that the figure
is the kernels' ceiling and not the memory's, with one thread pinned per given CPU, and reports
weight bytes per second per thread. A second, small matrix gives the fixed cost of one call
(entering the thread pool, synchronising its threads, leaving): a decode product of a small
model's 576-wide layer takes tens of microseconds, where that cost weighs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import tvm

from numaplan.nn import kernels
from numaplan.passes.schedules import host_target

#: Quantizations whose decode kernels the probe times (what numaplan compiles).
MEASURED_QUANTIZATIONS = ("q0f32", "q0f16", "q4f16_1")
#: Weight bytes per thread of the timed matrix: well inside a core's L2 (1-2 MiB on current
#: x86 server cores), well above one call's fixed cost.
BYTES_PER_THREAD = 512 << 10
#: Rows of the small matrix that prices a call's fixed cost.
SMALL_ROWS = 64
#: TVM's thread-pool mode "one pinned thread per listed CPU" (``runtime.config_threadpool``).
_ONE_CORE_PER_THREAD = -2


def _shape(quantization: str, threads: int) -> tuple[int, int]:
    """``(n, k)`` of a weight matrix of about ``BYTES_PER_THREAD x threads`` bytes, ``k`` a
    multiple of 128 (the q4 kernel's widest lanes), ``n`` a multiple of 8."""
    per_weight = {"q0f32": 4.0, "q0f16": 2.0, "q4f16_1": 0.5 + 2 / 32}[quantization]
    k = 1024
    n = max(8, int(BYTES_PER_THREAD * threads / (k * per_weight)) // 8 * 8)
    return n, k


def _kernel(quantization: str, n: int, k: int, target: tvm.target.Target):
    """The decode product of ``quantization`` for an ``n x k`` weight and its random inputs."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, k)).astype("float32")
    if quantization == "q4f16_1":
        int8 = kernels.resolve_q4_activations("auto", target) == "int8"
        func = (kernels.q4_gemv_int8 if int8 else kernels.q4_gemv)(n, k, "float16", "float16")
        args = [x.astype("float16"),
                rng.integers(0, 2**32, (n, k // kernels.Q4_PER_WORD), dtype="uint32"),
                (rng.random((n, k // kernels.GROUP)) * 0.01).astype("float16")]
        weight_bytes = args[1].nbytes + args[2].nbytes
        name = "q4_gemv_int8" if int8 else "q4_gemv"
    else:
        dtype = "float32" if quantization == "q0f32" else "float16"
        func = kernels.dense_gemv(n, k, dtype)
        args = [x.astype(dtype), rng.standard_normal((n, k)).astype(dtype)]
        weight_bytes = args[1].nbytes
        name = "dense_gemv"
    func = func.with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=target)
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, dev) for a in args]
    tensors.append(tvm.runtime.empty((1, n), "float32", dev))
    return lib["main"], tensors, weight_bytes, name


def _time_calls(fn, args, seconds: float, repeats: int) -> float:
    """Best seconds per call over ``repeats`` repeats of about ``seconds / repeats`` each: a
    ceiling is what the cores reach when nothing else runs (as the probe's bandwidth is the
    best of its repeats); other work on the machine only ever slows a repeat down."""
    for _ in range(3):  # warm the caches and the thread pool
        fn(*args)
    t0 = time.perf_counter()
    fn(*args)
    calls = max(1, int(seconds / repeats / max(time.perf_counter() - t0, 1e-7)))
    per_call = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(*args)
        per_call.append((time.perf_counter() - t0) / calls)
    return min(per_call)


def kernel_rates(cpus: Sequence[int], *, quantizations: Sequence[str] = MEASURED_QUANTIZATIONS,
                 seconds: float = 0.2, repeats: int = 5) -> dict[str, tuple[float, float, str]]:
    """Weight bytes per second per thread of each quantization's decode product, and the fixed
    seconds per call.

    Parameters
    ----------
    cpus
        One pinned thread per CPU (give one CPU per physical core: the figure is per core).
    quantizations
        Among :data:`MEASURED_QUANTIZATIONS`.
    seconds
        Timed time per quantization, split into ``repeats`` repeats; the best repeat counts.
    repeats
        Timed repeats.

    Returns
    -------
    dict
        ``{quantization: (bytes per second per thread, seconds per call, kernel name)}``: a
        line ``call + bytes / (threads x rate)`` through the large and the small matrix's
        times (the fixed cost clipped at 0).

    Notes
    -----
    Leaves TVM's thread pool configured for ``cpus`` (a probe process ends soon after).
    """
    target = host_target()
    tvm.get_global_func("runtime.config_threadpool")(
        _ONE_CORE_PER_THREAD, len(cpus), [str(c) for c in cpus])
    out: dict[str, tuple[float, float, str]] = {}
    for q in quantizations:
        n, k = _shape(q, len(cpus))
        fn, args, nbytes, name = _kernel(q, n, k, target)
        t_big = _time_calls(fn, args, seconds * 0.75, repeats)
        fs, args_s, nbytes_s, _ = _kernel(q, SMALL_ROWS, k, target)
        t_small = _time_calls(fs, args_s, seconds * 0.25, repeats)
        # Two points of t = call + bytes / rate; a noisy pair that slopes the wrong way leaves
        # the large matrix's plain rate and no fixed cost.
        if t_big > t_small:
            rate = (nbytes - nbytes_s) / (t_big - t_small)
            call = max(t_small - nbytes_s / rate, 0.0)
        else:
            rate, call = nbytes / t_big, 0.0
        out[q] = (rate / len(cpus), call, name)
    return out
