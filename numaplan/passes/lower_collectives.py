"""``LowerCollectivesToNuma``: route Relax collectives to numaplan's CPU collective.

TVM lowers ``relax.ccl.*`` (in ``LegalizeOps``) to ``runtime.disco.<op>``, which dispatches to a
CCL (NCCL/RCCL) that does not exist on CPU. This pass runs first and rewrites every collective
into ``call_dps_packed("numaplan.ccl.<op>", ...)``, the functions ``numaplan.runtime`` registers
in every worker, with the names, codes and signatures of the collective's ABI
(:mod:`numaplan.ccl_abi`). Each call carries:

- a collective id (its order in the function, so a trace names the call site),
- the group (``"tp"``: all tensor-parallel workers; the only group MLC's models use),
- for an all-reduce, the algorithm for the message size from the plan's table
  (:func:`numaplan.ccl_abi.plan_algorithms`, the table the runtime uses too); a message whose
  size is not static (prefill, with a symbolic sequence length) gets ``"by_size"`` and the
  runtime picks from the same table at run time.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, PyExprVisitor, mutator, visitor

from numaplan.ccl_abi import (
    ALLREDUCE,
    BY_SIZE,
    GROUP,
    OP_CODES,
    OPS,
    SCATTER,
    choose_algorithm,
    function_name,
    plan_algorithms,
)
from numaplan.errors import PassOrderError
from numaplan.plan.schema import Plan

# Registered with TVM's FFI error table so that it crosses the pass boundary with its type
# (otherwise it comes back as a ``RuntimeError``).
tvm_ffi.register_error(PassOrderError)


def _itemsize(dtype: str) -> int:
    return max(tvm.runtime.DataType(dtype).bits // 8, 1)


def static_nbytes(ty: relax.TensorType) -> int | None:
    """Bytes of a tensor type with a static shape, else ``None``."""
    shape = getattr(ty, "shape", None)
    values = getattr(getattr(shape, "ty", None), "values", None)
    if values is None:
        return None
    n = 1
    for v in values:
        if not isinstance(v, tvm.tirx.IntImm):
            return None
        n *= int(v.value)
    return n * _itemsize(ty.dtype)


def algorithm_for(plan: Plan | None, nbytes: int | None) -> str:
    """The all-reduce algorithm to compile in for a message of ``nbytes``.

    The plan's table decides (:func:`~numaplan.ccl_abi.choose_algorithm` over
    :func:`~numaplan.ccl_abi.plan_algorithms`: the rule the runtime applies to ``by_size``), so
    the compiled choice and the run-time choice agree for every size. ``by_size`` when there is
    no plan, the plan lists no choices, or the size is not static.
    """
    if plan is None or not plan.collectives.choices or nbytes is None:
        return BY_SIZE
    return choose_algorithm(plan_algorithms(plan), nbytes)


@visitor
class _LegalizedCollectiveFinder(PyExprVisitor):
    """Finds ``runtime.disco.*`` collective calls (collectives already legalized)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def visit_call_(self, call: relax.Call) -> None:
        super().visit_call_(call)
        if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.call_dps_packed":
            target = call.args[0]
            name = getattr(target, "global_symbol", None)
            if isinstance(name, str) and name.startswith("runtime.disco.") and \
                    name.split(".")[-1] in OPS:
                self.found.append(name)


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.ir.IRModule, plan: Plan | None) -> None:
        super().__init__(mod)
        self.plan = plan
        self.counter = 0
        self.rewritten = 0

    def _next_id(self) -> int:
        self.counter += 1
        return self.counter - 1

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or not call.op.name.startswith("relax.ccl."):
            return call
        op = call.op.name.removeprefix("relax.ccl.")
        if op not in OPS:
            raise PassOrderError(f"unsupported collective relax.ccl.{op}")
        x = call.args[0]
        cid = relax.prim_value(self._next_id())
        group = tvm.ir.StringImm(GROUP)
        self.rewritten += 1
        # The argument lists are the ABI's signatures (numaplan.ccl_abi), output last (DPS).
        kind = OPS.index(op)
        if kind == ALLREDUCE:
            code = OP_CODES[str(call.attrs.op_type)]
            algo = algorithm_for(self.plan, static_nbytes(x.ty))
            args = [x, relax.prim_value(code), cid, group, tvm.ir.StringImm(algo)]
        elif kind == SCATTER:
            args = [x, relax.prim_value(int(call.attrs.axis)), cid, group]
        else:  # broadcast from worker 0, all-gather
            args = [x, cid, group]
        return relax.call_dps_packed(function_name(op), args, out_ty=call.ty)


@tvm.transform.module_pass(opt_level=0, name="LowerCollectivesToNuma")
class LowerCollectivesToNuma:
    """Rewrite ``relax.ccl.*`` into calls of numaplan's CPU collective.

    The identity on a module without collectives. Must run before ``LegalizeOps``: a module
    whose collectives were already legalized to ``runtime.disco.*`` is refused with a
    :class:`PassOrderError`, because those calls have lost the structure this pass needs.

    Parameters
    ----------
    plan
        The placement plan (its collective table picks the algorithm per message size);
        ``None`` leaves the choice to the runtime (``"by_size"``).
    """

    def __init__(self, plan: Plan | None = None) -> None:
        self.plan = plan

    def transform_module(self, mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext
                         ) -> tvm.ir.IRModule:
        finder = _LegalizedCollectiveFinder()
        for _, func in mod.functions_items():
            if isinstance(func, relax.Function):
                finder.visit_expr(func)
        if finder.found:
            raise PassOrderError(
                f"LowerCollectivesToNuma must run before LegalizeOps: the module already calls "
                f"{sorted(set(finder.found))}")
        rewriter = _Rewriter(mod, self.plan)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.counter = 0
                new = rewriter.visit_expr(func)
                rewriter.builder_.update_func(gv, new)
        if rewriter.rewritten == 0:
            return mod
        return rewriter.builder_.get()
