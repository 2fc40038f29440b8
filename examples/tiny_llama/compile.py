"""Compile the example's Relax module for CPU and drive it through the Relax VM.

``compile_model`` uses the CPU-relevant subset of MLC's ``mlc_llm`` pipeline on ``llvm``
targets, built from TVM's own passes: ``FuseTransposeMatmul`` (MLC's phase 1, upstream in TVM),
TVM's ``relax.backend.cpu_generic`` passes (dispatch, ``LegalizeOps``, ``FuseOps``, ``FuseTIR``,
dataflow lowering, finalisation; i.e. ``relax.get_default_pipeline(llvm)``) and, after fusion,
dlight schedules (MLC's phase 4; MLC uses dlight's ``cpu.GEMV`` on llvm). The default uses this
module's own row-parallel GEMV / matmul rules instead of ``cpu.GEMV``, which compiles ~20x
slower and vectorises across weight rows; ``pipeline="dlight"`` selects it anyway. Decode's
matrix-vector products then read each weight once, in parallel on TVM's thread pool.
``pipeline="fused"`` has no schedule and ``pipeline="build"`` is ``tvm.compile``'s plain
default (no fusion: every weight is transposed on every call).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

#: ``pipeline`` name -> GEMV schedule of :func:`cpu_pipeline` (``"build"``: ``tvm.compile``'s
#: own default, no fusion at all).
PIPELINES = {"default": "rows", "dlight": "dlight", "fused": None, "build": None}


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


def _row_gemv_rule():
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


def _row_matmul_rule():
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


def cpu_pipeline(target: tvm.target.Target, *, gemv: str | None = "rows"
                 ) -> tvm.transform.Pass:
    """TVM's CPU default pipeline preceded by ``FuseTransposeMatmul``, with a dlight GEMV
    schedule after fusion: ``gemv="rows"`` (this module's row-parallel rule), ``"dlight"``
    (dlight's stock ``cpu.GEMV``, as MLC) or ``None``."""
    from tvm.s_tir import dlight as dl

    rules = {"rows": lambda: [_row_gemv_rule(), _row_matmul_rule()],
             "dlight": lambda: [dl.cpu.GEMV()], None: list}[gemv]

    @tvm.transform.module_pass(opt_level=0, name="tiny_llama_cpu_pipeline")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        # MLC phase 1: permute_dims(W) + matmul -> one NT_matmul kernel, so that no transposed
        # copy of a weight is materialised and dlight sees a plain GEMV.
        passes = [relax.transform.FuseTransposeMatmul()]
        passes += (cpu_generic.library_dispatch_passes(target)
                   + cpu_generic.legalize_passes(target))
        schedules = rules()
        if schedules:
            passes.append(dl.ApplyDefaultSchedule(*schedules))
        passes += (cpu_generic.dataflow_lower_passes(target)
                   + cpu_generic.finalize_passes(target))
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def compile_model_timed(mod: tvm.IRModule, target: str | dict | tvm.target.Target = "llvm", *,
                        pipeline: str = "default",
                        pre_passes: Sequence[tvm.transform.Pass] = ()
                        ) -> tuple[relax.VMExecutable, float]:
    """:func:`compile_model` and the wall-clock seconds it took."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; known: {', '.join(PIPELINES)}")
    tgt = resolve_target(target)
    start = time.perf_counter()
    if pre_passes:
        with tgt:
            mod = tvm.transform.Sequential(list(pre_passes))(mod)
    if pipeline == "build":
        ex = tvm.compile(mod, tgt)
    else:
        ex = tvm.compile(mod, tgt, relax_pipeline=cpu_pipeline(tgt, gemv=PIPELINES[pipeline]))
    return ex, time.perf_counter() - start


def compile_model(mod: tvm.IRModule, target: str | dict | tvm.target.Target = "llvm", *,
                  pipeline: str = "default",
                  pre_passes: Sequence[tvm.transform.Pass] = ()) -> relax.VMExecutable:
    """Compile ``mod`` (e.g. from :func:`examples.tiny_llama.model.build_ir_module`) for CPU.

    Parameters
    ----------
    mod
        The Relax module. A TP > 1 module still holds ``R.ccl.allreduce``; it compiles (into
        ``runtime.disco.allreduce`` calls), but only runs inside Disco workers with a
        collective, or after a pass in ``pre_passes`` rewrote the collectives.
    target
        ``"llvm"`` / ``"host"`` (default): :func:`host_target`, i.e. llvm for this machine's
        CPU; or any TVM 0.27 target (a dict such as ``{"kind": "llvm", "mcpu": "skylake-avx512",
        "num-cores": 16}``, or a ``Target``), used as given.
    pipeline
        ``"default"``: ``FuseTransposeMatmul`` + TVM's CPU pipeline with fusion + the
        row-parallel GEMV schedule; ``"dlight"``: the same with dlight's stock ``cpu.GEMV``
        (MLC's choice; ~20x longer to compile); ``"fused"``: no GEMV schedule; ``"build"``:
        ``tvm.compile``'s plain default (no fusion: every weight is transposed on every call).
    pre_passes
        Relax passes run first, before ``LegalizeOps`` (e.g. numaplan's collective rewrite).

    Returns
    -------
    relax.VMExecutable
        Load with ``relax.VirtualMachine(ex, tvm.cpu())`` or ``ex.export_library(path)``.
    """
    return compile_model_timed(mod, target, pipeline=pipeline, pre_passes=pre_passes)[0]


def to_device(arrays: Sequence[np.ndarray], device: tvm.runtime.Device | None = None
              ) -> list[tvm.runtime.Tensor]:
    """numpy arrays as TVM tensors (the packed params a VM function takes)."""
    device = device or tvm.cpu()
    return [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in arrays]


def read_metadata(vm: relax.VirtualMachine) -> dict[str, Any]:
    """The parsed ``_metadata`` JSON of a loaded model."""
    return json.loads(str(vm["_metadata"]()))


class VMRunner:
    """Greedy single-sequence driver of the compiled example on one VM (TP = 1).

    Parameters
    ----------
    vm
        ``relax.VirtualMachine`` of the compiled module.
    params
        The packed params (TVM tensors or numpy arrays) in ``_metadata["params"]`` order.
    max_seq_len
        KV-cache rows to allocate (default: the model's ``context_window_size``).
    """

    def __init__(self, vm: relax.VirtualMachine, params: Sequence[Any],
                 max_seq_len: int | None = None, device: tvm.runtime.Device | None = None):
        self.vm = vm
        self.device = device or tvm.cpu()
        self.metadata = read_metadata(vm)
        self.params = [p if isinstance(p, tvm.runtime.Tensor) else
                       tvm.runtime.tensor(np.ascontiguousarray(p), self.device) for p in params]
        self.max_seq_len = max_seq_len or self.metadata["context_window_size"]
        self.kv_cache = vm["create_kv_cache"](tvm.runtime.ShapeTuple([self.max_seq_len]))
        self.pos = 0

    def _ids(self, ids: Sequence[int]) -> tvm.runtime.Tensor:
        arr = np.asarray(ids, dtype=np.int64)
        vocab = self.metadata["active_vocab_size"]
        if arr.ndim != 1 or not arr.size or arr.min() < 0 or arr.max() >= vocab:
            # TVM's embedding `take` does not check bounds (it would read out of range).
            raise ValueError(f"token ids must be a non-empty list in [0, {vocab})")
        return tvm.runtime.tensor(arr.astype(np.int32), self.device)

    def embed(self, ids: Sequence[int]) -> tvm.runtime.Tensor:
        """``[n, hidden]`` embeddings."""
        return self.vm["embed"](self._ids(ids), self.params)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """New sequence; logits ``[vocab]`` (float32) of its last token."""
        if len(ids) > self.max_seq_len:
            raise ValueError(f"{len(ids)} tokens do not fit a {self.max_seq_len}-row KV cache")
        hidden = self.embed(ids).numpy()[None]
        logits, self.kv_cache = self.vm["prefill"](tvm.runtime.tensor(hidden, self.device),
                                                   self.kv_cache, self.params)
        self.pos = len(ids)
        return logits.numpy()[0, -1]

    def decode(self, token: int) -> np.ndarray:
        """Append one token at position ``pos``; its logits ``[vocab]``."""
        if self.pos >= self.max_seq_len:
            raise ValueError(f"the KV cache is full ({self.max_seq_len} rows)")
        hidden = self.embed([token]).numpy()[None]
        logits, self.kv_cache = self.vm["decode"](
            tvm.runtime.tensor(hidden, self.device), self.kv_cache,
            tvm.runtime.ShapeTuple([self.pos]), self.params)
        self.pos += 1
        return logits.numpy()[0, -1]

    def generate(self, ids: Sequence[int], steps: int) -> tuple[list[np.ndarray], list[int]]:
        """Greedy: prefill then ``steps`` decodes; every step's logits and the argmax tokens."""
        logits = [self.prefill(ids)]
        tokens = [int(np.argmax(logits[-1]))]
        for _ in range(steps):
            logits.append(self.decode(tokens[-1]))
            tokens.append(int(np.argmax(logits[-1])))
        return logits, tokens
