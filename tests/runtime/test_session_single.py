"""The runtime with one worker, and the refusals that do not need a collective."""

from __future__ import annotations

import json

import numpy as np
import pytest

from numaplan.errors import PlacementError, StalePlanError
from numaplan.runtime.session import NumaRuntime, RunOptions

pytestmark = pytest.mark.tvm

PROMPT = [5, 17, 99, 3]


def test_tp1_matches_numpy_reference(model_dirs, libraries):
    from numaplan.model.reference import Reference

    d = model_dirs["float32"]
    _, lib = libraries("float32", 1)
    with NumaRuntime(d, lib) as rt:
        res = rt.generate(PROMPT, 6, return_logits=True)
        stats = rt.stats()
        # The workers create the KV cache the plan reserved.
        assert rt._ensure_cache().max_total_seq_len == rt.plan.kv_cache.max_total_seq_len
        plan = rt.plan
    logits, tokens = Reference(d).generate(PROMPT, 5)
    assert list(res.tokens) == tokens
    # float32 weights (bf16-exact), float64 reference: summation order differs only.
    np.testing.assert_allclose(np.array(res.logits), np.array(logits), rtol=1e-4, atol=1e-4)
    w = stats.workers[0]
    assert w.threads_on_planned_cpus and w.weight_bytes > 0
    assert w.weight_bytes_on_planned_node == w.weight_bytes
    assert stats.weight_local_percentage == 100.0
    # --stats sets the plan's prediction next to what was measured (one worker: no collective).
    from numaplan.runtime.compare import compare_prediction, render_prediction_check

    check = compare_prediction(plan, stats)
    assert check.measured_token_s == stats.decode_s_per_step > 0
    assert check.measured_collective_s == 0.0 and check.token_ratio > 0
    assert "prediction vs measurement per token" in render_prediction_check(check)
    # The KV cache (TVM allocates it): its memory found, at least K and V of every layer for
    # the context window, and the pages the generation wrote are resident on node 0.
    from numaplan.tiny_llama.build import SIZES

    s = SIZES["default"]
    kv = s["num_hidden_layers"] * 2 * s["num_key_value_heads"] * s["head_dim"] * 4 * \
        s["context_window_size"]
    assert w.kv_cache is not None and w.kv_mapped_bytes >= kv
    assert 0 < w.kv_bytes == w.kv_bytes_on_planned_node, w.kv_cache
    assert stats.kv_local_percentage == 100.0


def test_plan_file_must_match_library(model_dirs, libraries, tmp_path):
    out, lib = libraries("float32", 1)
    plan = json.loads((out / "numa-plan.json").read_text())
    plan["prediction"]["token_s"] = 1.0
    (tmp_path / "numa-plan.json").write_text(json.dumps(plan))
    with pytest.raises(StalePlanError, match="differs from the plan compiled"):
        NumaRuntime(model_dirs["float32"], lib, plan_path=tmp_path).start()


def test_stale_model_refused_unless_forced(model_dirs, libraries):
    # The q0f16 directory is another index: the f32 library's plan is stale for it.
    _, lib = libraries("float32", 1)
    with pytest.raises(StalePlanError, match="model directory's index differs"):
        NumaRuntime(model_dirs["float16"], lib).start()


def test_plan_for_missing_nodes_refused(model_dirs, tmp_path):
    from numaplan.cli.main import main
    from numaplan.topology import synthetic_topology

    topo = tmp_path / "t.json"
    topo.write_text(synthetic_topology(sockets=2, cores_per_node=1).to_json())
    out = tmp_path / "o"
    d = model_dirs["float32"]
    assert main(["compile", str(d), "--topology", str(topo), "--tp", "2", "-o", str(out)]) == 0
    with pytest.raises(PlacementError, match="node 1, which this machine does not have"):
        NumaRuntime(d, out / f"{d.name}-numa-llvm.so", options=RunOptions(force=True)).start()


def test_audit_reports_misplaced_pages(model_dirs, this_machine):
    """A mocked move_pages answer (every page on node 1) must fail the audit."""
    from numaplan.cost import cost_from_slit
    from numaplan.model import load_workload
    from numaplan.plan import PlanOptions, make_plan
    from numaplan.runtime.loader import check_placement, load_worker_params

    d = model_dirs["float32"]
    wl = load_workload(d)
    plan = make_plan(wl, this_machine, cost_from_slit(this_machine),
                     PlanOptions(tensor_parallel_shards=2), model_name="m").plan
    names = [t.name for t in plan.tensors]
    _, _, good = load_worker_params(d, wl, plan, 1, names)
    assert good.on_planned_fraction == 1.0
    _, _, bad = load_worker_params(d, wl, plan, 1, names,
                                   page_query=lambda pages: np.ones(len(pages), dtype=np.int64))
    assert bad.on_planned_fraction == 0.0 and bad.misplaced
    assert bad.pages_per_node == {1: sum(bad.pages_per_node.values())}
    check_placement(good, strict=True)
    with pytest.raises(PlacementError, match=r"0\.00% of weight bytes on their planned node"):
        check_placement(bad, strict=True)


def test_bad_prompt(model_dirs, libraries):
    from numaplan.errors import NumaplanError, RequestError

    _, lib = libraries("float32", 1)
    with NumaRuntime(model_dirs["float32"], lib) as rt:
        with pytest.raises(NumaplanError, match="prompt ids must be"):
            rt.generate([10**6], 2)
        with pytest.raises(RequestError, match="exceed the model's context window of 512"):
            rt.generate([1], 10**6)
        with pytest.raises(RequestError, match="unknown sequence 7"):
            rt.model.decode([7], [1])
        assert len(rt.generate([1, 2], 3).tokens) == 3  # the session is still usable


def test_strict_placement_refusal_keeps_its_class(model_dirs, libraries, monkeypatch):
    """A worker's PlacementError (strict mode, every page reported on node 1) reaches the
    caller as a PlacementError, not as a generic error, with the worker named once."""
    import numaplan.runtime.worker as worker_mod

    real = worker_mod.load_worker_params

    def misreported(*args, **kwargs):
        kwargs["page_query"] = lambda pages: np.ones(len(pages), dtype=np.int64)
        return real(*args, **kwargs)

    # Worker 0 is a thread of this process: the patched function is the one it calls.
    monkeypatch.setattr(worker_mod, "load_worker_params", misreported)
    _, lib = libraries("float32", 1)
    rt = NumaRuntime(model_dirs["float32"], lib, options=RunOptions(strict_placement=True))
    try:
        with pytest.raises(PlacementError, match=r"^worker 0: 0\.00% of weight bytes") as info:
            rt.start()
        assert "worker 0: worker 0" not in str(info.value)
    finally:
        rt.close()


def test_bfloat16_parameters_reach_the_vm_as_bfloat16():
    """The loader holds bf16 as uint16 bits; the VM gets bfloat16 views of the same memory."""
    import mmap

    from numaplan.runtime.worker import vm_tensors

    m = mmap.mmap(-1, 8192)  # page-aligned, as the loader's memory (DLPack wants 64 B)
    bits = np.frombuffer(m, dtype=np.uint16)[:6].reshape(2, 3)
    bits[:] = [[0x3F80, 0x4000, 0xBF80], [0, 0x4040, 0x3F00]]  # 1, 2, -1, 0, 3, 0.5
    f32 = np.frombuffer(m, dtype=np.float32)[1024:1026]  # the second page
    f32[:] = [1.5, -2.0]
    bf, plain = vm_tensors([bits, f32], ["bfloat16", "float32"])
    assert str(bf.dtype) == "bfloat16" and tuple(bf.shape) == (2, 3)
    assert str(plain.dtype) == "float32"
    # Same memory, no copy: the bits read back through the view are the loader's.
    np.testing.assert_array_equal(np.asarray(bf.numpy()).view(np.uint16), bits)
    bits[0, 0] = 0x4080  # 4.0
    assert int(np.asarray(bf.numpy()).view(np.uint16)[0, 0]) == 0x4080
    with pytest.raises(ValueError, match="expected uint16 bits"):
        vm_tensors([f32], ["bfloat16"])
    del bf, plain, bits, f32


def test_refused_kernel_calls_downgrade_and_are_reported(model_dirs, libraries, fake_numa):
    """Issue 14 4b: every NUMA call refused (EPERM). With --allow-fallback the run goes on and
    each downgrade is a named event in the stats and in --stats: the memory policy, reading it
    back (before: get_mempolicy failed the setup), the weights' mbind (before: dropped) and
    their move_pages audit (before: failed the load). Without it the first refusal stops the
    run in one line."""
    from numaplan.cli.run import render_stats

    fake_numa(nodes=(0,), refuse={"mbind", "set_mempolicy", "get_mempolicy", "move_pages"})
    d = model_dirs["float32"]
    _, lib = libraries("float32", 1)
    with NumaRuntime(d, lib, options=RunOptions(allow_fallback=True)) as rt:
        rt.generate(PROMPT, 2)
        stats = rt.stats()
    calls = {(d.call, d.fallback) for d in stats.downgrades}
    assert any("KV cache" in d.what for d in stats.downgrades)
    assert {("set_mempolicy", "no policy (first touch)"),
            ("get_mempolicy", "reported as unknown"), ("mbind", "no policy (first touch)"),
            ("move_pages", "not audited")} <= calls
    assert all(d.errno == "EPERM" for d in stats.downgrades)
    text = render_stats(stats, lib.name)
    assert "downgrade: weights of worker 0" not in text  # the policy is named first
    assert "downgrade: bind to node 0: weights of worker 0: mbind refused (EPERM)" in text
    assert f"placement downgrades (--allow-fallback): {len(stats.downgrades)}" in text
    with pytest.raises(PlacementError, match=r"^worker 0: set_mempolicy failed \(EPERM"):
        NumaRuntime(d, lib).start()
