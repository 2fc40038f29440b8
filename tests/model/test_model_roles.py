"""Tensor roles across naming families."""

from __future__ import annotations

import pytest

from numaplan.model import Role, ShardRule, classify_tensor, load_workload, write_hf_config

CASES = [
    # Llama / Mistral / current Phi-3 port
    ("model.embed_tokens.q_weight", Role.EMBEDDING, None),
    ("model.embed_tokens.weight", Role.EMBEDDING, None),
    ("model.layers.0.input_layernorm.weight", Role.NORM, 0),
    ("model.layers.7.self_attn.qkv_proj.q_weight", Role.ATTN_QKV, 7),
    ("model.layers.7.self_attn.qkv_proj.q_scale", Role.ATTN_QKV, 7),
    ("model.layers.7.self_attn.qkv_proj.weight", Role.ATTN_QKV, 7),
    ("model.layers.31.self_attn.o_proj.q_weight", Role.ATTN_OUT, 31),
    ("model.layers.2.post_attention_layernorm.weight", Role.NORM, 2),
    ("model.layers.2.mlp.gate_up_proj.q_scale", Role.MLP_IN, 2),
    ("model.layers.2.mlp.down_proj.weight", Role.MLP_OUT, 2),
    ("model.norm.weight", Role.NORM, None),
    ("lm_head.q_weight", Role.LM_HEAD, None),
    ("lm_head.weight", Role.LM_HEAD, None),
    # Qwen2
    ("model.layers.3.self_attn.c_attn.q_weight", Role.ATTN_QKV, 3),
    ("model.layers.3.self_attn.c_attn.bias", Role.ATTN_QKV, 3),
    # early Phi-3 port
    ("transformer.embd.weight", Role.EMBEDDING, None),
    ("transformer.h.5.ln.weight", Role.NORM, 5),
    ("transformer.h.5.mixer.qkv_proj.q_weight", Role.ATTN_QKV, 5),
    ("transformer.h.5.mixer.out_proj.q_scale", Role.ATTN_OUT, 5),
    ("transformer.h.5.mlp.gate_up_proj.weight", Role.MLP_IN, 5),
    ("transformer.h.5.mlp.down_proj.weight", Role.MLP_OUT, 5),
    ("transformer.h.5.post_attention_layernorm.weight", Role.NORM, 5),
    ("transformer.norm.weight", Role.NORM, None),
    # GPT-style names: c_proj means attention out or MLP out depending on its block
    ("transformer.h.1.attn.c_proj.weight", Role.ATTN_OUT, 1),
    ("transformer.h.1.mlp.c_proj.weight", Role.MLP_OUT, 1),
    ("transformer.h.1.mlp.c_fc.weight", Role.MLP_IN, 1),
    ("transformer.h.1.ln_1.weight", Role.NORM, 1),
    # legacy 2023 names carry no information
    ("param_0", Role.OTHER, None),
    ("param_291", Role.OTHER, None),
    # unrecognised
    ("model.layers.0.mystery.weight", Role.OTHER, 0),
    ("model.layers.0.mystery.bias", Role.BIAS, 0),
]


@pytest.mark.parametrize(("name", "role", "layer"), CASES)
def test_classify(name: str, role: Role, layer: int | None) -> None:
    got = classify_tensor(name)
    assert (got.role, got.layer) == (role, layer)


def test_param_and_fused_flags() -> None:
    qkv = classify_tensor("model.layers.0.self_attn.c_attn.bias")
    assert (qkv.param, qkv.fused) == ("bias", True)
    assert classify_tensor("model.layers.0.mlp.gate_up_proj.q_weight").fused
    assert not classify_tensor("model.layers.0.mlp.down_proj.q_weight").fused


def test_qwen2_bias_is_sharded_like_qkv(tmp_path) -> None:
    write_hf_config(tmp_path, "tiny-qwen2")
    w = load_workload(tmp_path, quantization="q4f16_1")
    bias = w.tensor("model.layers.0.self_attn.c_attn.bias")
    assert bias.role is Role.ATTN_QKV
    # 4 heads * 16 = 64 q rows, 2 kv heads * 16 = 32 rows each for k and v.
    assert bias.shard_rule == ShardRule(kind="split", dim=0, segments=(64, 32, 32))
    assert bias.shard_shape(2) == (64,)
    weight = w.tensor("model.layers.0.self_attn.c_attn.q_weight")
    assert weight.shard_rule == bias.shard_rule


def test_tied_embeddings_have_no_lm_head(tmp_path) -> None:
    write_hf_config(tmp_path, "tiny-qwen2")
    w = load_workload(tmp_path, quantization="q4f16_1")
    assert w.tie_word_embeddings
    assert not list(w.iter_role(Role.LM_HEAD))
    assert {t.name for t in w.iter_role(Role.EMBEDDING)} == {"model.embed_tokens.q_weight",
                                                             "model.embed_tokens.q_scale"}


def test_untied_has_lm_head_replicated(tmp_path) -> None:
    write_hf_config(tmp_path, "tiny-llama")
    w = load_workload(tmp_path, quantization="q4f16_1")
    heads = list(w.iter_role(Role.LM_HEAD))
    assert [t.name for t in heads] == ["lm_head.q_weight", "lm_head.q_scale"]
    assert all(not t.is_split for t in heads)


def test_phi3_synthesised_with_mlc_phi3_names(tmp_path) -> None:
    write_hf_config(tmp_path, "tiny-phi3")
    w = load_workload(tmp_path, quantization="q0f16")
    names = [t.name for t in w.tensors]
    assert names[:4] == ["transformer.embd.weight", "transformer.h.0.ln.weight",
                         "transformer.h.0.mixer.qkv_proj.weight",
                         "transformer.h.0.mixer.out_proj.weight"]
    assert w.tensor("transformer.h.1.mixer.out_proj.weight").shard_rule.dim == 1
    assert w.tensor("transformer.h.1.mixer.qkv_proj.weight").shard_rule.segments == (64, 64, 64)
