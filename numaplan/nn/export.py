"""Export a model definition as a Relax module with MLC's function ABI and ``_metadata``.

Functions (every one but the cache creation and ``_metadata`` takes the packed parameter tuple
last, in ``_metadata["params"]`` order; ``get_default_spec`` in
``mlc_llm/model/llama/llama_model.py``):

- ``embed(input_ids[n] int32) -> [n, hidden]``
- ``prefill(input_embed[1, n, hidden], kv) -> (logits[1, 1, vocab] f32, kv)``
- ``decode(input_embed[1, 1, hidden], kv) -> (logits[1, 1, vocab] f32, kv)``
- ``batch_prefill(input_embeds[1, n, hidden], logit_positions[b] int32, kv)
  -> (logits[1, b, vocab], kv)``
- ``batch_decode(input_embeds[b, 1, hidden], kv) -> (logits[b, 1, vocab], kv)``
- ``batch_verify(input_embeds[1, n, hidden], kv) -> (logits[1, n, vocab], kv)``
- ``create_tir_paged_kv_cache(max_batch_size, max_total_seq_len, prefill_chunk_size, page_size,
  support_sliding_window)`` (each a one-element shape; the name MLC's engine looks up)
- ``_metadata() -> str``: MLC's keys (``mlc_llm/interface/compile.py``), per-shard parameter
  shapes, ``kv_cache`` with per-shard head counts
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import tvm
from tvm import relax
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from numaplan.model.architecture import Architecture, parse_architecture
from numaplan.model.quantization import get_quantization, require_kernels
from numaplan.nn import kernels
from numaplan.nn.decoder import CausalLM

#: The cache-creation function a library exports: the name MLC's engine looks up (its
#: ``DispatchKVCacheCreation`` pass renames the model's ``create_paged_kv_cache`` to it). One
#: name only: a second would add the cache's kernels to the module twice.
KV_CACHE_FUNCTION = "create_tir_paged_kv_cache"
#: The forward functions of the ABI, in the order of the module docstring.
FORWARD_FUNCTIONS = ("embed", "prefill", "decode", "batch_prefill", "batch_decode",
                     "batch_verify")


def module_spec(model: CausalLM) -> dict[str, Any]:
    """The nn export spec of every ABI function."""
    hidden, dtype = model.arch.hidden_size, model.dtype
    packed = {"param_mode": "packed", "effect_mode": "none"}
    kv = nn.spec.Object(object_type=PagedKVCache)
    spec: dict[str, Any] = {
        "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
        "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", hidden], dtype),
                    "paged_kv_cache": kv, "$": packed},
        "decode": {"input_embed": nn.spec.Tensor([1, 1, hidden], dtype),
                   "paged_kv_cache": kv, "$": packed},
        "batch_prefill": {"input_embeds": nn.spec.Tensor([1, "seq_len", hidden], dtype),
                          "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                          "paged_kv_cache": kv, "$": packed},
        "batch_decode": {"input_embeds": nn.spec.Tensor(["batch_size", 1, hidden], dtype),
                         "paged_kv_cache": kv, "$": packed},
        "batch_verify": {"input_embeds": nn.spec.Tensor([1, "seq_len", hidden], dtype),
                         "paged_kv_cache": kv, "$": packed},
    }
    create = {"max_batch_size": int, "max_total_seq_len": int, "prefill_chunk_size": int,
              "page_size": int, "support_sliding_window": int,
              "$": {"param_mode": "none", "effect_mode": "none"}}
    spec[KV_CACHE_FUNCTION] = create
    return spec


def metadata_dict(arch: Architecture, shards: int,
                  params: list[tuple[str, tuple[int, ...], str]], *,
                  max_batch_size: int = 1) -> dict[str, Any]:
    """What ``_metadata`` returns (MLC's keys and order)."""
    per = arch.per_shard(shards)
    return {
        "model_type": arch.model_type,
        "quantization": arch.quantization,
        "context_window_size": arch.context_window_size,
        "sliding_window_size": arch.sliding_window_size,
        "attention_sink_size": 4 if arch.model_type == "mistral" else -1,
        "prefill_chunk_size": arch.prefill_chunk_size,
        "tensor_parallel_shards": shards,
        "pipeline_parallel_stages": 1,
        "disaggregation": False,
        "kv_state_kind": "kv_cache",
        "max_batch_size": max_batch_size,
        "active_vocab_size": arch.vocab_size,
        "model_task": "chat",
        "params": [{"name": name, "shape": list(shape), "dtype": dtype, "preprocs": [],
                    "pipeline_stages": [0]} for name, shape, dtype in params],
        "kv_cache": {"num_hidden_layers": arch.num_hidden_layers,
                     "num_attention_heads": per["num_attention_heads"],
                     "num_key_value_heads": per["num_key_value_heads"],
                     "head_dim": arch.head_dim},
        "memory_usage": {},
    }


def add_metadata_function(mod: tvm.IRModule, metadata: Mapping[str, Any]) -> tvm.IRModule:
    """``mod`` plus ``_metadata() -> R.str(json)`` (attributes do not survive ``tvm.compile``,
    so MLC carries compile-time facts this way)."""
    text = json.dumps(metadata, separators=(",", ":"))
    bb = relax.BlockBuilder(mod)
    with bb.function("_metadata", params=[]):
        bb.emit_func_output(tvm.ir.StringImm(text))
    return bb.finalize()


def export_model(arch: Architecture, shards: int, *,
                 target: tvm.target.Target | None = None,
                 q4_activations: kernels.Q4Activations = "auto",
                 ) -> tuple[tvm.IRModule, list[tuple[str, tuple[int, ...], str]]]:
    """The Relax module of one of ``shards`` workers, before any lowering.

    Parameters
    ----------
    arch
        The architecture (full sizes) and quantization.
    shards
        The tensor-parallel worker count; the module is one worker's.
    target
        The llvm target (default: this machine's CPU).
    q4_activations
        How decode's q4 products treat the activation (:data:`numaplan.nn.kernels.Q4Activations`);
        the choice is recorded in ``_metadata["numaplan"]``.

    Returns
    -------
    (IRModule, params)
        ``params`` is the packed-parameter order as ``[(name, per_shard_shape, dtype)]``.
    """
    from numaplan.passes.schedules import resolve_target

    quant = require_kernels(get_quantization(arch.quantization))
    model = CausalLM(arch, quant, shards)
    tgt = resolve_target(target or "llvm")
    chosen = kernels.KernelPolicy(
        q4_activations=kernels.resolve_q4_activations(q4_activations, tgt))
    with tgt, kernels.policy(chosen):
        mod, named = model.export_tvm(spec=module_spec(model), allow_extern=False)
    params = [(name, tuple(int(s) for s in p.shape), str(p.dtype)) for name, p in named]
    meta = metadata_dict(arch, shards, params)
    if quant.is_group_quant:
        meta["numaplan"] = {"q4_activations": chosen.q4_activations}
    return add_metadata_function(mod, meta), params


def build_ir_module(config: Mapping[str, Any], tensor_parallel_shards: int, *,
                    q4_activations: kernels.Q4Activations = "auto",
                    ) -> tuple[tvm.IRModule, list[tuple[str, tuple[int, ...], str]]]:
    """The builder entry point (the ``numaplan-model.json`` contract): the parsed
    ``mlc-chat-config.json`` and the worker count in, the module and its parameters out."""
    return export_model(parse_architecture(config), tensor_parallel_shards,
                        q4_activations=q4_activations)
