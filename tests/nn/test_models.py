"""Every model family x quantization, built by numaplan.nn and run through MLC's ABI on TVM's
paged KV cache, against an independent numpy forward pass of the same files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from numaplan.model.reference import Reference, read_tensors

from .conftest import build

pytestmark = [pytest.mark.tvm, pytest.mark.slow]

FAMILIES = ("llama", "mistral", "qwen2", "phi3")
QUANTS = ("q0f32", "q0f16", "q0bf16", "q4f16_1", "q4f32_1")
#: Max |logit error| / max |logit| allowed: float32 math is exact up to summation order;
#: float16 / bfloat16 activations (and KV cache) round at every layer.
TOL = {"q0f32": 1e-5, "q4f32_1": 1e-5, "q0f16": 5e-3, "q4f16_1": 5e-3, "q0bf16": 3e-2}


def _load(built):
    import tvm
    from tvm import relax

    from numaplan.runtime.paged_kv import PagedKVModel

    ex = tvm.runtime.load_module(str(built.lib))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    meta = json.loads(str(vm["_metadata"]()))
    tensors = read_tensors(built.model_dir)
    params = []
    for p in meta["params"]:
        a = tensors[p["name"]]
        assert list(a.shape) == p["shape"], p["name"]
        params.append(tvm.runtime.tensor(np.ascontiguousarray(a.astype(p["dtype"]))))
    return PagedKVModel(vm, params, max_batch=4, max_total_seq_len=512), meta


def _rel(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("quant", QUANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_and_decode_match_numpy(model_root, family, quant):
    built = build(model_root, family, quant)
    model, meta = _load(built)
    ref = Reference(built.model_dir)
    assert meta["model_type"] == family and meta["quantization"] == quant
    prompt = [3, 17, 42, 7, 99, 5, 1, 150, 64, 12, 33, 2, 8, 91, 120, 44, 19, 77, 6, 140]
    model.add_sequence(0)
    logits = model.prefill([0], [prompt])[0]  # 20 tokens: two prefill chunks of 16
    expect = ref.forward(prompt)[-1]
    assert _rel(logits, expect) < TOL[quant]
    token = int(np.argmax(expect))
    for _ in range(4):
        got = model.decode([0], [token])[0]
        expect = ref.forward([token])[-1]
        assert _rel(got, expect) < TOL[quant]
        token = int(np.argmax(expect))
    assert model.lengths[0] == len(prompt) + 4


@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_then_decode_equals_longer_prefill(model_root, family):
    built = build(model_root, family, "q0f32")
    model, _ = _load(built)
    prompt = [5, 9, 33, 2, 71, 18]
    model.add_sequence(0)
    model.prefill([0], [prompt[:-1]])
    stepped = model.decode([0], [prompt[-1]])[0]
    model.add_sequence(1)
    whole = model.prefill([1], [prompt])[0]
    np.testing.assert_allclose(stepped, whole, rtol=1e-5, atol=1e-5)


def test_batched_sequences_equal_single_ones(model_root):
    built = build(model_root, "llama", "q4f16_1")
    model, _ = _load(built)
    prompts = {10: [4, 8, 15, 16, 23], 11: [42, 7], 12: [99, 98, 97, 96, 95, 94, 93]}
    for sid in prompts:
        model.add_sequence(sid)
    batch = model.prefill(list(prompts), list(prompts.values()))
    tokens = [int(t) for t in batch.argmax(axis=1)]
    batch_step = model.decode(list(prompts), tokens)
    alone, _ = _load(built)
    for i, (sid, prompt) in enumerate(prompts.items()):
        alone.add_sequence(sid)
        np.testing.assert_allclose(alone.prefill([sid], [prompt])[0], batch[i],
                                   rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(alone.decode([sid], [tokens[i]])[0], batch_step[i],
                                   rtol=2e-3, atol=2e-3)


def test_batched_decode_step_is_each_sequences_own_under_int8(model_root):
    # The batched decode step runs the one-token int8 product for every sequence: a
    # sequence's logits are its logits alone (the float tiled matmul differed by the int8
    # rounding, ~0.5 %), so a server's answers do not depend on what they are batched with.
    built = build(model_root, "llama", "q4f16_1", q4_activations="int8")
    model, _ = _load(built)
    prompts = {1: [4, 8, 15, 16, 23], 2: [42, 7], 3: [99, 98, 97, 96]}
    for sid, prompt in prompts.items():
        model.add_sequence(sid)
        model.prefill([sid], [prompt])
    step = model.decode(list(prompts), [5, 6, 7])
    alone, _ = _load(built)
    for i, (sid, prompt) in enumerate(prompts.items()):
        alone.add_sequence(sid)
        alone.prefill([sid], [prompt])
        np.testing.assert_allclose(alone.decode([sid], [5 + i])[0], step[i], rtol=1e-5,
                                   atol=1e-5)


def test_int8_activation_kernel_stays_close(model_root):
    built = build(model_root, "llama", "q4f16_1", q4_activations="int8")
    model, meta = _load(built)
    assert meta["numaplan"]["q4_activations"] == "int8"
    ref = Reference(built.model_dir)
    model.add_sequence(0)
    model.prefill([0], [[1, 2, 3, 4]])
    ref.forward([1, 2, 3, 4])
    got = model.decode([0], [9])[0]
    assert _rel(got, ref.forward([9])[-1]) < 3e-2


def test_llama3_rope_scaling(model_root):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    built = build(model_root, "llama", "q0f32", rope_scaling=scaling, rope_theta=500000.0)
    model, _ = _load(built)
    ref = Reference(built.model_dir)
    prompt = list(range(1, 40))
    model.add_sequence(0)
    assert _rel(model.prefill([0], [prompt])[0], ref.forward(prompt)[-1]) < 1e-5


def test_requests_the_cache_cannot_take_are_refused(model_root):
    from numaplan.errors import RequestError

    built = build(model_root, "llama", "q0f32")
    model, _ = _load(built)
    model.add_sequence(0)
    with pytest.raises(RequestError, match="unknown sequence 5"):
        model.decode([5], [1])
    with pytest.raises(RequestError, match="context window of 128"):
        model.prefill([0], [[1] * 129])
    with pytest.raises(RequestError, match="already exists"):
        model.add_sequence(0)
    with pytest.raises(RequestError, match="empty prompt"):
        model.prefill([0], [[]])
    assert model.lengths[0] == 0  # nothing reached the cache
