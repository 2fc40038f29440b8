"""A Llama decoder written with ``tvm.relax.frontend.nn``, following MLC LLM's conventions.

Parameter names, fused projections and the tensor-parallel layout are MLC's
(``mlc_llm/model/llama/llama_model.py``): for a tensor-parallel degree ``W`` the modules are built
at per-shard size (``heads/W``, ``kv_heads/W``, ``intermediate/W``), ``qkv_proj`` and
``gate_up_proj`` are column-parallel (worker ``r`` holds ``[q_r | k_r | v_r]`` and
``[gate_r | up_r]``), ``o_proj`` and ``down_proj`` row-parallel, and their outputs are summed by
``nn.op.ccl_allreduce(x, "sum")`` (only when ``W > 1``). Embeddings, norms and ``lm_head`` are
replicated.

Unlike MLC, the KV cache is one explicit tensor per worker,
``kv_cache[num_hidden_layers, 2, max_seq_len, num_key_value_heads / W, head_dim]`` (index 0 = K,
1 = V), passed to ``prefill``/``decode`` and returned by them. It is updated *in place*
(``call_tir_inplace``): the returned tensor is the same buffer, so a step writes only its own
rows. ``decode`` does one token's work: every projection sees a ``[1, 1, hidden]`` input, RoPE
and the cache append touch one row, and attention reads the ``pos + 1`` cached rows.

Functions of the exported module (all but ``create_kv_cache`` and ``_metadata`` take the packed
params tuple last, in ``_metadata["params"]`` order):

- ``embed(input_ids[seq_len] int32, params) -> [seq_len, hidden]``
- ``prefill(input_embed[1, seq_len, hidden], kv_cache, params) -> (logits[1, 1, vocab] float32,
  kv_cache)``: a new sequence at position 0, logits of its last token
- ``decode(input_embed[1, 1, hidden], kv_cache, Shape([pos]), params) -> (logits[1, 1, vocab]
  float32, kv_cache)``: one token at position ``pos`` (the number of tokens already cached)
- ``create_kv_cache(Shape([max_seq_len])) -> kv_cache``, zero-filled
- ``_metadata() -> str``: MLC-style JSON (see :func:`metadata_dict`)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax, te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.script import tirx as T

from numaplan.tiny_llama.config import KV_CACHE_LAYOUT, LlamaConfig, model_dtype

# ---------------------------------------------------------------------------------------------
# Kernels (TIR / TE). They take the layer index and the start position as scalar arguments so
# that one PrimFunc serves every layer, prefill (pos = 0, n tokens) and decode (pos, 1 token).


_OPAQUE = 8  # relax OpPatternKind::kOpaque


def _private(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Prepare a kernel for ``bb.add_func``: drop ``global_symbol`` (``te.create_prim_func`` names
    every function ``main``) so the block builder names it after its call site, and mark it
    opaque (``op_pattern`` 8) so that ``FuseOps`` leaves it alone: its symbolic token count
    would clash with the static shapes of decode's neighbours inside ``FuseTIR``; and mark it
    scheduled so that dlight does not try its GEMV rule on it."""
    if "global_symbol" in (func.attrs or {}):
        func = func.without_attr("global_symbol")
    # dlight's GEMV analysis asserts on the data-dependent cache indexing: skip these kernels.
    return func.with_attr("op_pattern", _OPAQUE).with_attr("tirx.is_scheduled", True)


def _rope_func(num_heads: int, num_rotated: int, head_dim: int, theta: float,
               dtype: str) -> tirx.PrimFunc:
    """``out[i, h] = rope(qkv[i, h], pos + i)`` for the first ``num_rotated`` heads (q and k;
    v is copied). Rotate-half (GPT-NeoX / Hugging Face Llama) layout, computed in float32."""
    n = tirx.Var("n", "int64")
    pos = tirx.Var("pos", "int64")
    qkv = te.placeholder((n, num_heads, head_dim), dtype, name="qkv")
    half = head_dim // 2

    def body(i, h, d):
        x = qkv[i, h, d].astype("float32")
        partner = qkv[i, h, (d + half) % head_dim].astype("float32")
        rotated = tirx.if_then_else(d < half, -partner, partner)
        exponent = (d % half).astype("float32") * tirx.const(2.0 / head_dim, "float32")
        freq = (pos + i).astype("float32") / tirx.power(tirx.const(theta, "float32"), exponent)
        y = x * tirx.cos(freq) + rotated * tirx.sin(freq)
        return tirx.if_then_else(h < num_rotated, y.astype(dtype), qkv[i, h, d])

    out = te.compute((n, num_heads, head_dim), body, name="rope")
    return _private(te.create_prim_func([qkv, pos, out]))


def _kv_append_func(num_layers: int, num_kv_heads: int, head_dim: int,
                    dtype: str) -> tirx.PrimFunc:
    """In place: ``kv[layer, 0, pos + i] = k[i]``, ``kv[layer, 1, pos + i] = v[i]``."""

    @T.prim_func(s_tir=True)
    def kv_append(var_kv: T.handle, var_k: T.handle, var_v: T.handle, layer: T.int64,
                  pos: T.int64):
        T.func_attr({"tirx.noalias": True})
        max_seq_len = T.int64()
        n = T.int64()
        kv = T.match_buffer(var_kv, (num_layers, 2, max_seq_len, num_kv_heads, head_dim), dtype)
        k = T.match_buffer(var_k, (n, num_kv_heads, head_dim), dtype)
        v = T.match_buffer(var_v, (n, num_kv_heads, head_dim), dtype)
        for i, h, d in T.grid(n, num_kv_heads, head_dim):
            with T.sblock("kv_append"):
                vi, vh, vd = T.axis.remap("SSS", [i, h, d])
                kv[layer, 0, pos + vi, vh, vd] = k[vi, vh, vd]
                kv[layer, 1, pos + vi, vh, vd] = v[vi, vh, vd]

    return _private(kv_append)


def _attention_func(num_layers: int, num_heads: int, num_kv_heads: int, head_dim: int,
                    dtype: str) -> tirx.PrimFunc:
    """Causal GQA attention of ``n`` queries at positions ``pos..pos+n-1`` over the cache rows
    ``0..pos+n-1`` of ``layer`` (softmax in float32)."""
    n = tirx.Var("n", "int64")
    max_seq_len = tirx.Var("max_seq_len", "int64")
    layer = tirx.Var("layer", "int64")
    pos = tirx.Var("pos", "int64")
    group = num_heads // num_kv_heads
    q = te.placeholder((n, num_heads, head_dim), dtype, name="q")
    kv = te.placeholder((num_layers, 2, max_seq_len, num_kv_heads, head_dim), dtype, name="kv")
    total = pos + n
    scale = tirx.const(1.0 / math.sqrt(head_dim), "float32")
    r = te.reduce_axis((0, head_dim), name="r")
    dot = te.compute(
        (n, num_heads, total),
        lambda i, h, t: te.sum(
            q[i, h, r].astype("float32") * kv[layer, 0, t, h // group, r].astype("float32"),
            axis=r),
        name="dot")
    score = te.compute(
        (n, num_heads, total),
        lambda i, h, t: tirx.if_then_else(t <= pos + i, dot[i, h, t] * scale,
                                          tirx.min_value("float32")),
        name="score")
    t1 = te.reduce_axis((0, total), name="t1")
    smax = te.compute((n, num_heads), lambda i, h: te.max(score[i, h, t1], axis=t1), name="smax")
    prob = te.compute((n, num_heads, total),
                      lambda i, h, t: tirx.exp(score[i, h, t] - smax[i, h]), name="prob")
    t2 = te.reduce_axis((0, total), name="t2")
    denom = te.compute((n, num_heads), lambda i, h: te.sum(prob[i, h, t2], axis=t2),
                       name="denom")
    t3 = te.reduce_axis((0, total), name="t3")
    acc = te.compute(
        (n, num_heads, head_dim),
        lambda i, h, d: te.sum(prob[i, h, t3] * kv[layer, 1, t3, h // group, d].astype("float32"),
                               axis=t3),
        name="acc")
    out = te.compute((n, num_heads, head_dim),
                     lambda i, h, d: (acc[i, h, d] / denom[i, h]).astype(dtype), name="attn")
    return _private(te.create_prim_func([q, kv, layer, pos, out]))


# ---------------------------------------------------------------------------------------------
# Modules (attribute names = MLC parameter names)


class LlamaAttention(nn.Module):
    """Fused qkv projection, RoPE, KV-cache append, causal GQA attention, o_proj."""

    def __init__(self, config: LlamaConfig, num_shards: int, kernels: _Kernels):
        super().__init__()
        shard = config.per_shard(num_shards)
        self.num_heads = shard["num_attention_heads"]
        self.num_kv_heads = shard["num_key_value_heads"]
        self.head_dim = config.head_dim
        self.num_shards = num_shards
        self.kernels = kernels
        qkv_rows = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, qkv_rows, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x: Tensor, kv_cache: Tensor, layer: int,
                pos: tirx.PrimExpr) -> tuple[Tensor, Tensor]:
        _, n, _ = x.shape
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        dtype = x.dtype
        qkv = op.reshape(self.qkv_proj(x), (n, h + 2 * kvh, d))
        qkv = op.tensor_ir_op(self.kernels.rope, "rope", [qkv, pos],
                              Tensor.placeholder([n, h + 2 * kvh, d], dtype))
        q, k, v = op.split(qkv, [h, h + kvh], axis=1)
        layer_imm = tirx.IntImm("int64", layer)
        kv_cache = op.tensor_ir_inplace_op(
            self.kernels.kv_append, "kv_append", [kv_cache, k, v, layer_imm, pos],
            inplace_indices=[0], out=Tensor.placeholder(kv_cache.shape, kv_cache.dtype))
        attn = op.tensor_ir_op(self.kernels.attention, "attention", [q, kv_cache, layer_imm, pos],
                               Tensor.placeholder([n, h, d], dtype))
        out = self.o_proj(op.reshape(attn, (1, n, h * d)))
        return out, kv_cache


class LlamaMLP(nn.Module):
    """SiLU-gated MLP with a fused gate|up projection."""

    def __init__(self, config: LlamaConfig, num_shards: int):
        super().__init__()
        inter = config.per_shard(num_shards)["intermediate_size"]
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * inter, bias=False)
        self.down_proj = nn.Linear(inter, config.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm attention and MLP blocks, each followed by the TP all-reduce (W > 1)."""

    def __init__(self, config: LlamaConfig, num_shards: int, kernels: _Kernels):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = nn.RMSNorm(config.hidden_size, -1, eps, bias=False)
        self.self_attn = LlamaAttention(config, num_shards, kernels)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, -1, eps, bias=False)
        self.mlp = LlamaMLP(config, num_shards)
        self.num_shards = num_shards

    def _reduce(self, x: Tensor) -> Tensor:
        return op.ccl_allreduce(x, "sum") if self.num_shards > 1 else x

    def forward(self, x: Tensor, kv_cache: Tensor, layer: int,
                pos: tirx.PrimExpr) -> tuple[Tensor, Tensor]:
        attn, kv_cache = self.self_attn(self.input_layernorm(x), kv_cache, layer, pos)
        x = self._reduce(attn) + x
        x = self._reduce(self.mlp(self.post_attention_layernorm(x))) + x
        return x, kv_cache


class LlamaModel(nn.Module):
    """Embedding, decoder layers, final norm."""

    def __init__(self, config: LlamaConfig, num_shards: int, kernels: _Kernels):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, num_shards, kernels)
                                     for _ in range(config.num_hidden_layers)])
        self.norm = nn.RMSNorm(config.hidden_size, -1, config.rms_norm_eps, bias=False)


@dataclass(frozen=True)
class _Kernels:
    rope: tirx.PrimFunc
    kv_append: tirx.PrimFunc
    attention: tirx.PrimFunc


class LlamaForCausalLM(nn.Module):
    """The whole model for one tensor-parallel worker (see the module docstring)."""

    def __init__(self, config: LlamaConfig, num_shards: int = 1, dtype: str = "float32"):
        super().__init__()
        shard = config.per_shard(num_shards)
        h, kvh, d = shard["num_attention_heads"], shard["num_key_value_heads"], config.head_dim
        kernels = _Kernels(
            rope=_rope_func(h + 2 * kvh, h + kvh, d, config.position_embedding_base, dtype),
            kv_append=_kv_append_func(config.num_hidden_layers, kvh, d, dtype),
            attention=_attention_func(config.num_hidden_layers, h, kvh, d, dtype))
        self.model = LlamaModel(config, num_shards, kernels)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.config = config
        self.num_shards = num_shards
        self.dtype = dtype
        self.kv_shape = (config.num_hidden_layers, 2, "max_seq_len", kvh, d)

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.embed_tokens(input_ids)

    def _forward(self, x: Tensor, kv_cache: Tensor, pos: tirx.PrimExpr) -> tuple[Tensor, Tensor]:
        for i, layer in enumerate(self.model.layers):
            x, kv_cache = layer(x, kv_cache, i, pos)
        hidden = x.shape[2]
        last = op.tensor_expr_op(
            lambda t: te.compute((1, 1, hidden), lambda b, _i, j: t[b, t.shape[1] - 1, j],
                                 name="last_token"),
            "take_last_token", [x])
        logits = self.lm_head(self.model.norm(last))
        if logits.dtype != "float32":
            logits = logits.astype("float32")
        return logits, kv_cache

    def prefill(self, input_embed: Tensor, kv_cache: Tensor) -> tuple[Tensor, Tensor]:
        return self._forward(input_embed, kv_cache, tirx.IntImm("int64", 0))

    def decode(self, input_embed: Tensor, kv_cache: Tensor,
               pos: tirx.Var) -> tuple[Tensor, Tensor]:
        return self._forward(input_embed, kv_cache, pos)

    def create_kv_cache(self, max_seq_len: tirx.Var) -> Tensor:
        shape = [max_seq_len if s == "max_seq_len" else s for s in self.kv_shape]
        return op.zeros(shape, self.dtype)

    def get_default_spec(self) -> dict[str, Any]:
        hidden = self.config.hidden_size
        kv = nn.spec.Tensor(list(self.kv_shape), self.dtype)
        packed = {"param_mode": "packed", "effect_mode": "none"}
        return {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", hidden], self.dtype),
                        "kv_cache": kv, "$": packed},
            "decode": {"input_embed": nn.spec.Tensor([1, 1, hidden], self.dtype),
                       "kv_cache": kv, "pos": nn.spec.Int(), "$": packed},
            "create_kv_cache": {"max_seq_len": nn.spec.Int(),
                                "$": {"param_mode": "none", "effect_mode": "none"}},
        }


# ---------------------------------------------------------------------------------------------
# Export


def metadata_dict(config: LlamaConfig, quantization: str, tensor_parallel_shards: int,
                  named_params: list[tuple[str, nn.Parameter]]) -> dict[str, Any]:
    """What ``_metadata`` returns: MLC's keys, per-shard head counts and param shapes."""
    shard = config.per_shard(tensor_parallel_shards)
    return {
        "model_type": "llama",
        "quantization": quantization,
        "context_window_size": config.context_window_size,
        "sliding_window_size": -1,
        "attention_sink_size": -1,
        "prefill_chunk_size": config.prefill_chunk_size,
        "tensor_parallel_shards": tensor_parallel_shards,
        "pipeline_parallel_stages": 1,
        "disaggregation": False,
        "kv_state_kind": "kv_cache",
        "max_batch_size": 1,
        "active_vocab_size": config.vocab_size,
        "model_task": "chat",
        "kv_cache": {
            "num_hidden_layers": config.num_hidden_layers,
            "num_attention_heads": shard["num_attention_heads"],
            "num_key_value_heads": shard["num_key_value_heads"],
            "head_dim": config.head_dim,
            # Not in MLC: this example's explicit cache tensor.
            "layout": KV_CACHE_LAYOUT,
            "dtype": model_dtype(quantization),
        },
        "memory_usage": {},
        "params": [{"name": name, "shape": [int(s) for s in p.shape], "dtype": p.dtype,
                    "preprocs": [], "pipeline_stages": [0]}
                   for name, p in named_params],
    }


def add_metadata_function(mod: tvm.IRModule, metadata: Mapping[str, Any]) -> tvm.IRModule:
    """Return ``mod`` plus a Relax function ``_metadata() -> R.str(json)`` (MLC's pattern:
    function and module attributes do not survive ``tvm.compile``)."""
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":"))
    bb = relax.BlockBuilder(mod)
    with bb.function("_metadata", params=[]):
        bb.emit_func_output(tvm.ir.StringImm(text))
    return bb.finalize()


def export_model(config: LlamaConfig, quantization: str, tensor_parallel_shards: int = 1
                 ) -> tuple[tvm.IRModule, list[tuple[str, nn.Parameter]]]:
    """Build and export the module for one worker of ``tensor_parallel_shards``.

    Returns
    -------
    (IRModule, named_params)
        ``named_params`` is the packed-params order: ``[(name, nn.Parameter)]`` with per-shard
        shapes; the same order as ``_metadata["params"]``.
    """
    dtype = model_dtype(quantization)
    config.check_tp(tensor_parallel_shards)
    model = LlamaForCausalLM(config, tensor_parallel_shards, dtype)
    model.to(dtype)
    mod, named_params = model.export_tvm(spec=model.get_default_spec(), allow_extern=False)
    meta = metadata_dict(config, quantization, tensor_parallel_shards, named_params)
    return add_metadata_function(mod, meta), list(named_params)


def build_ir_module(config: Mapping[str, Any], tensor_parallel_shards: int
                    ) -> tuple[tvm.IRModule, list[tuple[str, tuple[int, ...], str]]]:
    """The ``numaplan-model.json`` builder entry point.

    Parameters
    ----------
    config
        The parsed ``mlc-chat-config.json`` of the model directory (``quantization`` at the top,
        the architecture under ``model_config``).
    tensor_parallel_shards
        The TP degree ``W`` to build for (the modules get per-shard sizes).

    Returns
    -------
    (IRModule, params)
        The Relax module before any lowering (``R.ccl.allreduce`` still present when ``W > 1``)
        and the packed-params order as ``[(name, per_shard_shape, dtype)]``.
    """
    if "quantization" not in config:
        raise ValueError("config must be the whole mlc-chat-config.json (no 'quantization')")
    mod, named_params = export_model(LlamaConfig.from_dict(config), config["quantization"],
                                     tensor_parallel_shards)
    return mod, [(name, tuple(int(s) for s in p.shape), p.dtype) for name, p in named_params]
