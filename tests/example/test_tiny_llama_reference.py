"""The numpy reference on its own (no TVM): the math is self-consistent and TP-exact."""

from __future__ import annotations

import numpy as np
import pytest

from examples.tiny_llama.reference import LlamaReference
from numaplan.tiny_llama.build import generate_weights
from numaplan.tiny_llama.config import SIZES, LlamaConfig

TINY = SIZES["tiny"]


@pytest.fixture(scope="module")
def weights():
    return generate_weights(TINY, "float32", seed=1)


def test_decode_equals_prefill_of_the_longer_prompt(weights):
    """Incremental decode with the KV cache gives the logits of a full recompute."""
    ref = LlamaReference(TINY, weights)
    ids = [3, 9, 27, 81, 15]
    logits, tokens = ref.generate(ids, 3)
    full = LlamaReference(TINY, weights)
    for step in range(1, 4):
        prompt = ids + tokens[:step]
        np.testing.assert_allclose(full.prefill(prompt), logits[step], rtol=1e-10, atol=1e-10)


def test_logits_are_sane(weights):
    logits = LlamaReference(TINY, weights).prefill([1, 2, 3])
    assert logits.shape == (TINY.vocab_size,)
    assert np.isfinite(logits).all()
    assert 0.3 < logits.std() < 10  # activations neither vanish nor explode


@pytest.mark.parametrize(("size", "num_shards"), [("tiny", 2), ("default", 4)])
def test_simulated_tensor_parallel_equals_tp1(size, num_shards):
    """Each worker on its MLC shard (numaplan's slice_shard), partial outputs summed where the
    model all-reduces: the same logits as one worker (float64, so to rounding)."""
    config = SIZES[size]
    weights = generate_weights(config, "float32", seed=2)
    ids = [5, 6, 7, 8]
    one, tokens1 = LlamaReference(config, weights).generate(ids, 3)
    many, tokens_w = LlamaReference(config, weights, num_shards=num_shards).generate(ids, 3)
    assert tokens1 == tokens_w
    for a, b in zip(one, many, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_default_and_bench_sizes_admit_tp_1_2_4():
    for name in ("default", "bench"):
        assert SIZES[name].valid_tp_degrees() == [1, 2, 4], name
    bench = SIZES["bench"]
    assert 300e6 < bench.num_params() * 4 < 500e6  # float32 bytes: bandwidth-bound
    with pytest.raises(ValueError, match="does not divide"):
        SIZES["default"].per_shard(3)


def test_config_round_trips_through_mlc_model_config():
    doc = {"model_config": {**SIZES["default"].to_dict(), "rope_scaling": None,
                            "max_batch_size": 1}, "quantization": "q0f32"}
    assert LlamaConfig.from_dict(doc) == SIZES["default"]
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        SIZES["tiny"].with_(tie_word_embeddings=True)
