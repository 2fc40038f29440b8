"""A model directory with random weights, laid out exactly as ``mlc_llm convert_weight`` lays
out a real one (names, order, dtypes, quantization, shards, ``f32-to-bf16`` records).

Tests, the demo and the benchmarks need models of any family, size and quantization without
downloading one. The weights are drawn per tensor from a seed (same arguments, same bytes), at
scales that keep activations of order one through any depth (linears ~ N(0, 1/in), norms near
one), so greedy decoding is not degenerate and small numeric differences show.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from numaplan.model.config import MLC_CONFIG_NAME, parse_mlc_config
from numaplan.model.group_quant import quantize_q4
from numaplan.model.quantization import get_quantization
from numaplan.model.synthetic import mlc_param_specs
from numaplan.model.writer import MLCDirWriter

#: A conversation template in MLC's schema (``chatml``), for directories made here.
CHATML = {
    "name": "chatml",
    "system_template": "<|im_start|>system\n{system_message}<|im_end|>\n",
    "system_message": "You are a helpful assistant.",
    "system_prefix_token_ids": None,
    "add_role_after_system_message": True,
    "roles": {"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"},
    "role_templates": {"user": "{user_message}", "assistant": "{assistant_message}",
                       "tool": "{tool_message}"},
    "messages": [],
    "seps": ["<|im_end|>\n"],
    "role_content_sep": "\n",
    "role_empty_sep": "\n",
    "stop_str": ["<|im_end|>"],
    "stop_token_ids": [2],
    "function_string": "",
    "use_function_calling": False,
}


def chat_config(model_type: str, quantization: str, *, hidden_size: int,
                intermediate_size: int, num_attention_heads: int, num_key_value_heads: int,
                num_hidden_layers: int, vocab_size: int, head_dim: int | None = None,
                tie_word_embeddings: bool = False, context_window_size: int = 512,
                prefill_chunk_size: int = 128, rope_theta: float = 10000.0,
                rms_norm_eps: float = 1e-5, rope_scaling: dict[str, Any] | None = None,
                sliding_window_size: int = -1, **extra: Any) -> dict[str, Any]:
    """An ``mlc-chat-config.json`` document shaped like ``gen_config``'s output."""
    head_dim = head_dim or hidden_size // num_attention_heads
    mc: dict[str, Any] = {
        "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_attention_heads": num_attention_heads, "num_hidden_layers": num_hidden_layers,
        "rms_norm_eps": rms_norm_eps, "vocab_size": vocab_size,
        "tie_word_embeddings": tie_word_embeddings, "rope_scaling": rope_scaling,
        "context_window_size": context_window_size, "prefill_chunk_size": prefill_chunk_size,
        "num_key_value_heads": num_key_value_heads, "head_dim": head_dim,
        "tensor_parallel_shards": 1, "max_batch_size": 8,
    }
    if model_type == "qwen2":
        mc["rope_theta"] = rope_theta
        mc["hidden_act"] = "silu"
    else:
        mc["position_embedding_base"] = rope_theta
    if model_type == "mistral":
        mc["sliding_window_size"] = sliding_window_size
        mc["attention_sink_size"] = 4
        mc.pop("tie_word_embeddings")
        mc.pop("rope_scaling")
    mc.update(extra)
    return {
        "version": "0.1.0", "model_type": model_type, "quantization": quantization,
        "model_config": mc, "vocab_size": vocab_size,
        "context_window_size": context_window_size,
        "sliding_window_size": sliding_window_size, "prefill_chunk_size": prefill_chunk_size,
        "attention_sink_size": 4 if model_type == "mistral" else -1,
        "tensor_parallel_shards": 1, "pipeline_parallel_stages": 1,
        "active_vocab_size": vocab_size, "temperature": 1.0, "presence_penalty": 0.0,
        "frequency_penalty": 0.0, "repetition_penalty": 1.0, "top_p": 1.0,
        "tokenizer_files": [], "conv_template": CHATML,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    }


def _rng(seed: int, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The float32 value of one unquantized parameter."""
    rng = _rng(seed, name)
    if len(shape) == 1:
        if name.endswith(".bias"):
            return (0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    module = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
    std = 1.0 if module.startswith("emb") else shape[1] ** -0.5
    return (std * rng.standard_normal(shape)).astype(np.float32)


def write_random_model(out_dir: str | Path, doc: dict[str, Any], *, seed: int = 0,
                       shard_cap_bytes: int | None = None, data_path_suffix: str = "") -> Path:
    """Write ``doc`` (an ``mlc-chat-config.json``) and random weights into ``out_dir``.

    Parameters
    ----------
    out_dir
        A new directory.
    doc
        The chat config; its ``quantization`` decides the stored tensors.
    seed
        Weights are a function of (seed, tensor name).
    shard_cap_bytes
        Shard cap (default MLC's 32 MiB; tests pass small caps to get many files).
    data_path_suffix
        Appended to every ``dataPath`` in the index (``"?download=1"``-style suffixes occur in
        real files and must be ignored by readers).
    """
    import json

    config = parse_mlc_config(doc)
    quant = get_quantization(config.quantization)
    plain = get_quantization({"float16": "q0f16", "float32": "q0f32",
                              "bfloat16": "q0bf16"}[quant.model_dtype])
    kwargs = {} if shard_cap_bytes is None else {"shard_cap_bytes": shard_cap_bytes}
    total = 0
    with MLCDirWriter(out_dir, **kwargs) as w:
        for spec in mlc_param_specs(config, plain):
            value = random_tensor(spec.name, spec.shape, seed)
            total += value.size
            prefix = spec.name.rsplit(".", 1)[0]
            is_head = prefix == "lm_head"
            quantize = (quant.is_group_quant and value.ndim == 2
                        and (quant.quantize_final_fc or not is_head))
            if quantize:
                q_weight, q_scale = quantize_q4(value, quant.model_dtype)
                w.add(f"{prefix}.q_weight", q_weight)
                w.add(f"{prefix}.q_scale", q_scale)
            elif quant.model_dtype == "bfloat16":
                from numaplan.model.writer import f32_to_bf16_bits

                w.add(spec.name, f32_to_bf16_bits(value))
            else:
                w.add(spec.name, value.astype(quant.model_dtype))
        w.write_json(MLC_CONFIG_NAME, doc)
        path = w.finish(total_params=total)
    if data_path_suffix:
        index = path / "tensor-cache.json"
        cache = json.loads(index.read_text())
        for shard in cache["records"]:
            shard["dataPath"] += data_path_suffix
        index.write_text(json.dumps(cache, indent=4))
    return path
