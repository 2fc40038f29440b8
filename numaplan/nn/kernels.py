"""Hand-scheduled CPU kernels for the products of decode and prefill.

Decode reads every weight once per token, so its speed is the rate at which these kernels turn
weight bytes into products. dlight's CPU GEMV rule (what MLC applies on ``llvm``) makes output
rows the SIMD lanes, which turns each weight load into scalar inserts and ran MLC's q4 product
at 0.6-3.5 GB/s here; these kernels make consecutive weight *words* the lanes instead.

``q4_gemv`` (one token, MLC's q4 numerics: float32 accumulation, ``(q - 7) * scale``):

- lanes run over ``B`` consecutive uint32 words of a weight row (``B = 16`` when ``K`` is a
  multiple of 128, else 8); each word holds 8 nibbles;
- nibble ``e`` of every lane is isolated with the constant mask ``15 << 4e`` (no shift) and
  converted to float, which is the code times ``2^(4e)`` exactly; the activation it multiplies
  is pre-scaled once per call by ``2^(-4e)`` (exact, a power of two) and pre-permuted so that
  the lane's eight activations are contiguous;
- the zero point is applied once per word (``7 * sum of its 8 activations``, also once per
  call) and the group scale once per word after the eight products, expanded to the lanes in a
  tiny stage (a scale load indexed by the lane would be scalarised);
- threads split the rows (``R`` rows per task share the activation loads).

``q4_gemv_int8_tokens`` (a batched decode step under the int8 policy) runs the int8 GEMV for
every token over each weight row while the row is in L1: each token's product is the one-token
kernel's, bit for bit, and the step reads the weights once (2-2.6x faster than ``q4_matmul``
at 2-8 tokens here, ``scripts/bench_kernels.py --tokens``). ``q4_matmul`` (prefill, and
batched decode under the float policy) dequantizes a block of rows into a float32 tile once and
reuses it for every token; ``dense_gemv`` widens float16 / bfloat16 on the fly with float32
accumulation.

The design (and the measurements behind it) is written up in ``docs/kernels.md``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Literal

from tvm import s_tir, te, tirx

Q4_PER_WORD = 8
GROUP = 32
ROWS_PER_TASK = 2
TILE_ROWS = 8
LANES = 16


#: How a decode token's q4 product treats the activation: ``float`` keeps MLC's numerics
#: (float32 products), ``int8`` rounds it per group of 32 and uses VNNI dot products (the
#: llama.cpp trade: ~0.5 % relative error per product, ~1.7x faster here); ``auto`` is ``int8``
#: where the target has AVX-512 VNNI.
Q4Activations = Literal["auto", "float", "int8"]


@dataclass(frozen=True)
class KernelPolicy:
    """Choices the layers make while a model is traced (see :func:`policy`)."""

    q4_activations: Literal["float", "int8"] = "float"
    #: The KV cache's dtype: the model dtype (MLC's choice) or float32 (TVM 0.27's float16
    #: attention kernels are ~15x slower than its float32 ones on CPU).
    kv_dtype: str | None = None


_POLICY: contextvars.ContextVar[KernelPolicy] = contextvars.ContextVar(
    "numaplan_kernel_policy", default=KernelPolicy())


@contextlib.contextmanager
def policy(value: KernelPolicy) -> Iterator[KernelPolicy]:
    """Trace a model with ``value`` in force."""
    token = _POLICY.set(value)
    try:
        yield value
    finally:
        _POLICY.reset(token)


def current_policy() -> KernelPolicy:
    """The policy of the model being traced."""
    return _POLICY.get()


def resolve_q4_activations(choice: str, target: object) -> Literal["float", "int8"]:
    """``auto`` -> ``int8`` when ``target`` has VNNI, else ``float``."""
    if choice == "auto":
        return "int8" if has_vnni(target) else "float"
    if choice not in ("float", "int8"):
        raise ValueError(f"q4 activations must be auto, float or int8, got {choice!r}")
    return choice  # type: ignore[return-value]


def q4_lanes(k: int) -> int:
    """Words per vector for a reduction of ``k`` (0 when ``k`` does not fit the kernel)."""
    if k % (Q4_PER_WORD * 16) == 0:
        return 16
    if k % (Q4_PER_WORD * 8) == 0:
        return 8
    return 0


def _private(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Ready for ``tensor_ir_op``: no fixed symbol, opaque to ``FuseOps``, marked scheduled so
    dlight leaves it alone."""
    if func.attrs is not None and "global_symbol" in func.attrs:
        func = func.without_attr("global_symbol")
    return (func.with_attr("op_pattern", 8).with_attr("tirx.is_scheduled", True)
            .with_attr("tirx.noalias", True))


def _below(sch: s_tir.Schedule, block, loop) -> list:
    loops = sch.get_loops(block)
    at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
    return loops[at + 1:]


@cache
def q4_gemv(n: int, k: int, x_dtype: str, s_dtype: str) -> tirx.PrimFunc:
    """``y[1, n] f32 = x[1, k] @ dequant(q[n, k/8], s[n, k/32])^T`` (see the module doc)."""
    lanes = q4_lanes(k)
    if not lanes:
        raise ValueError(f"q4_gemv needs k a multiple of 64, got {k}")
    nb = k // (Q4_PER_WORD * lanes)
    x = te.placeholder((1, k), x_dtype, name="x")
    q = te.placeholder((n, k // Q4_PER_WORD), "uint32", name="q_weight")
    s = te.placeholder((n, k // GROUP), s_dtype, name="q_scale")
    xt = te.compute(
        (nb, Q4_PER_WORD, lanes),
        lambda b, e, j: x[0, b * Q4_PER_WORD * lanes + Q4_PER_WORD * j + e].astype("float32")
        / tirx.shift_left(tirx.const(1, "int32"), e * 4).astype("float32"), name="xt")
    e1 = te.reduce_axis((0, Q4_PER_WORD), name="e1")
    xz = te.compute(
        (nb, lanes),
        lambda b, j: te.sum(x[0, b * Q4_PER_WORD * lanes + Q4_PER_WORD * j + e1]
                            .astype("float32") * tirx.const(7.0, "float32"), axis=e1),
        name="xz")
    e = te.reduce_axis((0, Q4_PER_WORD), name="e")
    inner = te.compute(
        (n, nb, lanes),
        lambda r, b, j: te.sum(
            (q[r, b * lanes + j] & tirx.shift_left(tirx.const(15, "uint32"),
                                                   (e * 4).astype("uint32"))).astype("float32")
            * xt[b, e, j], axis=e), name="inner")
    sf = te.compute((n, k // GROUP), lambda r, g: s[r, g].astype("float32"), name="sf")
    words_per_group = GROUP // Q4_PER_WORD
    se = te.compute((n, nb, lanes), lambda r, b, j: sf[r, (b * lanes + j) // words_per_group],
                    name="se")
    rb = te.reduce_axis((0, nb), name="rb")
    rj = te.reduce_axis((0, lanes), name="rj")
    y = te.compute((1, n), lambda i, r: te.sum(
        se[r, rb, rj] * (inner[r, rb, rj] - xz[rb, rj]), axis=[rb, rj]), name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, q, s, y]))
    rows = ROWS_PER_TASK if n % ROWS_PER_TASK == 0 else 1
    mm, blk_inner = sch.get_sblock("y"), sch.get_sblock("inner")
    _, r, rb_l, rj_l = sch.get_loops(mm)
    rf = sch.rfactor(rj_l, factor_axis=2)  # one partial sum per lane
    _, r, rb_l, rj_l = sch.get_loops(rf)
    r_outer, r_inner = sch.split(r, [None, rows])
    sch.reorder(r_outer, rb_l, r_inner, rj_l)
    sch.compute_at(blk_inner, rb_l)
    loops = _below(sch, blk_inner, rb_l)
    a_r, a_j, a_e = loops if len(loops) == 3 else (None, *loops)
    sch.reorder(*([a_r] if a_r is not None else []), a_e, a_j)
    for name in ("se", "sf"):
        sch.compute_at(sch.get_sblock(name), rb_l)
    s_j = _below(sch, sch.get_sblock("se"), rb_l)[-1]
    s_g, s_c = sch.split(s_j, [None, words_per_group])
    sch.unroll(s_g)
    sch.vectorize(s_c)
    sch.vectorize(_below(sch, sch.get_sblock("sf"), rb_l)[-1])
    if rows > 1:
        sch.unroll(_below(sch, sch.get_sblock("se"), rb_l)[0])
        sch.unroll(_below(sch, sch.get_sblock("sf"), rb_l)[0])
        sch.unroll(a_r)
    sch.reverse_compute_at(mm, r_outer)
    sch.parallel(r_outer)
    sch.vectorize(rj_l)
    sch.unroll(r_inner)
    sch.vectorize(a_j)
    sch.unroll(a_e)
    sch.decompose_reduction(blk_inner, a_e)
    sch.decompose_reduction(rf, rb_l)
    return _private(sch.mod["main"])


def has_vnni(target: object) -> bool:
    """Whether ``target`` (an llvm target) has AVX-512 VNNI (``vpdpbusd``)."""
    from tvm.target import codegen

    try:
        features = codegen.target_has_features("avx512vnni", target)
    except Exception:  # a target LLVM cannot describe: take the portable kernel
        return False
    return bool(features)


@cache
def q4_gemv_int8(n: int, k: int, x_dtype: str, s_dtype: str) -> tirx.PrimFunc:
    """``q4_gemv`` with the activation rounded to int8 per group of 32 and ``vpdpbusd``
    products (AVX-512 VNNI), as llama.cpp computes its Q4 x Q8 dot products.

    Per word, ``w & 0x0F0F0F0F`` holds the codes of elements 0, 2, 4, 6 as bytes and
    ``(w >> 4) & 0x0F0F0F0F`` those of 1, 3, 5, 7; one ``vpdpbusd`` multiplies each with the
    matching four int8 activations (laid out so once per call) and adds them into the word's
    int32 lane. Per group ``g``: ``y += s[n, g] * sx[g] * (sum q * xq - 7 * sum xq)``, with the
    zero-point term a short dot product over the row's scales. The output differs from the
    exact kernel by the activation rounding (about 0.5 % relative here), the trade that makes
    the product memory-bound instead of compute-bound.
    """
    return _q4_int8(n, k, x_dtype, s_dtype, 1)


@cache
def q4_gemv_int8_tokens(n: int, k: int, x_dtype: str, s_dtype: str) -> tirx.PrimFunc:
    """:func:`q4_gemv_int8` for any number of tokens ``t`` (batched decode): every token's
    product is computed exactly as the one-token kernel computes it (so a sequence decodes to
    the same logits alone or in a batch), and each thread runs all tokens over a weight row
    while the row is in its L1 cache, so the weights are read once per step, not per token."""
    return _q4_int8(n, k, x_dtype, s_dtype, None)


def _q4_int8(n: int, k: int, x_dtype: str, s_dtype: str, tokens: int | None) -> tirx.PrimFunc:
    """The int8 q4 product for ``tokens`` tokens (``None``: a dynamic count)."""
    from tvm.script import tirx as T

    lanes = q4_lanes(k)
    if not lanes:
        raise ValueError(f"q4_gemv_int8 needs k a multiple of 64, got {k}")
    block = Q4_PER_WORD * lanes
    nb, groups, gpb = k // block, k // GROUP, lanes // 4
    dp = f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"
    i32, f32, i8, fg = f"int32x{lanes}", f"float32x{lanes}", f"int8x{4 * lanes}", f"float32x{gpb}"
    cv = next(c for c in (16, 8, 4, 2, 1) if groups % c == 0)
    t = tokens if tokens is not None else tirx.Var("t", "int64")

    @T.prim_func(s_tir=False)
    def main(x: T.Buffer((t, k), x_dtype), q: T.Buffer((n, k // Q4_PER_WORD), "uint32"),
             s: T.Buffer((n, groups), s_dtype), y: T.Buffer((t, n), "float32")):
        T.func_attr({"tirx.noalias": True})
        sx = T.alloc_buffer((t, groups), "float32")
        cx = T.alloc_buffer((t, groups), "float32")
        xq = T.alloc_buffer((t, k), "int32")
        xq8 = T.alloc_buffer((t, k), "int8")
        # Activations: int8 per group of 32 (scale max|x| / 127), the zero point's sum.
        for i, g in T.grid(t, groups):
            sx[i, g] = T.float32(0)
            for e in range(GROUP):
                sx[i, g] = T.max(sx[i, g], T.fabs(T.Cast("float32", x[i, g * GROUP + e])))
            sx[i, g] = T.Select(sx[i, g] > T.float32(0), sx[i, g] / T.float32(127),
                                T.float32(1))
            cx[i, g] = T.float32(0)
            for e in range(GROUP):
                xq[i, g * GROUP + e] = T.Cast(
                    "int32", T.round(T.Cast("float32", x[i, g * GROUP + e]) / sx[i, g]))
                cx[i, g] = cx[i, g] + T.Cast("float32", xq[i, g * GROUP + e])
            cx[i, g] = cx[i, g] * sx[i, g] * T.float32(7)
        # Even elements of every word first, then odd ones, four bytes a word.
        for i, b, half, j, e in T.grid(t, nb, 2, lanes, 4):
            xq8[i, (b * 2 + half) * (4 * lanes) + j * 4 + e] = T.Cast(
                "int8", xq[i, b * block + j * 8 + e * 2 + half])
        for r in T.parallel(n):
            acc = T.alloc_buffer((lanes,), "float32")
            acc0 = T.alloc_buffer((cv,), "float32")
            isum = T.alloc_buffer((lanes,), "int32")
            sf = T.alloc_buffer((gpb,), "float32")
            se = T.alloc_buffer((lanes,), "float32")
            tot = T.alloc_buffer((1,), "float32")
            for i in range(t):
                acc[T.ramp(0, 1, lanes)] = T.broadcast(T.float32(0), lanes)
                acc0[T.ramp(0, 1, cv)] = T.broadcast(T.float32(0), cv)
                for rb in range(nb):
                    words = q[r, T.ramp(rb * lanes, 1, lanes)]
                    isum[T.ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                        i32, dp, T.broadcast(T.int32(0), lanes),
                        T.reinterpret(i8, words & T.broadcast(T.uint32(0x0F0F0F0F), lanes)),
                        xq8[i, T.ramp(rb * block, 1, 4 * lanes)])
                    isum[T.ramp(0, 1, lanes)] = T.call_llvm_pure_intrin(
                        i32, dp, isum[T.ramp(0, 1, lanes)],
                        T.reinterpret(i8, (words >> T.broadcast(T.uint32(4), lanes))
                                      & T.broadcast(T.uint32(0x0F0F0F0F), lanes)),
                        xq8[i, T.ramp(rb * block + 4 * lanes, 1, 4 * lanes)])
                    sf[T.ramp(0, 1, gpb)] = T.Cast(fg, s[r, T.ramp(rb * gpb, 1, gpb)]) * \
                        sx[i, T.ramp(rb * gpb, 1, gpb)]
                    for g in T.unroll(gpb):
                        se[T.ramp(g * 4, 1, 4)] = T.broadcast(sf[g], 4)
                    acc[T.ramp(0, 1, lanes)] = acc[T.ramp(0, 1, lanes)] + \
                        se[T.ramp(0, 1, lanes)] * T.Cast(f32, isum[T.ramp(0, 1, lanes)])
                for c in range(groups // cv):
                    acc0[T.ramp(0, 1, cv)] = acc0[T.ramp(0, 1, cv)] + \
                        T.Cast(f"float32x{cv}", s[r, T.ramp(c * cv, 1, cv)]) * \
                        cx[i, T.ramp(c * cv, 1, cv)]
                tot[0] = T.float32(0)
                for lane in T.unroll(lanes):
                    tot[0] = tot[0] + acc[lane]
                for lane in T.unroll(cv):
                    tot[0] = tot[0] - acc0[lane]
                y[i, r] = tot[0]

    return _private(main)


@cache
def q4_matmul(n: int, k: int, x_dtype: str, s_dtype: str) -> tirx.PrimFunc:
    """``y[t, n] f32 = x[t, k] @ dequant(q, s)^T`` for any token count ``t``: each task
    dequantizes ``TILE_ROWS`` rows into a float32 tile, then every token streams it."""
    t = tirx.Var("t", "int64")
    x = te.placeholder((t, k), x_dtype, name="x")
    q = te.placeholder((n, k // Q4_PER_WORD), "uint32", name="q_weight")
    s = te.placeholder((n, k // GROUP), s_dtype, name="q_scale")

    def deq(r, c):
        nib = (q[r, c // Q4_PER_WORD] >> ((c % Q4_PER_WORD) * 4).astype("uint32")) & \
            tirx.const(15, "uint32")
        return (nib.astype("float32") - tirx.const(7.0, "float32")) * \
            s[r, c // GROUP].astype("float32")

    w = te.compute((n, k), deq, name="w")
    kk = te.reduce_axis((0, k), name="kk")
    y = te.compute((t, n), lambda i, r: te.sum(x[i, kk].astype("float32") * w[r, kk], axis=kk),
                   name="y")
    return _tiled_matmul(te.create_prim_func([x, q, s, y]), n, k, dequant_block="w")


@cache
def dense_gemv(n: int, k: int, dtype: str) -> tirx.PrimFunc:
    """``y[1, n] f32 = x[1, k] @ w[n, k]^T`` with float32 accumulation (float16 / bfloat16
    widened on the fly), rows split among threads, reduction in ``LANES`` vector lanes."""
    x = te.placeholder((1, k), dtype, name="x")
    w = te.placeholder((n, k), dtype, name="w")
    kk = te.reduce_axis((0, k), name="kk")
    y = te.compute((1, n), lambda i, r: te.sum(
        x[i, kk].astype("float32") * w[r, kk].astype("float32"), axis=kk), name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, w, y]))
    blk = sch.get_sblock("y")
    _, r, red = sch.get_loops(blk)
    rows = 4 if n % 4 == 0 else 1
    r_outer, _ = sch.split(r, [None, rows])
    sch.parallel(r_outer)
    if k % LANES == 0 and k > LANES:
        _lane_rfactor(sch, "y", red, 2)
    return _private(sch.mod["main"])


def _lane_rfactor(sch: s_tir.Schedule, blk: str, red, depth: int) -> None:
    """Split reduction loop ``red`` into ``LANES`` vector lanes of partial sums (``rfactor``)
    and sum them under the loop at ``depth`` of the nest, so the partial sums live in a
    register-sized buffer. (``rfactor`` keeps the original loops for the partial sums and gives
    the write-back block copies of them, so loops are looked up again afterwards.)"""
    _, lane = sch.split(red, [None, LANES])
    rf = sch.rfactor(lane, 0)
    loops = sch.get_loops(rf)
    sch.vectorize(loops[-1])
    sch.reverse_compute_at(sch.get_sblock(blk), loops[depth])


def _tiled_matmul(func: tirx.PrimFunc, n: int, k: int, dequant_block: str) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("y")
    i, r, red = sch.get_loops(blk)
    rows = TILE_ROWS if n % TILE_ROWS == 0 else 1
    r_outer, r_inner = sch.split(r, [None, rows])
    sch.reorder(r_outer, i, r_inner, red)
    if k % LANES == 0 and k > LANES:
        _lane_rfactor(sch, "y", red, 2)
        r_outer = sch.get_loops(sch.get_sblock("y_rf"))[0]
    sch.parallel(r_outer)
    sch.compute_at(sch.get_sblock(dequant_block), r_outer)
    d_loops = _below(sch, sch.get_sblock(dequant_block), r_outer)
    if k % LANES == 0:
        _, d_lane = sch.split(d_loops[-1], [None, LANES])
        sch.vectorize(d_lane)
    return _private(sch.mod["main"])
