"""The numaplan pipeline on the example model, and the MLC pipeline wrapper."""

from __future__ import annotations

import json
import re

import pytest
import tvm
from tvm import relax

from numaplan.cost import cost_from_slit
from numaplan.model import load_workload
from numaplan.passes import PLAN_FUNC, numaplan_pipeline, register_pipeline, wrap_mlc_pipeline
from numaplan.plan import PlanOptions, make_plan
from numaplan.tiny_llama.build import SIZES
from numaplan.topology import synthetic_topology


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    """The default example at TP=2, its plan on a 2-socket machine, and the compiled VM."""
    from numaplan.model.architecture import parse_architecture
    from numaplan.nn.export import export_model
    from numaplan.tiny_llama.build import build_model_dir

    d = build_model_dir(tmp_path_factory.mktemp("tiny") / "model", size="default")
    topo = synthetic_topology(sockets=2, cores_per_node=2)
    plan = make_plan(load_workload(d), topo, cost_from_slit(topo),
                     PlanOptions(tensor_parallel_shards=2), model_name="tiny").plan
    doc = json.loads((d / "mlc-chat-config.json").read_text())
    mod, _ = export_model(parse_architecture(doc), 2)
    ex = tvm.compile(mod, target="llvm", relax_pipeline=numaplan_pipeline("llvm", plan))
    return plan, mod, ex


def test_two_numaplan_allreduces_per_layer_and_no_disco(tp2):
    _, mod, ex = tp2
    layers = SIZES["default"]["num_hidden_layers"]
    before = mod.script()
    forwards = ("prefill", "decode", "batch_prefill", "batch_decode", "batch_verify")
    assert before.count("R.ccl.allreduce") == 2 * layers * len(forwards)
    text = ex.as_text()
    assert "runtime.disco" not in text
    for fn in forwards:
        body = re.search(rf"@{fn}:(.*?)(?=\n@|\Z)", text, re.S)
        assert body is not None, f"{fn} missing from the executable"
        assert body.group(1).count("numaplan.ccl.allreduce") == 2 * layers


@pytest.fixture
def ccl_names_resolvable():
    """The VM resolves every packed function when it loads; reading the plan needs no worker,
    so functions that refuse to run stand in for numaplan's collective in this process."""
    import tvm_ffi

    def refuse(*_args):
        raise RuntimeError("no numaplan communicator in this test process")

    for op in ("allreduce", "broadcast_from_worker0", "allgather", "scatter_from_worker0"):
        name = f"numaplan.ccl.{op}"
        if tvm.get_global_func(name, allow_missing=True) is None:
            tvm_ffi.register_global_func(name, refuse)


def test_plan_read_back_through_the_vm(tp2, ccl_names_resolvable):
    plan, _, ex = tp2
    vm = relax.VirtualMachine(ex, tvm.cpu())
    assert json.loads(str(vm[PLAN_FUNC]())) == json.loads(plan.to_json())
    assert str(vm[PLAN_FUNC]()) == plan.to_json()


def test_registered_pipeline():
    register_pipeline()
    register_pipeline()  # idempotent
    assert "numaplan" in relax.pipeline.PIPELINE_MAP
    p = relax.get_pipeline("numaplan", target="llvm")
    assert isinstance(p, tvm.transform.Pass)


def test_wrap_mlc_pipeline_against_a_stand_in(tp2):
    plan, mod, _ = tp2
    table = relax.pipeline.PIPELINE_MAP
    seen = []

    def stand_in(target="llvm", **kwargs):
        # Like MLC's: a module pass that legalizes and lowers for the target.
        @tvm.transform.module_pass(opt_level=0, name="StandInMLC")
        def _p(m, _ctx):
            seen.append(m)
            return relax.get_default_pipeline(tvm.target.Target(target))(m)

        return _p

    had = "mlc_llm" in table
    table["mlc_llm"] = stand_in
    try:
        undo = wrap_mlc_pipeline(plan)
        ex = tvm.compile(mod, target="llvm", relax_pipeline=relax.get_pipeline("mlc_llm"))
        assert seen and PLAN_FUNC in [gv.name_hint for gv in seen[0].get_global_vars()]
        assert "R.ccl.allreduce" not in seen[0].script()  # lowered before MLC's passes ran
        assert "numaplan.ccl.allreduce" in ex.as_text()
        undo()
        assert table["mlc_llm"] is stand_in
    finally:
        if had:
            pass
        else:
            table.pop("mlc_llm", None)
