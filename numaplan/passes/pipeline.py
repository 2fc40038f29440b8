"""The ``numaplan`` compilation pipeline, and a wrapper for MLC's ``mlc_llm`` pipeline.

``numaplan`` = AnnotateNumaPlan + LowerCollectivesToNuma + TVM's CPU pipeline
(``relax.backend.cpu_generic``: library dispatch, LegalizeOps, fusion) with dlight CPU schedules
(``GEMV``, ``Reduction``) applied after fusion, then the dataflow-lowering and finalize passes.
``tvm.compile``'s default pipeline does neither fusion nor scheduling.
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


def _cpu_schedules() -> list[tvm.transform.Pass]:
    from tvm.s_tir import dlight as dl

    return [dl.ApplyDefaultSchedule(dl.cpu.GEMV(), dl.cpu.Reduction())]


def numaplan_pipeline(target: tvm.target.Target | str = "llvm", plan: Plan | None = None,
                      *, schedule: bool = True) -> tvm.transform.Pass:
    """The full pipeline for ``target`` with ``plan`` embedded and collectives lowered."""
    target = tvm.target.Target(target) if isinstance(target, str) else target

    @tvm.transform.module_pass(opt_level=0, name="NumaplanPipeline")
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                numa_passes(plan)
                + cpu.library_dispatch_passes(target)
                + cpu.legalize_passes(target)
                + (_cpu_schedules() if schedule else [])
                + cpu.dataflow_lower_passes(target)
                + cpu.finalize_passes(target))
            return seq(mod)

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
