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

``q4_matmul`` (several tokens: prefill, batched decode) dequantizes a block of rows into a
float32 tile once and reuses it for every token; ``dense_gemv`` widens float16 / bfloat16 on the
fly with float32 accumulation.

The design (and the measurements behind it) is written up in ``docs/kernels.md``.
"""

from __future__ import annotations

from functools import cache

from tvm import s_tir, te, tirx

#: Tokens below which a product is a decode GEMV (static shape) rather than a matmul.
Q4_PER_WORD = 8
GROUP = 32
ROWS_PER_TASK = 2
TILE_ROWS = 8
LANES = 16


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
