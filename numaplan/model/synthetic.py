"""A weight index computed from a config alone, as ``mlc_llm convert_weight`` would write it.

Lets numaplan plan a model that has not been converted yet (only its Hugging Face
``config.json``): the parameter names, shapes and dtypes come from MLC's nn model for the family
and the quantization, and the records are packed into ``params_shard_K.bin`` files exactly as
``tvmjs.dump_tensor_cache`` packs them (32 MiB cap, commit when ``pending + len >= cap``, a
tensor with ``2 * len >= cap`` gets a file of its own).

The one thing that cannot be reproduced is the order: ``convert_weight`` emits parameters in the
order of the Hugging Face safetensors files, which the config does not give. The synthetic index
uses the nn model's declaration order instead, so sizes and shapes are exact while the packing
into files (and so offsets and the file count) can differ from a real conversion.
"""

from __future__ import annotations

from collections.abc import Iterable

from numaplan.errors import ModelFormatError
from numaplan.model.config import ModelConfig
from numaplan.model.dtypes import encoded_itemsize, numel
from numaplan.model.quantization import ParamSpec, Quantization
from numaplan.model.tensor_cache import ShardFile, TensorCache, TensorRecord

#: ``tvmjs.dump_tensor_cache(shard_cap_mb=32)``.
SHARD_CAP_BYTES = 32 << 20

#: Families whose MLC parameter layout numaplan can synthesise.
SUPPORTED_FAMILIES = ("llama", "mistral", "qwen2", "phi3")


def mlc_param_specs(config: ModelConfig, quant: Quantization) -> tuple[ParamSpec, ...]:
    """Every parameter MLC's model for ``config.model_type`` declares, in declaration order.

    Parameters
    ----------
    config
        The model configuration (unsharded sizes).
    quant
        The quantization the weights are converted with.

    Raises
    ------
    ModelFormatError
        When the family is not one of :data:`SUPPORTED_FAMILIES`.
    """
    family = config.model_type
    if family not in SUPPORTED_FAMILIES:
        raise ModelFormatError(f"cannot derive MLC tensors for model_type {family!r}; "
                               f"supported: {', '.join(SUPPORTED_FAMILIES)}")
    c, q = config, quant
    qkv_rows = (c.num_attention_heads + 2 * c.num_key_value_heads) * c.head_dim
    attn_rows = c.num_attention_heads * c.head_dim
    if family == "phi3":
        # mlc_llm/model/phi3/phi3_model.py: Phi3ForCausalLM.transformer.{embd, h, norm};
        # Phi3ParallelBlock declares ln, mixer, mlp, post_attention_layernorm in that order.
        embed, final_norm = "transformer.embd", "transformer.norm"
        layer_params = [
            lambda p: q.norm_params(f"{p}.ln", c.hidden_size),
            lambda p: q.linear_params(f"{p}.mixer.qkv_proj", qkv_rows, c.hidden_size),
            lambda p: q.linear_params(f"{p}.mixer.out_proj", c.hidden_size, attn_rows),
            lambda p: q.linear_params(f"{p}.mlp.gate_up_proj", 2 * c.intermediate_size,
                                      c.hidden_size),
            lambda p: q.linear_params(f"{p}.mlp.down_proj", c.hidden_size, c.intermediate_size),
            lambda p: q.norm_params(f"{p}.post_attention_layernorm", c.hidden_size),
        ]
        layer_prefix = "transformer.h.{}"
    else:
        # llama / mistral / qwen2: *ForCausalLM.model.{embed_tokens, layers, norm}; a decoder
        # layer declares self_attn, mlp, input_layernorm, post_attention_layernorm.
        qkv_name, bias = ("c_attn", True) if family == "qwen2" else ("qkv_proj", False)
        embed, final_norm = "model.embed_tokens", "model.norm"
        layer_params = [
            lambda p: q.linear_params(f"{p}.self_attn.{qkv_name}", qkv_rows, c.hidden_size,
                                      bias=bias),
            lambda p: q.linear_params(f"{p}.self_attn.o_proj", c.hidden_size, attn_rows),
            lambda p: q.linear_params(f"{p}.mlp.gate_up_proj", 2 * c.intermediate_size,
                                      c.hidden_size),
            lambda p: q.linear_params(f"{p}.mlp.down_proj", c.hidden_size, c.intermediate_size),
            lambda p: q.norm_params(f"{p}.input_layernorm", c.hidden_size),
            lambda p: q.norm_params(f"{p}.post_attention_layernorm", c.hidden_size),
        ]
        layer_prefix = "model.layers.{}"
    specs: list[ParamSpec] = list(q.embedding_params(embed, c.vocab_size, c.hidden_size))
    for i in range(c.num_hidden_layers):
        for params in layer_params:
            specs += params(layer_prefix.format(i))
    specs += q.norm_params(final_norm, c.hidden_size)
    if not c.tie_word_embeddings:
        specs += q.linear_params("lm_head", c.vocab_size, c.hidden_size, final_fc=True)
    return tuple(specs)


def pack_shards(specs: Iterable[ParamSpec], *, shard_cap_bytes: int = SHARD_CAP_BYTES,
                encoding: str = "f32-to-bf16") -> TensorCache:
    """Lay parameters out in shard files the way ``tvmjs.dump_tensor_cache`` does.

    Parameters
    ----------
    specs
        Parameters in emission order.
    shard_cap_bytes
        The shard size cap (32 MiB in MLC).
    encoding
        The format written on every record; MLC always passes ``f32-to-bf16``.

    Returns
    -------
    TensorCache
        With ``index_name == ""`` and no md5 sums.
    """
    shards: list[ShardFile] = []
    pending: list[TensorRecord] = []
    pending_nbytes = 0

    def commit(records: list[TensorRecord], nbytes: int) -> None:
        shards.append(ShardFile(data_path=f"params_shard_{len(shards)}.bin", nbytes=nbytes,
                                records=tuple(records)))

    for spec in specs:
        nbytes = numel(spec.shape) * encoded_itemsize(spec.dtype, encoding)

        def record(offset: int, spec: ParamSpec = spec, nbytes: int = nbytes) -> TensorRecord:
            return TensorRecord(name=spec.name, shape=spec.shape, dtype=spec.dtype,
                                format=encoding, nbytes=nbytes,  # type: ignore[arg-type]
                                byte_offset=offset)

        if pending_nbytes + nbytes >= shard_cap_bytes:
            if 2 * nbytes >= shard_cap_bytes:
                # Out of band: written at once to its own file, ahead of the pending shard.
                commit([record(0)], nbytes)
                continue
            if pending:
                commit(pending, pending_nbytes)
            pending, pending_nbytes = [], 0
        pending.append(record(pending_nbytes))
        pending_nbytes += nbytes
    # tvmjs drops a final shard of only empty tensors; keeping their records is the safer reading.
    if pending:
        commit(pending, pending_nbytes)
    return TensorCache(index_name="", shards=tuple(shards))


def synthesize_tensor_cache(config: ModelConfig, quant: Quantization) -> TensorCache:
    """The index ``convert_weight`` would write for ``config`` under ``quant`` (see module doc)."""
    return pack_shards(mlc_param_specs(config, quant))
