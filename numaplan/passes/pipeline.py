"""The ``numaplan`` compilation pipeline, and a wrapper for MLC's ``mlc_llm`` pipeline.

``numaplan`` = AnnotateNumaPlan + LowerCollectivesToNuma, then the CPU-relevant subset of MLC's
pipeline built from TVM's own passes: ``FuseTransposeMatmul`` (MLC's phase 1: no transposed
weight copies), TVM's ``relax.backend.cpu_generic`` passes (dispatch, LegalizeOps, FuseOps,
FuseTIR, i.e. ``relax.get_default_pipeline`` for llvm), dlight CPU schedules after fusion
(:mod:`numaplan.passes.schedules`), then dataflow lowering and finalisation. ``tvm.compile``'s
default pipeline does neither fusion nor scheduling.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu

from numaplan.passes.annotate_numa_plan import AnnotateNumaPlan
from numaplan.passes.lower_collectives import LowerCollectivesToNuma
from numaplan.plan.schema import Plan

PIPELINE = "numaplan"
MLC_PIPELINE = "mlc_llm"


def numa_passes(plan: Plan | None) -> list[tvm.transform.Pass]:
    """numaplan's own passes, in order (to insert before any ``LegalizeOps``)."""
    passes: list[tvm.transform.Pass] = []
    if plan is not None:
        passes.append(AnnotateNumaPlan(plan))
    passes.append(LowerCollectivesToNuma(plan))
    return passes


def numaplan_pipeline(target: tvm.target.Target | str | dict = "llvm", plan: Plan | None = None,
                      *, schedule: str | None = "rows", lower_collectives: bool = True
                      ) -> tvm.transform.Pass:
    """The full pipeline for ``target`` with ``plan`` embedded and collectives lowered.

    Parameters
    ----------
    target
        ``"llvm"`` / ``"host"`` means llvm for this machine's CPU (plain ``llvm`` would compile
        for a generic x86-64 without F16C/AVX2); a dict or Target is used as given.
    plan
        The placement plan to embed (``None``: nothing embedded).
    schedule
        dlight rules after fusion: ``"rows"``, ``"dlight"`` or ``None``.
    lower_collectives
        Rewrite ``relax.ccl.*`` into numaplan's CPU collective (off only for single-worker
        builds that should keep TVM's own lowering).
    """
    from tvm.s_tir import dlight as dl

    from numaplan.passes.schedules import cpu_schedule_rules, resolve_target

    target = resolve_target(target)

    @tvm.transform.module_pass(opt_level=0, name="NumaplanPipeline")
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        rules = cpu_schedule_rules(schedule)
        passes: list[tvm.transform.Pass] = []
        if plan is not None:
            passes.append(AnnotateNumaPlan(plan))
        if lower_collectives:
            passes.append(LowerCollectivesToNuma(plan))
        passes.append(relax.transform.FuseTransposeMatmul())
        passes += cpu.library_dispatch_passes(target) + cpu.legalize_passes(target)
        if rules:
            passes.append(dl.ApplyDefaultSchedule(*rules))
        passes += cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def register_pipeline() -> None:
    """Register ``numaplan`` with ``relax.get_pipeline`` (idempotent)."""
    if PIPELINE not in relax.pipeline.PIPELINE_MAP:
        relax.register_pipeline(PIPELINE)(numaplan_pipeline)


def wrap_mlc_pipeline(plan: Plan, *, name: str = MLC_PIPELINE) -> Callable[[], None]:
    """Insert numaplan's passes in front of MLC's registered pipeline, in place.

    ``mlc_llm compile`` fetches its pipeline by name from ``relax.pipeline.PIPELINE_MAP`` inside
    its own ``PassContext``, so wrapping the registered entry is how numaplan's passes get into
    an MLC build: call this before ``mlc_llm compile`` runs (same process). ``register_pipeline``
    refuses duplicates, so the entry is replaced directly.

    Returns
    -------
    callable
        Undo: restores the original entry.

    Raises
    ------
    KeyError
        When no pipeline of that name is registered (MLC not imported).
    """
    table = relax.pipeline.PIPELINE_MAP
    original = table[name]

    def wrapped(*args: Any, **kwargs: Any) -> tvm.transform.Pass:
        inner = original(*args, **kwargs)

        @tvm.transform.module_pass(opt_level=0, name=f"Numaplan+{name}")
        def _pipeline(mod: tvm.ir.IRModule, ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
            return inner(tvm.transform.Sequential(numa_passes(plan))(mod))

        return _pipeline

    table[name] = wrapped

    def undo() -> None:
        table[name] = original

    return undo
