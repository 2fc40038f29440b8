"""Compiler layer: numaplan's TVM Relax passes and the pipeline that runs them.

Importing this package imports tvm.
"""

from numaplan.passes.annotate_numa_plan import PLAN_FUNC, AnnotateNumaPlan, plan_function
from numaplan.passes.lower_collectives import LowerCollectivesToNuma, PassOrderError
from numaplan.passes.pipeline import (
    numa_passes,
    numaplan_pipeline,
    register_pipeline,
    wrap_mlc_pipeline,
)

__all__ = [
    "PLAN_FUNC",
    "AnnotateNumaPlan",
    "LowerCollectivesToNuma",
    "PassOrderError",
    "numa_passes",
    "numaplan_pipeline",
    "plan_function",
    "register_pipeline",
    "wrap_mlc_pipeline",
]
