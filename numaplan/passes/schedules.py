"""CPU schedules and targets for the ``numaplan`` pipeline.

Decode on a CPU is a chain of matrix-vector products over the weights, so what matters is that
every weight is read once, contiguously, by all the node's threads. dlight's stock ``cpu.GEMV``
vectorises across 128 output rows (a gather from 128 weight rows) and fully unrolls the
reduction (about 50 s of LLVM time on the example model, for a 1.5x gain); the rules here keep
dlight's matching and normalisation and schedule the way a bandwidth-bound CPU wants.
"""

from __future__ import annotations

from typing import Any

import tvm


def host_target(**options: Any) -> tvm.target.Target:
    """An ``llvm`` target for this machine's CPU (``mcpu`` from LLVM's host detection).

    Plain ``"llvm"`` compiles for a generic x86-64 without F16C/AVX2: every float16 operation
    then goes through a software conversion and the q0f16 model runs ~60x slower (and TVM
    0.27 does not resolve ``mcpu="native"``). ``options`` are added to the target dict, e.g.
    ``num-cores``.
    """
    from tvm.target import codegen

    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), **options})


def resolve_target(target: str | dict | tvm.target.Target) -> tvm.target.Target:
    """``"llvm"`` or ``"host"`` -> :func:`host_target`; anything else as TVM reads it."""
    if isinstance(target, tvm.target.Target):
        return target
    if target in ("llvm", "host"):
        return host_target()
    return tvm.target.Target(target)


_LANES = 16  # vector lanes of the reduction (contiguous along a weight row)


def _vectorized_rfactor(sch, block, reduce_loop, under) -> bool:
    """Split ``reduce_loop`` into ``[None, _LANES]``, ``rfactor`` the lanes, place the partial
    sums under loop ``under`` and vectorise them over contiguous weight memory. False (and the
    schedule untouched) when the reduction extent is not a static multiple of the lanes."""
    from tvm.s_tir.dlight.base import get_extent

    extent = get_extent(sch, reduce_loop)
    if not isinstance(extent, int) or extent % _LANES or extent <= _LANES:
        return False
    _, lane = sch.split(reduce_loop, factors=[None, _LANES])
    rf = sch.rfactor(lane, 0)
    sch.compute_at(rf, under)
    loops = sch.get_loops(rf)
    anchor = sch.get_sref(under)
    n_outer = 1 + next(p for p, loop in enumerate(loops) if sch.get_sref(loop).same_as(anchor))
    rf_lane, *rest = loops[n_outer:]
    sch.reorder(*rest, rf_lane)
    sch.vectorize(rf_lane)
    return True


def row_gemv_rule():
    """A dlight rule for decode's matrix-vector products ``y[s] = sum_r x[r] * W[s, r]``.

    dlight's stock ``cpu.GEMV`` vectorises 128 *output rows* (a gather from 128 rows of the
    row-major weight) and fully unrolls the reduction: on the default model that took ~50 s of
    LLVM time for a ~1.5x gain. This rule keeps dlight's matching and normalisation and
    schedules the way a bandwidth-bound CPU GEMV wants: threads split the rows (4 rows a task),
    each row is reduced in 16 vector lanes over contiguous weight memory (``rfactor``), then the
    lanes are summed; an elementwise epilogue (residual add, cast) runs in the same task.
    """
    from tvm.s_tir import dlight as dl

    class RowParallelGEMV(dl.cpu.GEMV):
        rows_per_task = 4

        def sch_inner_reduction(self, sch, target, block, vector_input_buffers,
                                epilogue_info):
            batch, s, r, c = sch.get_loops(block)
            r = sch.fuse(r, c)
            s_outer, _ = sch.split(s, factors=[None, self.rows_per_task])
            outer = sch.fuse(batch, s_outer)
            sch.parallel(outer)
            _vectorized_rfactor(sch, block, r, outer)
            if epilogue_info is not None:
                sch.reverse_compute_at(epilogue_info.block_rv, outer)
            return sch

    return RowParallelGEMV()


def row_matmul_rule():
    """A dlight rule for prefill's ``Y[b, i, j] = sum_k X[b, i, k] * W[j, k]`` (``i`` = tokens,
    symbolic): threads split the weight rows ``j`` (8 a task) and every task streams its rows
    once for all tokens, reducing in vector lanes as the GEMV rule does. It matches any
    ``S...S R`` block (at least two spatial loops) with static ``j`` and ``k``; a schedule
    never changes results, so a loose match can only cost speed."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import get_extent, try_inline_contiguous_spatial
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

    class RowParallelMatmul(CPUScheduleRule):
        rows_per_task = 8

        def apply(self, func, target, _tunable):
            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            infos = normalize_prim_func(sch)
            if infos is None:
                return None
            infos = try_inline_contiguous_spatial(sch, infos)
            if infos is None or len(infos) not in (1, 2):
                return None
            if len(infos) == 2 and not infos[1].is_injective():
                return None
            main = infos[0]
            kinds = "".join(it.kind for it in main.iters)
            if len(kinds) < 3 or kinds != "S" * (len(kinds) - 1) + "R":
                return None
            block = main.block_rv
            *rest, j, k = sch.get_loops(block)
            if not isinstance(get_extent(sch, j), int) or not isinstance(get_extent(sch, k), int):
                return None
            j_outer, j_inner = sch.split(j, factors=[None, self.rows_per_task])
            sch.reorder(j_outer, *rest, j_inner, k)
            sch.parallel(j_outer)
            _vectorized_rfactor(sch, block, k, rest[-1])
            if len(infos) == 2:
                sch.reverse_compute_at(infos[1].block_rv, rest[-1])
            return sch

    return RowParallelMatmul()


def cpu_schedule_rules(kind: str | None = "rows") -> list:
    """dlight rules: ``"rows"`` (the row-parallel GEMV and matmul here), ``"dlight"`` (dlight's
    stock ``cpu.GEMV``, as MLC uses on llvm) or ``None`` (no schedule)."""
    from tvm.s_tir import dlight as dl

    if kind == "rows":
        return [row_gemv_rule(), row_matmul_rule()]
    if kind == "dlight":
        return [dl.cpu.GEMV()]
    if kind is None:
        return []
    raise ValueError(f"unknown schedule kind {kind!r}")
