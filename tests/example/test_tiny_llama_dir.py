"""The example's MLC model directory: MLC's files, TVM's loader, numaplan's workload layer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from examples.tiny_llama.reference import load_full_weights, load_shard_params
from numaplan.model import (
    Role,
    load_workload,
    slice_shard,
    valid_tp_degrees,
    validate_tp,
)
from numaplan.tiny_llama.build import BUILDER, NUMAPLAN_MODEL_NAME, bf16_round, generate_weights
from numaplan.tiny_llama.config import SIZES, LlamaConfig

pytestmark = pytest.mark.tvm  # the directories are written by tvm.contrib.tvmjs

DEFAULT = SIZES["default"]
QUANT = {"float32": "q0f32", "float16": "q0f16"}


def test_files_are_an_mlc_directory(model_dirs):
    for dtype, path in model_dirs.items():
        names = {p.name for p in path.iterdir()}
        assert {"mlc-chat-config.json", "tensor-cache.json", "params_shard_0.bin",
                NUMAPLAN_MODEL_NAME} <= names
        # dump_tensor_cache adds the bf16 view only when float32 was bf16-encoded.
        assert ("tensor-cache-b16.json" in names) == (dtype == "float32")


def test_mlc_chat_config(model_dirs):
    doc = json.loads((model_dirs["float32"] / "mlc-chat-config.json").read_text())
    assert doc["version"] == "0.1.0"
    assert doc["model_type"] == "llama"
    assert doc["quantization"] == "q0f32"
    mc = doc["model_config"]
    for key in ("hidden_size", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "head_dim", "num_hidden_layers", "vocab_size",
                "rms_norm_eps", "context_window_size", "prefill_chunk_size"):
        assert mc[key] == getattr(DEFAULT, key), key
    assert mc["tie_word_embeddings"] is False
    assert mc["tensor_parallel_shards"] == doc["tensor_parallel_shards"] == 1
    for key in ("vocab_size", "context_window_size", "prefill_chunk_size"):
        assert doc[key] == mc[key]
    assert isinstance(doc["conv_template"], dict)
    assert "model_lib" not in doc and "local_id" not in doc  # not the legacy format
    assert LlamaConfig.from_dict(doc) == DEFAULT


def test_tensor_cache_records_follow_mlc(model_dirs):
    doc = json.loads((model_dirs["float32"] / "tensor-cache.json").read_text())
    records = [r for shard in doc["records"] for r in shard["records"]]
    assert [r["name"] for r in records] == DEFAULT.param_names()
    for shard in doc["records"]:
        assert shard["format"] == "raw-shard" and shard["md5sum"]
    for r in records:
        assert r["format"] == "f32-to-bf16" and r["dtype"] == "float32"
        assert r["nbytes"] == 2 * int(np.prod(r["shape"]))  # float32 stored as bf16
        assert tuple(r["shape"]) == DEFAULT.param_shapes()[r["name"]]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_tvm_tensor_cache_loader_reads_generated_weights(model_dirs, dtype):
    """TVM's own loader (what MLC's single-worker runtime calls) returns the exact weights."""
    import tvm

    expected = generate_weights(DEFAULT, dtype, seed=0)
    names = list(expected)
    load = tvm.get_global_func("vm.builtin.tensor_cache.load")
    by_name = tvm.get_global_func("vm.builtin.param_array_from_cache_by_name")
    clear = tvm.get_global_func("vm.builtin.tensor_cache.clear")
    load(str(model_dirs[dtype]), tvm.cpu().dlpack_device_type(), 0)
    try:
        arrays = by_name(names)
        assert len(arrays) == len(names)
        for name, arr in zip(names, arrays, strict=True):
            got = arr.numpy()
            assert got.dtype == np.dtype(dtype), name
            np.testing.assert_array_equal(got, expected[name], err_msg=name)
    finally:
        clear()


def test_float32_weights_round_trip_bf16_exactly():
    w = generate_weights(SIZES["tiny"], "float32", seed=3)
    for name, x in w.items():
        np.testing.assert_array_equal(bf16_round(x), x, err_msg=name)
    # The seed and the name decide a tensor, nothing else.
    again = generate_weights(SIZES["tiny"], "float32", seed=3)
    other = generate_weights(SIZES["tiny"], "float32", seed=4)
    name = "model.layers.1.mlp.down_proj.weight"
    np.testing.assert_array_equal(w[name], again[name])
    assert not np.array_equal(w[name], other[name])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_numaplan_workload_loads_the_directory(model_dirs, dtype):
    w = load_workload(model_dirs[dtype])
    assert (w.model_type, w.quantization, w.model_dtype) == ("llama", QUANT[dtype], dtype)
    assert w.source == "tensor-cache"
    assert len(w.tensors) == len(DEFAULT.param_names())
    roles = {t.name: t.role for t in w.tensors}
    layer = "model.layers.2."
    assert roles["model.embed_tokens.weight"] is Role.EMBEDDING
    assert roles[layer + "self_attn.qkv_proj.weight"] is Role.ATTN_QKV
    assert roles[layer + "self_attn.o_proj.weight"] is Role.ATTN_OUT
    assert roles[layer + "mlp.gate_up_proj.weight"] is Role.MLP_IN
    assert roles[layer + "mlp.down_proj.weight"] is Role.MLP_OUT
    assert roles[layer + "input_layernorm.weight"] is Role.NORM
    assert roles["model.norm.weight"] is Role.NORM
    assert roles["lm_head.weight"] is Role.LM_HEAD
    d = DEFAULT.head_dim
    qkv = w.tensor(layer + "self_attn.qkv_proj.weight").shard_rule
    assert (qkv.kind, qkv.dim, qkv.segments) == (
        "split", 0, (DEFAULT.num_attention_heads * d, DEFAULT.num_key_value_heads * d,
                     DEFAULT.num_key_value_heads * d))
    gate_up = w.tensor(layer + "mlp.gate_up_proj.weight").shard_rule
    assert (gate_up.dim, gate_up.segments) == (0, (DEFAULT.intermediate_size,) * 2)
    assert w.tensor(layer + "mlp.down_proj.weight").shard_rule.dim == 1
    assert w.tensor(layer + "self_attn.o_proj.weight").shard_rule.dim == 1
    assert not w.tensor("lm_head.weight").is_split
    validate_tp(w, 2)
    assert valid_tp_degrees(w) == (1, 2, 4)
    # Per-shard shapes from numaplan's rules are what the per-shard modules are built with.
    for W in (1, 2, 4):
        shapes = DEFAULT.param_shapes(W)
        assert {t.name: t.shard_shape(W) for t in w.tensors} == shapes


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_reference_loaders_read_generated_weights(model_dirs, dtype):
    expected = generate_weights(DEFAULT, dtype, seed=0)
    full = load_full_weights(model_dirs[dtype])
    assert list(full) == list(expected)
    for name in expected:
        assert full[name].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(full[name], expected[name], err_msg=name)
    workload = load_workload(model_dirs[dtype])
    for worker in range(2):
        shard = load_shard_params(model_dirs[dtype], 2, worker, weights=full)
        assert [a.shape for a in shard] == list(DEFAULT.param_shapes(2).values())
        for name, arr in zip(DEFAULT.param_names(), shard, strict=True):
            rule = workload.tensor(name).shard_rule
            np.testing.assert_array_equal(arr, slice_shard(expected[name], rule, 2, worker))
    # qkv of worker 1 is [q_1 | k_1 | v_1]
    qkv = expected["model.layers.0.self_attn.qkv_proj.weight"]
    q = DEFAULT.num_attention_heads * DEFAULT.head_dim
    kv = DEFAULT.num_key_value_heads * DEFAULT.head_dim
    w1 = load_shard_params(model_dirs[dtype], 2, 1, weights=full)[2]
    np.testing.assert_array_equal(w1, np.concatenate(
        [qkv[q // 2:q], qkv[q + kv // 2:q + kv], qkv[q + kv + kv // 2:]]))


def test_numaplan_model_json_names_an_importable_builder(model_dirs):
    import importlib

    doc = json.loads((model_dirs["float32"] / NUMAPLAN_MODEL_NAME).read_text())
    assert doc["schema_version"] == 1 and doc["kind"] == "relax-nn-builder"
    assert doc["builder"] == BUILDER and doc["config"] == "mlc-chat-config.json"
    assert doc["tensor_parallel_shards"] == [1, 2, 4]
    module, func = doc["builder"].split(":")
    build = getattr(importlib.import_module(module), func)
    config = json.loads((model_dirs["float32"] / doc["config"]).read_text())
    mod, order = build(config, 4)
    assert {gv.name_hint for gv in mod.get_global_vars()} >= {
        "embed", "prefill", "decode", "create_kv_cache", "_metadata"}
    assert order == [(n, s, "float32") for n, s in DEFAULT.param_shapes(4).items()]
    with pytest.raises(ValueError, match="does not divide num_key_value_heads"):
        build(config, 8)
