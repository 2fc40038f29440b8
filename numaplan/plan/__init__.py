"""Planning layer: the placement problem, its solvers, the prediction and the plan file.

``numaplan.plan.solver_ilp`` (pulp) is imported only when the MIP runs.
"""

from numaplan.plan.io import PLAN_FILE, plan_from_dict, plan_text, read_plan, write_plan_file
from numaplan.plan.planner import SOLVERS, PlanOptions, PlanReport, make_plan, write_plan
from numaplan.plan.predict import Prediction, lower_bound, predict
from numaplan.plan.problem import PlacementProblem, build_problem
from numaplan.plan.schema import Plan
from numaplan.plan.solution import Solution

__all__ = [
    "PLAN_FILE",
    "SOLVERS",
    "PlacementProblem",
    "Plan",
    "PlanOptions",
    "PlanReport",
    "Prediction",
    "Solution",
    "build_problem",
    "lower_bound",
    "make_plan",
    "plan_from_dict",
    "plan_text",
    "predict",
    "read_plan",
    "write_plan",
    "write_plan_file",
]
