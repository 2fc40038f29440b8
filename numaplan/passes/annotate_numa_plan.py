"""``AnnotateNumaPlan``: put the placement plan into the Relax module.

Function and module attributes carry the plan through the compiler (passes after this one can
read ``numaplan.*`` attributes), but attributes do not survive ``tvm.compile``. What the runtime
needs therefore also travels as a Relax function, ``_numaplan_plan``, that takes no argument and
returns the plan JSON as a string, the pattern MLC uses for ``_metadata``.
"""

from __future__ import annotations

import tvm
from tvm import relax

from numaplan.plan.schema import Plan

PLAN_FUNC = "_numaplan_plan"
ATTR_DIGEST = "numaplan.plan_digest"
ATTR_WORKER_NODES = "numaplan.worker_nodes"
ATTR_PARAM_ROLES = "numaplan.param_roles"


def plan_function(plan_json: str) -> relax.Function:
    """A zero-argument Relax function returning ``plan_json``."""
    bb = relax.BlockBuilder()
    with bb.function(PLAN_FUNC, params=[]):
        bb.emit_func_output(tvm.ir.StringImm(plan_json))
    return bb.get()[PLAN_FUNC].with_attr("global_symbol", PLAN_FUNC)


@tvm.transform.module_pass(opt_level=0, name="AnnotateNumaPlan")
class AnnotateNumaPlan:
    """Attach a placement plan to every model function and embed it for the runtime.

    Adds, to every Relax function already in the module: ``numaplan.plan_digest`` (sha256 of
    the plan file), ``numaplan.worker_nodes`` (the node of worker 0..W-1) and
    ``numaplan.param_roles`` (tensor name -> role); a module attribute ``numaplan.plan_digest``;
    and the function ``_numaplan_plan() -> str`` returning the plan JSON.

    Run it before ``LegalizeOps`` (any point works for the attributes, but the plan function
    must be added before ``VMShapeLower`` turns Relax functions into VM code). Running it twice
    with the same plan changes nothing.

    Parameters
    ----------
    plan
        The placement plan.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def transform_module(self, mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext
                         ) -> tvm.ir.IRModule:
        text = self.plan.to_json()
        digest = self.plan.digest()
        nodes = [w.node_id for w in self.plan.workers]
        roles = {t.name: t.role for t in self.plan.tensors}
        out = tvm.ir.IRModule({}, attrs=mod.attrs)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function) and gv.name_hint != PLAN_FUNC:
                func = func.with_attrs({ATTR_DIGEST: digest, ATTR_WORKER_NODES: nodes,
                                        ATTR_PARAM_ROLES: roles})
            if gv.name_hint != PLAN_FUNC:
                out[gv] = func
        out[PLAN_FUNC] = plan_function(text)
        return out.with_attr(ATTR_DIGEST, digest)
