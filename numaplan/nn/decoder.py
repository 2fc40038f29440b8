"""The decoder-only transformer of MLC's ``llama``, ``mistral``, ``qwen2`` and ``phi3`` models.

The four families share one computation (pre-norm RMSNorm blocks, fused qkv projection, rotary
embedding, grouped-query attention over TVM's paged KV cache, SiLU-gated MLP with a fused
gate|up projection); they differ in parameter names, the qkv bias and defaults, which
:class:`Names` and :class:`numaplan.model.architecture.Architecture` carry. Parameter names and
declaration order are MLC's (``mlc_llm/model/<type>/<type>_model.py``), so the packed
parameter tuple of every exported function is ``_metadata["params"]`` in MLC's order.

Tensor parallelism is MLC's: a worker of ``W`` builds the modules at per-shard size (heads,
KV heads and the intermediate size divided by ``W``); ``qkv`` and ``gate_up`` are
column-parallel, ``o_proj`` and ``down_proj`` row-parallel with an all-reduce of their output,
and ``embed`` broadcasts worker 0's token ids so every worker computes on the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache

from numaplan.model.architecture import Architecture
from numaplan.model.quantization import Quantization
from numaplan.nn import kernels
from numaplan.nn.layers import Embedding, Linear


@dataclass(frozen=True)
class Names:
    """The module names a family gives its parameters, and the order a decoder layer declares
    its parts in (``attn``, ``mlp``, ``ln1`` = the norm before attention, ``ln2``)."""

    root: str = "model"
    embed: str = "embed_tokens"
    layers: str = "layers"
    norm: str = "norm"
    attn: str = "self_attn"
    qkv: str = "qkv_proj"
    out: str = "o_proj"
    ln1: str = "input_layernorm"
    ln2: str = "post_attention_layernorm"
    layer_order: tuple[str, ...] = ("attn", "mlp", "ln1", "ln2")


NAMES = {
    "llama": Names(),
    "mistral": Names(),
    "qwen2": Names(qkv="c_attn"),
    # mlc_llm/model/phi3/phi3_model.py: transformer.{embd, h.N.{ln, mixer, mlp, ...}, norm}.
    "phi3": Names(root="transformer", embed="embd", layers="h", attn="mixer", out="out_proj",
                  ln1="ln", layer_order=("ln1", "attn", "mlp", "ln2")),
}


class Attention(nn.Module):
    """Fused qkv projection, attention through the paged KV cache (which applies the rotary
    embedding and appends k, v), output projection."""

    def __init__(self, arch: Architecture, quant: Quantization, shards: int) -> None:
        super().__init__()
        per = arch.per_shard(shards)
        self.num_heads = per["num_attention_heads"]
        self.num_kv_heads = per["num_key_value_heads"]
        self.head_dim = arch.head_dim
        rows = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        names = NAMES[arch.model_type]
        self.names = names
        setattr(self, names.qkv, Linear(arch.hidden_size, rows, quant, bias=arch.qkv_bias))
        setattr(self, names.out, Linear(self.num_heads * self.head_dim, arch.hidden_size, quant))

    def forward(self, x: Tensor, kv: PagedKVCache, layer: int) -> Tensor:
        b, s, _ = x.shape
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        kv_dtype = kernels.current_policy().kv_dtype or x.dtype
        qkv = getattr(self, self.names.qkv)(x, out_dtype=kv_dtype)
        qkv = op.reshape(qkv, (b, s, h + 2 * kvh, d))
        out = kv.attention_with_fused_qkv(layer, qkv, h, sm_scale=d ** -0.5)
        if out.dtype != x.dtype:
            out = out.astype(x.dtype)
        return getattr(self, self.names.out)(op.reshape(out, (b, s, h * d)))


class MLP(nn.Module):
    """``down(silu(gate) * up)`` with gate and up fused in one projection."""

    def __init__(self, arch: Architecture, quant: Quantization, shards: int) -> None:
        super().__init__()
        inter = arch.per_shard(shards)["intermediate_size"]
        self.gate_up_proj = Linear(arch.hidden_size, 2 * inter, quant)
        self.down_proj = Linear(inter, arch.hidden_size, quant)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class DecoderLayer(nn.Module):
    """Pre-norm attention and MLP blocks; with ``W > 1`` each block's output is all-reduced
    before the residual add (Phi-3's ``allreduce(out + residual / W)`` is the same sum)."""

    def __init__(self, arch: Architecture, quant: Quantization, shards: int) -> None:
        super().__init__()
        names = NAMES[arch.model_type]
        eps, dtype = arch.rms_norm_eps, quant.model_dtype
        parts = {
            "attn": (names.attn, lambda: Attention(arch, quant, shards)),
            "mlp": ("mlp", lambda: MLP(arch, quant, shards)),
            "ln1": (names.ln1, lambda: nn.RMSNorm(arch.hidden_size, -1, eps, bias=False,
                                                  dtype=dtype)),
            "ln2": (names.ln2, lambda: nn.RMSNorm(arch.hidden_size, -1, eps, bias=False,
                                                  dtype=dtype)),
        }
        for part in names.layer_order:  # declaration order = MLC's parameter order
            attr, make = parts[part]
            setattr(self, attr, make())
        self.names = names
        self.shards = shards

    def _reduce(self, x: Tensor) -> Tensor:
        return op.ccl_allreduce(x, "sum") if self.shards > 1 else x

    def forward(self, x: Tensor, kv: PagedKVCache, layer: int) -> Tensor:
        n = self.names
        attn = getattr(self, n.attn)(getattr(self, n.ln1)(x), kv, layer)
        x = self._reduce(attn) + x
        return self._reduce(self.mlp(getattr(self, n.ln2)(x))) + x


class DecoderModel(nn.Module):
    """Embedding, layers, final norm (MLC's ``<Family>Model``)."""

    def __init__(self, arch: Architecture, quant: Quantization, shards: int) -> None:
        super().__init__()
        names = NAMES[arch.model_type]
        setattr(self, names.embed, Embedding(arch.vocab_size, arch.hidden_size, quant))
        setattr(self, names.layers, nn.ModuleList([DecoderLayer(arch, quant, shards)
                                                   for _ in range(arch.num_hidden_layers)]))
        setattr(self, names.norm, nn.RMSNorm(arch.hidden_size, -1, arch.rms_norm_eps,
                                             bias=False, dtype=quant.model_dtype))
        self.names = names

    @property
    def embedding(self) -> Embedding:
        """The token embedding (also the output projection when tied)."""
        return getattr(self, self.names.embed)

    def forward(self, x: Tensor, kv: PagedKVCache) -> Tensor:
        for i, layer in enumerate(getattr(self, self.names.layers)):
            x = layer(x, kv, i)
        return getattr(self, self.names.norm)(x)


class CausalLM(nn.Module):
    """One tensor-parallel worker's model: decoder plus output projection.

    ``lm_head`` exists only when embeddings are not tied (MLC's convention); logits are float32.
    """

    def __init__(self, arch: Architecture, quant: Quantization, shards: int = 1) -> None:
        super().__init__()
        setattr(self, NAMES[arch.model_type].root, DecoderModel(arch, quant, shards))
        if not arch.tie_word_embeddings:
            self.lm_head = Linear(arch.hidden_size, arch.vocab_size, quant,
                                  quantized=quant.quantize_final_fc)
        self.arch = arch
        self.quant = quant
        self.shards = shards
        self.dtype = quant.model_dtype

    @property
    def decoder(self) -> DecoderModel:
        """The decoder (MLC's ``model`` / Phi-3's ``transformer``)."""
        return getattr(self, NAMES[self.arch.model_type].root)

    def logits(self, hidden: Tensor) -> Tensor:
        """Output projection of final hidden states, float32."""
        if self.arch.tie_word_embeddings:
            return self.decoder.embedding.lm_head(hidden)
        return self.lm_head(hidden, out_dtype="float32")

    def embed(self, input_ids: Tensor) -> Tensor:
        """``[n] int32 -> [n, hidden]``; worker 0's ids win under tensor parallelism."""
        if self.shards > 1:
            input_ids = op.ccl_broadcast_from_worker0(input_ids)
        return self.decoder.embedding(input_ids)

    def prefill(self, input_embed: Tensor, paged_kv_cache: PagedKVCache
                ) -> tuple[Tensor, PagedKVCache]:
        """Run the tokens the cache's ``begin_forward`` announced; logits of the last one."""
        hidden = self.decoder(input_embed, paged_kv_cache)

        def last(x: te.Tensor) -> te.Tensor:
            n = x.shape[1]
            return te.compute((1, 1, x.shape[2]), lambda b, _i, j: x[b, n - 1, j],
                              name="last_token")

        hidden = op.tensor_expr_op(last, "take_last_token", [hidden])
        return self.logits(hidden), paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache
               ) -> tuple[Tensor, PagedKVCache]:
        """One token of one sequence: ``[1, 1, hidden] -> logits [1, 1, vocab]``."""
        return self.logits(self.decoder(input_embed, paged_kv_cache)), paged_kv_cache

    def batch_prefill(self, input_embeds: Tensor, logit_positions: Tensor,
                      paged_kv_cache: PagedKVCache) -> tuple[Tensor, PagedKVCache]:
        """Several sequences' tokens concatenated; logits at ``logit_positions`` (one per
        sequence, the index of its last token): ``[1, num_seq, vocab]``."""
        if self.shards > 1:
            logit_positions = op.ccl_broadcast_from_worker0(logit_positions)
        hidden = self.decoder(input_embeds, paged_kv_cache)
        hidden = op.take(hidden, logit_positions, axis=1)
        return self.logits(hidden), paged_kv_cache

    def batch_decode(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache
                     ) -> tuple[Tensor, PagedKVCache]:
        """One token for each of ``batch`` sequences: ``[batch, 1, hidden]``."""
        return self.logits(self.decoder(input_embeds, paged_kv_cache)), paged_kv_cache

    def batch_verify(self, input_embeds: Tensor, paged_kv_cache: PagedKVCache
                     ) -> tuple[Tensor, PagedKVCache]:
        """Logits at every position of the announced tokens: ``[1, n, vocab]``."""
        return self.logits(self.decoder(input_embeds, paged_kv_cache)), paged_kv_cache

    def create_paged_kv_cache(self, max_batch_size: tirx.Var, max_total_seq_len: tirx.Var,
                              prefill_chunk_size: tirx.Var, page_size: tirx.Var,
                              support_sliding_window: tirx.Var) -> PagedKVCache:
        """TVM's paged KV cache with its TIR kernels (CPU ones for an ``llvm`` target)."""
        from numaplan.nn.kv_cache import paged_kv_cache

        return paged_kv_cache(self.arch, self.quant, self.shards, max_batch_size,
                              max_total_seq_len, prefill_chunk_size, page_size,
                              support_sliding_window)

    #: MLC's engine looks the cache creation up under this name (``DispatchKVCacheCreation``).
    create_tir_paged_kv_cache = create_paged_kv_cache
