"""Weight-read throughput of numaplan's decode products, one kernel call at a time.

Each kernel of ``numaplan/nn/kernels.py`` (``q4_gemv``, ``q4_gemv_int8`` when the CPU has
AVX-512 VNNI, ``dense_gemv`` on float16), and for comparison MLC's q4 product (dequantize fused
into the float16 matmul) scheduled by dlight's ``cpu.GEMV`` rule as MLC schedules it on
``llvm``, is compiled alone for this machine's CPU and called on a rotating set of weight copies
larger than the last-level cache, so that every call reads its weights from memory. The figure
is weight bytes per call / median call time. Set ``TVM_NUM_THREADS`` to the threads to measure
with (TVM's default on x86 is half the logical CPUs; the runtime uses the plan's CPUs).

Usage: TVM_NUM_THREADS=2 python scripts/bench_kernels.py [--shapes 4096x4096,1536x576,576x1536]
       [--calls 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

COPIES_BYTES = 256 << 20  # the rotating weight copies: well past any last-level cache


def _compile(func, target):
    import tvm

    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=target)["main"]


def _dlight_q4(n: int, k: int, target):
    """MLC's q4f16_1 product, ``x @ ((q - 7) * scale)^T`` in float16, through dlight."""
    import tvm
    from tvm import te, tirx
    from tvm.s_tir import dlight as dl

    x = te.placeholder((1, k), "float16", name="x")
    q = te.placeholder((n, k // 8), "uint32", name="q_weight")
    s = te.placeholder((n, k // 32), "float16", name="q_scale")
    w = te.compute((n, k), lambda i, j: (
        ((q[i, j // 8] >> ((j % 8) * 4).astype("uint32")) & tirx.const(15, "uint32"))
        .astype("float16") - tirx.const(7, "float16")) * s[i, j // 32], name="dequantize")
    kk = te.reduce_axis((0, k), name="kk")
    y = te.compute((1, n), lambda a, i: te.sum(x[a, kk] * w[i, kk], axis=kk), name="matmul")
    mod = tvm.IRModule({"main": te.create_prim_func([x, q, s, y])
                        .with_attr("global_symbol", "main")})
    with target:
        mod = dl.ApplyDefaultSchedule(dl.cpu.GEMV())(mod)
    return tvm.compile(mod, target=target)["main"]


def _measure(fn, inputs: list[list], calls: int) -> float:
    """Median seconds per call, each call on the next set of inputs."""
    for args in inputs[:2]:
        fn(*args)
    times = []
    for i in range(calls):
        args = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_shape(n: int, k: int, calls: int, target) -> dict[str, float]:
    """GB/s of each kernel on an ``n x k`` weight (output rows x input features)."""
    import tvm

    from numaplan.nn.kernels import GROUP, Q4_PER_WORD, dense_gemv, has_vnni, q4_gemv, q4_gemv_int8

    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    x = tvm.runtime.tensor(rng.standard_normal((1, k)).astype("float16"), dev)
    y = tvm.runtime.tensor(np.zeros((1, n), "float32"), dev)
    q4_bytes = n * k // 2 + n * (k // GROUP) * 2
    out = {}

    def copies(nbytes: int, make) -> list:
        return [make() for _ in range(max(2, COPIES_BYTES // nbytes))]

    q4 = copies(q4_bytes, lambda: [
        x, tvm.runtime.tensor(rng.integers(0, 2**32, (n, k // Q4_PER_WORD), dtype="uint32"), dev),
        tvm.runtime.tensor(rng.random((n, k // GROUP)).astype("float16"), dev), y])
    kernels = {"q4_gemv": q4_gemv}
    if has_vnni(target):
        kernels["q4_gemv_int8"] = q4_gemv_int8
    for name, make in kernels.items():
        fn = _compile(make(n, k, "float16", "float16"), target)
        out[name] = q4_bytes / _measure(fn, q4, calls) / 1e9
    y16 = tvm.runtime.tensor(np.zeros((1, n), "float16"), dev)
    mlc = [[*args[:3], y16] for args in q4]
    out["MLC q4 + dlight cpu.GEMV"] = q4_bytes / _measure(_dlight_q4(n, k, target), mlc,
                                                           calls) / 1e9
    del q4, mlc
    dense = copies(2 * n * k, lambda: [
        x, tvm.runtime.tensor(rng.standard_normal((n, k)).astype("float16"), dev), y])
    fn = _compile(dense_gemv(n, k, "float16"), target)
    out["dense_gemv float16"] = 2 * n * k / _measure(fn, dense, calls) / 1e9
    return out


def bench_tokens(n: int, k: int, tokens: list[int], calls: int, target) -> dict[str, float]:
    """Microseconds per call of a batched decode step's q4 product at each token count:
    ``q4_gemv_int8_tokens`` (the int8 policy's) against ``q4_matmul`` (the float policy's)."""
    import tvm

    from numaplan.nn.kernels import GROUP, Q4_PER_WORD, q4_gemv_int8_tokens, q4_matmul

    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    q = tvm.runtime.tensor(rng.integers(0, 2**32, (n, k // Q4_PER_WORD), dtype="uint32"), dev)
    s = tvm.runtime.tensor((rng.random((n, k // GROUP)) * 0.01).astype("float16"), dev)
    fns = {"q4_gemv_int8_tokens": _compile(q4_gemv_int8_tokens(n, k, "float16", "float16"),
                                           target),
           "q4_matmul": _compile(q4_matmul(n, k, "float16", "float16"), target)}
    out = {}
    for t in tokens:
        args = [tvm.runtime.tensor(rng.standard_normal((t, k)).astype("float16"), dev), q, s,
                tvm.runtime.tensor(np.zeros((t, n), "float32"), dev)]
        for name, fn in fns.items():
            out[f"{name} t={t}"] = _measure(fn, [args], calls) * 1e6
    return out


def main() -> int:
    from numaplan.passes.schedules import host_target

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="4096x4096,1536x576,576x1536",
                    help="weights as OUTxIN (rows x input features)")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--tokens", default="",
                    help="also time a batched decode step's q4 product at these token counts "
                         "(e.g. 1,2,4,8; needs AVX-512 VNNI), weights in cache")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    target = host_target()
    results = {}
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        results[shape] = r = bench_shape(n, k, args.calls, target)
        print(f"{shape:>11}  " + "  ".join(f"{name} {gbps:5.1f} GB/s" for name, gbps in r.items()),
              flush=True)
        if args.tokens:
            from numaplan.nn.kernels import has_vnni

            if not has_vnni(target):
                print("  (no AVX-512 VNNI: the batched int8 step is not used here)")
                continue
            r["tokens_us"] = t = bench_tokens(n, k, [int(v) for v in args.tokens.split(",")],
                                              args.calls, target)
            print("  " + "  ".join(f"{name} {us:.0f} us" for name, us in t.items()), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"target": str(target), "results": results}, indent=2)
                             + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
