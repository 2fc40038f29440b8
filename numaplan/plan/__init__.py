"""Planning layer: the placement problem, its solvers, the prediction and the plan file.

The names below are loaded on first use (PEP 562): a runtime worker that only reads a plan
(``numaplan.plan.io``, ``numaplan.plan.schema``) does not import the planner, networkx or the
solvers. ``numaplan.plan.solver_ilp`` (pulp) is imported only when the MIP runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from numaplan.plan.io import PLAN_FILE, plan_from_dict, read_plan, write_plan_file
    from numaplan.plan.planner import (
        SOLVERS,
        PlanOptions,
        PlanReport,
        PlanResult,
        make_plan,
        write_plan,
    )
    from numaplan.plan.problem import PlacementProblem, build_problem
    from numaplan.plan.schema import Plan, plan_text
    from numaplan.plan.settings import PlanSettings, default_tp, resolve_settings
    from numaplan.plan.solution import Solution

# ``predict`` names a submodule and a function: bind the function now (importing the submodule
# later would otherwise leave the module under that name). It is light: no solver, no networkx.
from numaplan.plan.predict import Prediction, lower_bound, predict

_WHERE = {
    "PLAN_FILE": "io", "plan_from_dict": "io", "read_plan": "io",
    "write_plan_file": "io",
    "SOLVERS": "planner", "PlanOptions": "planner", "PlanReport": "planner",
    "PlanResult": "planner", "make_plan": "planner", "write_plan": "planner",
    "PlacementProblem": "problem", "build_problem": "problem",
    "Plan": "schema", "plan_text": "schema",
    "PlanSettings": "settings", "default_tp": "settings", "resolve_settings": "settings",
    "Solution": "solution",
}

__all__ = [
    "PLAN_FILE",
    "SOLVERS",
    "PlacementProblem",
    "Plan",
    "PlanOptions",
    "PlanReport",
    "PlanResult",
    "PlanSettings",
    "Prediction",
    "Solution",
    "build_problem",
    "default_tp",
    "lower_bound",
    "make_plan",
    "plan_from_dict",
    "plan_text",
    "predict",
    "read_plan",
    "resolve_settings",
    "write_plan",
    "write_plan_file",
]


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
