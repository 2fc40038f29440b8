"""The compiled example against the numpy reference, its `_metadata`, its TP IR, its decode."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from examples.tiny_llama.reference import LlamaReference
from numaplan.tiny_llama.config import SIZES

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from examples.tiny_llama.compile import VMRunner, read_metadata  # noqa: E402
from numaplan.tiny_llama.model import build_ir_module, export_model  # noqa: E402

pytestmark = pytest.mark.tvm

DEFAULT = SIZES["default"]
#: q0f32 must match the float64 reference this closely (measured max error ~3e-6 on logits
#: of magnitude ~4): this is the model every TP test compares against.
F32_TOL = {"rtol": 1e-4, "atol": 1e-4}
#: q0f16 computes in float16 like MLC (measured max error ~2e-2).
F16_TOL = {"rtol": 2e-2, "atol": 6e-2}
PROMPT = [7, 300, 41, 511, 2, 99, 123, 64, 5]
DECODE_STEPS = 6


def _ops(func) -> Counter:
    names: Counter = Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            names[expr.op.name] += 1

    relax.analysis.post_order_visit(func.body, visit)
    return names


@pytest.mark.parametrize(("dtype", "tol"), [("float32", F32_TOL), ("float16", F16_TOL)])
def test_tp1_matches_numpy_reference(compiled, model_dirs, dtype, tol):
    """Prefill logits and DECODE_STEPS greedy decode steps, through the Relax VM on CPU."""
    c = compiled[dtype]
    runner = VMRunner(c.vm, c.params, max_seq_len=64)
    logits, tokens = runner.generate(PROMPT, DECODE_STEPS)
    ref = LlamaReference.from_model_dir(model_dirs[dtype])
    ref_logits, ref_tokens = ref.generate(PROMPT, DECODE_STEPS)
    assert len(logits) == DECODE_STEPS + 1
    for step, (got, want) in enumerate(zip(logits, ref_logits, strict=True)):
        assert got.dtype == np.float32 and got.shape == (DEFAULT.vocab_size,)
        np.testing.assert_allclose(got, want, **tol, err_msg=f"step {step}")
    if dtype == "float32":
        assert tokens == ref_tokens
    print(f"\n{dtype}: compile {c.compile_s:.2f} s, max |logit error| "
          f"{max(np.abs(g - w).max() for g, w in zip(logits, ref_logits, strict=True)):.2e}")


def test_decode_is_incremental_and_in_place(compiled):
    """Decode after prefill equals prefill of the longer prompt, and it updates the cache
    buffer it was given (no copy of the cache)."""
    c = compiled["float32"]
    runner = VMRunner(c.vm, c.params, max_seq_len=32)
    runner.prefill(PROMPT[:4])
    cache = runner.kv_cache
    before = cache.numpy()
    assert np.abs(before[:, :, :4]).max() > 0 and not before[:, :, 4:].any()
    step = runner.decode(PROMPT[4])
    after = cache.numpy()  # the tensor passed in was written: row 4 of every layer
    assert np.abs(after[:, :, 4]).max() > 0 and not after[:, :, 5:].any()
    np.testing.assert_array_equal(after[:, :, :4], before[:, :, :4])
    fresh = VMRunner(c.vm, c.params, max_seq_len=32)
    np.testing.assert_allclose(step, fresh.prefill(PROMPT[:5]), rtol=1e-5, atol=1e-5)


def test_decode_work_does_not_depend_on_the_prefix():
    """Structure of `decode`: every intermediate has a static shape (one token), except the
    KV cache that the in-place append returns; the prefix length `pos` reaches only the
    RoPE / append / attention kernels as a scalar."""
    mod, _ = export_model(DEFAULT, "q0f32", 1)
    decode = mod["decode"]
    pos = decode.params[2]
    assert str(pos.ty) == "R.Shape([pos])"
    for binding in decode.body.blocks[0].bindings:
        ty = binding.var.ty
        shape = getattr(ty, "shape", None)
        if shape is None or not hasattr(shape, "values"):
            continue
        dims = list(shape.values)
        if all(isinstance(d, tvm.tirx.IntImm) for d in dims):
            if isinstance(binding.value, relax.Call) and binding.value.op.name == "relax.matmul":
                assert [int(d) for d in dims[:2]] == [1, 1]  # one token through every linear
            continue
        # Only the cache carries a symbolic dimension, and only as the in-place result.
        assert binding.value.op.name == "relax.call_tir_inplace", binding.var.name_hint
        assert [d.name if isinstance(d, tvm.tirx.Var) else int(d) for d in dims] == [
            DEFAULT.num_hidden_layers, 2, "max_seq_len", DEFAULT.num_key_value_heads,
            DEFAULT.head_dim]
    ops = _ops(decode)
    assert ops["relax.call_tir_inplace"] == DEFAULT.num_hidden_layers  # one append per layer
    assert ops["relax.matmul"] == 4 * DEFAULT.num_hidden_layers + 1
    # prefill, by contrast, is symbolic in the prompt length
    seq = mod["prefill"].params[0].ty.shape.values[1]
    assert isinstance(seq, tvm.tirx.Var) and seq.name == "seq_len"


@pytest.mark.parametrize("num_shards", [1, 2, 4])
def test_two_allreduces_per_layer_before_legalization(num_shards):
    mod, named = export_model(DEFAULT, "q0f32", num_shards)
    want = 2 * DEFAULT.num_hidden_layers if num_shards > 1 else 0
    for fn in ("prefill", "decode"):
        ops = _ops(mod[fn])
        assert ops["relax.ccl.allreduce"] == want, fn
    assert _ops(mod["embed"])["relax.ccl.allreduce"] == 0
    text = mod["decode"].script()
    assert text.count('R.ccl.allreduce(') == want
    if num_shards > 1:
        assert 'op_type="sum"' in text
    # per-shard module sizes
    shapes = {name: tuple(int(s) for s in p.shape) for name, p in named}
    assert shapes == DEFAULT.param_shapes(num_shards)


def test_metadata_read_back_through_the_vm(compiled_tp2):
    """`_metadata` of the TP=2 module: MLC keys, per-shard kv heads and param shapes, packed
    order (the tuple the VM functions take)."""
    meta = read_metadata(compiled_tp2.vm)
    assert json.loads(compiled_tp2.vm["_metadata"]()) == meta
    assert meta["model_type"] == "llama" and meta["quantization"] == "q0f32"
    assert meta["tensor_parallel_shards"] == 2
    assert meta["context_window_size"] == DEFAULT.context_window_size
    assert meta["kv_cache"] == {
        "num_hidden_layers": DEFAULT.num_hidden_layers,
        "num_attention_heads": DEFAULT.num_attention_heads // 2,
        "num_key_value_heads": DEFAULT.num_key_value_heads // 2,
        "head_dim": DEFAULT.head_dim,
        "layout": "[num_hidden_layers, 2, max_seq_len, num_key_value_heads, head_dim]",
        "dtype": "float32"}
    params = meta["params"]
    assert [p["name"] for p in params] == DEFAULT.param_names()
    assert [tuple(p["shape"]) for p in params] == list(DEFAULT.param_shapes(2).values())
    assert {p["dtype"] for p in params} == {"float32"}
    assert [(p["name"], tuple(p["shape"]), p["dtype"]) for p in params] == compiled_tp2.order
    # The packed tuple of `decode` has exactly these shapes, in this order.
    packed = compiled_tp2.mod["decode"].params[-1].ty.fields
    assert [tuple(int(d) for d in f.shape.values) for f in packed] == [
        tuple(p["shape"]) for p in params]


def test_exported_library_reloads(compiled, tmp_path):
    """The executable exports to a shared library that loads and runs like the in-memory one
    (what `numaplan compile` ships)."""
    c = compiled["float32"]
    path = tmp_path / "tiny_llama_tp1.so"
    c.executable.export_library(str(path))
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    assert read_metadata(vm)["tensor_parallel_shards"] == 1
    got = VMRunner(vm, c.params, max_seq_len=16).prefill(PROMPT[:3])
    want = VMRunner(c.vm, c.params, max_seq_len=16).prefill(PROMPT[:3])
    np.testing.assert_array_equal(got, want)
    print(f"\nlibrary {path.stat().st_size / 1e6:.2f} MB")


def test_build_ir_module_needs_the_quantization():
    with pytest.raises(ValueError, match="quantization"):
        build_ir_module(DEFAULT.to_dict(), 1)
    with pytest.raises(ValueError, match="not supported"):
        build_ir_module({"quantization": "q4f16_1", "model_config": DEFAULT.to_dict()}, 1)
