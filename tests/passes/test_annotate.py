"""AnnotateNumaPlan: Before/Expected, idempotence, and the plan read back from a compiled VM."""

from __future__ import annotations

import json
from pathlib import Path

import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from numaplan.passes import AnnotateNumaPlan
from numaplan.plan import plan_from_dict

PLAN = plan_from_dict(json.loads(
    (Path(__file__).resolve().parents[1] / "golden" / "2s1n.plan.json").read_text()))
TEXT = PLAN.to_json()
DIGEST = PLAN.digest()
NODES = [w.node_id for w in PLAN.workers]
ROLES = {t.name: t.role for t in PLAN.tensors}


@I.ir_module
class Before:
    @R.function
    def decode(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "float32"):
        with R.dataflow():
            y = R.add(x, x)
            R.output(y)
        return y


@I.ir_module
class Expected:
    I.module_attrs({"numaplan.plan_digest": DIGEST})

    @R.function
    def decode(x: R.Tensor((1, 4), "float32")) -> R.Tensor((1, 4), "float32"):
        R.func_attr({"numaplan.plan_digest": DIGEST, "numaplan.worker_nodes": NODES,
                     "numaplan.param_roles": ROLES})
        with R.dataflow():
            y = R.add(x, x)
            R.output(y)
        return y

    @R.function
    def _numaplan_plan() -> I.StringType():
        return R.str(TEXT)


def test_annotate_matches_expected():
    tvm.ir.assert_structural_equal(AnnotateNumaPlan(PLAN)(Before), Expected)


def test_idempotent():
    once = AnnotateNumaPlan(PLAN)(Before)
    tvm.ir.assert_structural_equal(AnnotateNumaPlan(PLAN)(once), once)


def test_plan_survives_compile_and_export(tmp_path):
    mod = AnnotateNumaPlan(PLAN)(Before)
    ex = tvm.compile(mod, target="llvm")
    path = tmp_path / "lib.so"
    ex.export_library(str(path))
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    assert str(vm["_numaplan_plan"]()) == TEXT
    assert plan_from_dict(json.loads(str(vm["_numaplan_plan"]()))) == PLAN
