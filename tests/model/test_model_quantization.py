"""Quantization specs: names, model dtypes, parameter shapes."""

from __future__ import annotations

import pytest

from numaplan.errors import ModelFormatError
from numaplan.model import QUANTIZATIONS, get_quantization


@pytest.mark.parametrize(("name", "model_dtype", "kind"), [
    ("q0f16", "float16", "no-quant"),
    ("q0bf16", "bfloat16", "no-quant"),
    ("q0f32", "float32", "no-quant"),
    ("q4f16_1", "float16", "group-quant"),
    ("q4bf16_1", "bfloat16", "group-quant"),
    ("q4f32_1", "float32", "group-quant"),
    ("q3f16_1", "float16", "group-quant"),
    ("q4f16_0", "float16", "group-quant"),
    ("q3f16_0", "float16", "group-quant"),
])
def test_model_dtype_and_kind(name: str, model_dtype: str, kind: str) -> None:
    q = get_quantization(name)
    assert (q.name, q.model_dtype, q.kind) == (name, model_dtype, kind)


def test_q4f16_1_linear_shapes_nk() -> None:
    q = get_quantization("q4f16_1")
    got = [(p.name, p.shape, p.dtype) for p in q.linear_params("x", 14336 * 2, 4096)]
    assert got == [("x.q_weight", (28672, 512), "uint32"), ("x.q_scale", (28672, 128), "float16")]


def test_q4_bias_stays_in_model_dtype() -> None:
    q = get_quantization("q4bf16_1")
    params = q.linear_params("c_attn", 6144, 4096, bias=True)
    assert [(p.name, p.shape, p.dtype) for p in params][-1] == ("c_attn.bias", (6144,), "bfloat16")


def test_q3f16_1_packs_ten_per_word_in_groups_of_40() -> None:
    q = get_quantization("q3f16_1")
    assert (q.elems_per_storage, q.storage_per_group) == (10, 4)
    # 4096 / 40 = 102.4 -> 103 groups (last one padded), 4 words each.
    got = [(p.name, p.shape) for p in q.linear_params("o", 4096, 4096)]
    assert got == [("o.q_weight", (4096, 412)), ("o.q_scale", (4096, 103))]


def test_kn_layout_is_transposed_and_refuses_tp() -> None:
    q = get_quantization("q4f16_0")
    assert [p.shape for p in q.linear_params("o", 4096, 1024)] == [(128, 4096), (32, 4096)]
    assert not q.supports_tensor_parallel
    assert get_quantization("q4f16_1").supports_tensor_parallel


def test_embedding_and_lm_head_quantized_norm_not() -> None:
    q = get_quantization("q4f16_1")
    assert [p.shape for p in q.embedding_params("e", 128256, 4096)] == [(128256, 512),
                                                                         (128256, 128)]
    assert [p.name for p in q.linear_params("lm_head", 128256, 4096, final_fc=True)] == [
        "lm_head.q_weight", "lm_head.q_scale"]
    assert [(p.shape, p.dtype) for p in q.norm_params("n", 4096)] == [((4096,), "float16")]


def test_q4f16_2_keeps_embedding_and_lm_head_unquantized() -> None:
    q = get_quantization("q4f16_2")
    assert [p.name for p in q.embedding_params("e", 10, 64)] == ["e.weight"]
    assert [p.name for p in q.linear_params("lm_head", 10, 64, final_fc=True)] == [
        "lm_head.weight"]


def test_no_quant_keeps_weight() -> None:
    q = get_quantization("q0f32")
    assert [(p.name, p.shape, p.dtype) for p in q.linear_params("o", 8, 4)] == [
        ("o.weight", (8, 4), "float32")]


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ModelFormatError) as exc:
        get_quantization("q5f16_9")
    assert "q5f16_9" in str(exc.value)
    for name in QUANTIZATIONS:
        assert name in str(exc.value)


def test_unsupported_mlc_scheme_is_named_as_such() -> None:
    with pytest.raises(ModelFormatError, match="not supported by numaplan"):
        get_quantization("q4f16_ft")
