"""Shard rules: explicit numpy constructions, properties, byte ranges read from a file."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from numaplan.errors import InfeasiblePlanError
from numaplan.model import (
    REPLICATE,
    ShardRule,
    classify_tensor,
    mlc_shard_rule,
    shard_byte_ranges,
    shard_mem_nbytes,
    shard_nbytes,
    shard_shape,
    slice_shard,
)


def test_qkv_shard_is_q_r_k_r_v_r() -> None:
    q, k, v, cols, w_count = 8, 4, 4, 3, 2
    x = np.arange((q + k + v) * cols).reshape(q + k + v, cols)
    rule = ShardRule(kind="split", dim=0, segments=(q, k, v))
    qs, ks, vs = x[:q], x[q:q + k], x[q + k:]
    for r in range(w_count):
        expected = np.concatenate([qs[r * 4:(r + 1) * 4], ks[r * 2:(r + 1) * 2],
                                   vs[r * 2:(r + 1) * 2]])
        np.testing.assert_array_equal(slice_shard(x, rule, w_count, r), expected)


def test_gate_up_shard() -> None:
    i = 6
    x = np.arange(2 * i * 2).reshape(2 * i, 2)
    rule = ShardRule(kind="split", dim=0, segments=(i, i))
    got = slice_shard(x, rule, 3, 1)
    np.testing.assert_array_equal(got, np.concatenate([x[2:4], x[i + 2:i + 4]]))


def test_dim1_split_is_np_split() -> None:
    x = np.random.default_rng(0).standard_normal((5, 12))
    rule = ShardRule(kind="split", dim=1, segments=(12,))
    for w in range(4):
        np.testing.assert_array_equal(slice_shard(x, rule, 4, w), np.split(x, 4, axis=1)[w])


def test_replicated_is_the_array_itself() -> None:
    x = np.ones((3, 3))
    assert slice_shard(x, REPLICATE, 4, 2) is x
    assert shard_shape((3, 3), REPLICATE, 4) == (3, 3)
    assert shard_byte_ranges((3, 3), "float32", REPLICATE, 4, 3, byte_offset=10) == ((10, 36),)


def test_uneven_split_is_infeasible() -> None:
    rule = ShardRule(kind="split", dim=0, segments=(8, 3, 3))
    with pytest.raises(InfeasiblePlanError, match="cannot be split evenly among 2"):
        shard_shape((14, 4), rule, 2)


def test_bad_arguments() -> None:
    rule = ShardRule(kind="split", dim=0, segments=(4,))
    with pytest.raises(ValueError, match="worker 2"):
        slice_shard(np.zeros((4,)), rule, 2, 2)
    with pytest.raises(ValueError, match="positive integer"):
        shard_shape((4,), rule, 0)
    with pytest.raises(ValueError, match="do not sum"):
        shard_shape((5,), rule, 1)
    with pytest.raises(ValidationError):
        ShardRule(kind="split", dim=None, segments=(4,))
    with pytest.raises(ValidationError):
        ShardRule(kind="replicate", dim=0)


def test_encoded_and_memory_sizes_differ_for_bf16_float32() -> None:
    rule = ShardRule(kind="split", dim=1, segments=(8,))
    assert shard_nbytes((4, 8), "float32", rule, 2, encoding="f32-to-bf16") == 4 * 4 * 2
    assert shard_mem_nbytes((4, 8), "float32", rule, 2) == 4 * 4 * 4
    assert shard_nbytes((4, 8), "uint32", rule, 2, encoding="f32-to-bf16") == 4 * 4 * 4


def test_mlc_rules_by_role() -> None:
    def rule(name: str, shape: tuple[int, ...], **kw: bool) -> ShardRule:
        return mlc_shard_rule(classify_tensor(name), shape, q_rows=64, kv_rows=32,
                              intermediate_size=128, **kw)

    assert rule("m.layers.0.self_attn.qkv_proj.q_scale", (128, 2)).segments == (64, 32, 32)
    assert rule("m.layers.0.mlp.gate_up_proj.weight", (256, 64)).segments == (128, 128)
    assert rule("m.layers.0.self_attn.o_proj.q_weight", (64, 8)) == ShardRule(
        kind="split", dim=1, segments=(8,))
    assert rule("m.layers.0.mlp.down_proj.bias", (64,)) == REPLICATE
    assert rule("m.embed_tokens.q_weight", (256, 8)) == REPLICATE
    assert rule("lm_head.weight", (256, 64)) == REPLICATE
    assert rule("m.layers.0.input_layernorm.weight", (64,)) == REPLICATE
    # KN layout stores q_weight transposed: the output (split) dim is dim 1.
    assert rule("m.layers.0.self_attn.qkv_proj.q_weight", (8, 128), kn_layout=True).dim == 1
    assert rule("m.layers.0.self_attn.o_proj.q_weight", (8, 64), kn_layout=True).dim == 0
    with pytest.raises(ValueError, match="config implies"):
        rule("m.layers.0.self_attn.qkv_proj.weight", (120, 64))


@st.composite
def split_cases(draw: st.DrawFn) -> tuple[np.ndarray, ShardRule, int]:
    workers = draw(st.integers(1, 6))
    ndim = draw(st.integers(1, 3))
    dim = draw(st.integers(0, ndim - 1))
    segments = tuple(workers * draw(st.integers(1, 3))
                     for _ in range(draw(st.integers(1, 3))))
    shape = [draw(st.integers(1, 4)) for _ in range(ndim)]
    shape[dim] = sum(segments)
    dtype = draw(st.sampled_from(["float16", "float32", "uint32", "int8"]))
    seed = draw(st.integers(0, 2**32 - 1))
    array = np.random.default_rng(seed).integers(0, 100, size=shape).astype(dtype)
    return array, ShardRule(kind="split", dim=dim, segments=segments), workers


@settings(max_examples=150, deadline=None)
@given(split_cases())
def test_pieces_reconstruct_the_tensor(case: tuple[np.ndarray, ShardRule, int]) -> None:
    array, rule, workers = case
    pieces = [slice_shard(array, rule, workers, w) for w in range(workers)]
    for piece in pieces:
        assert piece.shape == shard_shape(array.shape, rule, workers)
    # Undo the shard function: cut each worker's piece back into its segment parts, join the
    # parts of one segment across workers, then join the segments.
    bounds = np.cumsum([s // workers for s in rule.segments])[:-1]
    parts = [np.split(p, bounds, axis=rule.dim) for p in pieces]
    segments = [np.concatenate([parts[w][s] for w in range(workers)], axis=rule.dim)
                for s in range(len(rule.segments))]
    np.testing.assert_array_equal(np.concatenate(segments, axis=rule.dim), array)
    dtype = str(array.dtype)
    assert workers * shard_nbytes(array.shape, dtype, rule, workers) == array.nbytes
    assert workers * shard_mem_nbytes(array.shape, dtype, rule, workers) == array.nbytes


@settings(max_examples=100, deadline=None)
@given(split_cases(), st.integers(0, 64), st.booleans())
def test_byte_ranges_read_exactly_the_shard(case: tuple[np.ndarray, ShardRule, int],
                                            prefix: int, as_bf16: bool) -> None:
    array, rule, workers = case
    dtype, encoding = str(array.dtype), "raw"
    stored = array
    if as_bf16 and dtype == "float32":
        # f32-to-bf16 keeps the upper 16 bits of each float32: ranges are in encoded bytes.
        stored = (array.view(np.uint32) >> 16).astype(np.uint16)
        encoding = "f32-to-bf16"
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "params_shard_0.bin"
        file.write_bytes(b"\xee" * prefix + stored.tobytes() + b"\xff" * 7)
        with file.open("rb") as f:
            for w in range(workers):
                ranges = shard_byte_ranges(array.shape, dtype, rule, workers, w,
                                           byte_offset=prefix, encoding=encoding)
                if rule.dim == 0:
                    assert len(ranges) <= len(rule.segments)
                data = b""
                for offset, length in ranges:
                    f.seek(offset)
                    data += f.read(length)
                got = np.frombuffer(data, dtype=stored.dtype).reshape(
                    shard_shape(array.shape, rule, workers))
                np.testing.assert_array_equal(got, slice_shard(stored, rule, workers, w))
                assert sum(n for _, n in ranges) == shard_nbytes(array.shape, dtype, rule,
                                                                 workers, encoding=encoding)


def test_dim0_ranges_one_per_segment_and_merged_for_one_worker() -> None:
    rule = ShardRule(kind="split", dim=0, segments=(4096, 1024, 1024))
    row = 512 * 4
    ranges = shard_byte_ranges((6144, 512), "uint32", rule, 2, 1, byte_offset=1000)
    assert ranges == ((1000 + 2048 * row, 2048 * row), (1000 + (4096 + 512) * row, 512 * row),
                      (1000 + (5120 + 512) * row, 512 * row))
    assert shard_byte_ranges((6144, 512), "uint32", rule, 1, 0) == ((0, 6144 * row),)
    assert math.prod(shard_shape((6144, 512), rule, 2)) * 4 == sum(n for _, n in ranges)
