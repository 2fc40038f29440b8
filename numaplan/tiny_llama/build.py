"""Write a complete MLC-format model directory for the example, with random weights from a seed.

The directory is an ordinary MLC weights directory (``mlc-chat-config.json``,
``tensor-cache.json``, ``params_shard_*.bin``, written by TVM's own
``tvm.contrib.tvmjs.dump_tensor_cache`` with ``encode_format="f32-to-bf16"`` as
``mlc_llm convert_weight`` does), holding the *full* (unsharded) weights, plus
``numaplan-model.json``, which says how to rebuild the Relax module for any TP degree (see
``examples/tiny_llama/README.md``).

Run ``python -m numaplan.tiny_llama.build OUT_DIR [--size default|bench] [--dtype float32|float16]
[--seed 0]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from numaplan.tiny_llama.config import (
    KV_CACHE_LAYOUT,
    LlamaConfig,
    get_size,
    model_dtype,
    quantization_for,
)

#: The file naming the Relax builder (the contract with ``numaplan compile``; see
#: ``examples/tiny_llama/README.md``).
NUMAPLAN_MODEL_NAME = "numaplan-model.json"
#: The builder ``numaplan-model.json`` names.
BUILDER = "numaplan.tiny_llama.model:build_ir_module"
NUMAPLAN_MODEL_SCHEMA = 1


def bf16_round(x: np.ndarray) -> np.ndarray:
    """``x`` (float32) truncated to values bfloat16 represents exactly, so that MLC's
    ``f32-to-bf16`` storage round-trips without change."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def _tensor_seed(seed: int, name: str) -> list[int]:
    # Per-tensor streams: a tensor's values depend only on (seed, name), not on order or size
    # of the others.
    return [seed, zlib.crc32(name.encode())]


def _scale(config: LlamaConfig, name: str) -> tuple[float, float]:
    """(mean, std) of a tensor: unit-variance activations through every layer."""
    if name.endswith("norm.weight"):
        return 1.0, 0.1
    if "embed_tokens" in name:
        return 0.0, 1.0
    if name.endswith("o_proj.weight"):
        return 0.0, 0.5 / np.sqrt(config.num_attention_heads * config.head_dim)
    if name.endswith("down_proj.weight"):
        return 0.0, 0.5 / np.sqrt(config.intermediate_size)
    return 0.0, 1.0 / np.sqrt(config.hidden_size)  # qkv, gate_up, lm_head (in = hidden)


def generate_tensor(config: LlamaConfig, name: str, dtype: str, seed: int = 0) -> np.ndarray:
    """One full (unsharded) weight, exactly as :func:`build_model_dir` writes it.

    float32 values are bf16-representable (the on-disk round trip is exact); float16 values are
    the float32 draw rounded to float16.
    """
    shape = config.param_shapes()[name]
    mean, std = _scale(config, name)
    rng = np.random.default_rng(_tensor_seed(seed, name))
    x = rng.standard_normal(shape, dtype=np.float32)
    x *= np.float32(std)
    if mean:
        x += np.float32(mean)
    if dtype == "float32":
        return bf16_round(x)
    if dtype == "float16":
        return x.astype(np.float16)
    raise ValueError(f"unsupported dtype {dtype!r}")


def generate_weights(config: LlamaConfig, dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Every full weight, in packed-params order (see :func:`generate_tensor`)."""
    return {name: generate_tensor(config, name, dtype, seed) for name in config.param_names()}


def _conv_template() -> dict[str, Any]:
    """A plain-LM conversation template in MLC's object form (no chat roles)."""
    return {
        "name": "LM",
        "system_template": "{system_message}",
        "system_message": "",
        "system_prefix_token_ids": [1],
        "add_role_after_system_message": True,
        "roles": {"user": "", "assistant": ""},
        "role_templates": {"user": "{user_message}", "assistant": "{assistant_message}",
                           "tool": "{tool_message}"},
        "messages": [],
        "seps": [""],
        "role_content_sep": "",
        "role_empty_sep": "",
        "stop_str": [],
        "stop_token_ids": [2],
        "function_string": "",
        "use_function_calling": False,
    }


def mlc_chat_config(config: LlamaConfig, quantization: str,
                    tensor_parallel_shards: int = 1) -> dict[str, Any]:
    """The ``mlc-chat-config.json`` document (current MLC format, version 0.1.0)."""
    model_config = config.to_dict()
    model_config.update(tensor_parallel_shards=tensor_parallel_shards, rope_scaling=None,
                        pipeline_parallel_stages=1, max_batch_size=1, disaggregation=False)
    return {
        "version": "0.1.0",
        "model_type": "llama",
        "quantization": quantization,
        "model_config": model_config,
        "vocab_size": config.vocab_size,
        "context_window_size": config.context_window_size,
        "sliding_window_size": -1,
        "prefill_chunk_size": config.prefill_chunk_size,
        "attention_sink_size": -1,
        "tensor_parallel_shards": tensor_parallel_shards,
        "pipeline_parallel_stages": 1,
        "active_vocab_size": config.vocab_size,
        "temperature": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "top_p": 1.0,
        "tokenizer_files": [],
        "tokenizer_info": {"token_postproc_method": "byte_fallback",
                           "prepend_space_in_encode": False, "strip_space_in_decode": False},
        "conv_template": _conv_template(),
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "model_task": "chat",
    }


def numaplan_model_doc(config: LlamaConfig, quantization: str, *, size: str, seed: int
                       ) -> dict[str, Any]:
    """The ``numaplan-model.json`` document (the contract: ``examples/tiny_llama/README.md``)."""
    return {
        "schema_version": NUMAPLAN_MODEL_SCHEMA,
        "kind": "relax-nn-builder",
        "builder": BUILDER,
        "builder_signature": "build_ir_module(config: dict, tensor_parallel_shards: int) -> "
                             "(tvm.IRModule, [(name, per_shard_shape, dtype)])",
        "config": "mlc-chat-config.json",
        "tensor_parallel_shards": config.valid_tp_degrees(),
        "functions": {
            "embed": "(input_ids[seq_len] int32, params) -> [seq_len, hidden]",
            "prefill": "(input_embed[1, seq_len, hidden], kv_cache, params) -> "
                       "(logits[1, 1, vocab] float32, kv_cache)",
            "decode": "(input_embed[1, 1, hidden], kv_cache, Shape([pos]), params) -> "
                      "(logits[1, 1, vocab] float32, kv_cache)",
            "create_kv_cache": "(Shape([max_seq_len])) -> kv_cache (zeros)",
            "_metadata": "() -> str (JSON)",
        },
        "kv_cache": {"layout": KV_CACHE_LAYOUT, "dtype": model_dtype(quantization),
                     "per_shard": "num_key_value_heads / tensor_parallel_shards",
                     "updated_in_place": True},
        "params_order": "_metadata.params (packed tuple, per-shard shapes)",
        "generator": {"size": size, "seed": seed, "dtype": model_dtype(quantization)},
    }


def build_model_dir(out_dir: str | Path, *, size: str | LlamaConfig | Mapping[str, Any] =
                    "default", dtype: str = "float32", seed: int = 0,
                    tensor_parallel_shards: int = 1, shard_cap_mb: int = 32) -> Path:
    """Write the example model as an MLC model directory.

    Parameters
    ----------
    out_dir
        Created if missing; existing files of the same names are overwritten.
    size
        ``"default"`` (seconds), ``"bench"`` (~430 MB float32), ``"tiny"``, or a
        :class:`LlamaConfig` / ``model_config`` dict.
    dtype
        ``"float32"`` (quantization ``q0f32``, stored bf16 on disk as MLC does) or ``"float16"``
        (``q0f16``); the quantization names are accepted too.
    seed
        Weights are a function of ``(seed, tensor name)`` only (see :func:`generate_tensor`).
    tensor_parallel_shards
        Written to the config (the weights stay full; MLC shards at load time).
    shard_cap_mb
        ``dump_tensor_cache``'s shard size cap (MLC's default is 32).

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    from tvm.contrib import tvmjs  # the only TVM use: MLC's own writer

    config = get_size(size)
    quantization = quantization_for(dtype)
    np_dtype = model_dtype(quantization)
    config.check_tp(tensor_parallel_shards)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size_name = size if isinstance(size, str) else "custom"
    params = ((name, generate_tensor(config, name, np_dtype, seed))
              for name in config.param_names())
    nbytes = sum(int(np.prod(s)) for s in config.param_shapes().values()) * (
        4 if np_dtype == "float32" else 2)
    meta = {"ParamSize": config.num_params(), "ParamBytes": float(nbytes),
            "BitsPerParam": 32.0 if np_dtype == "float32" else 16.0}
    # dump_tensor_cache prints progress lines unconditionally.
    with contextlib.redirect_stdout(io.StringIO()):
        tvmjs.dump_tensor_cache(params, str(out), encode_format="f32-to-bf16", meta_data=meta,
                                shard_cap_mb=shard_cap_mb, show_progress=False)
    _write_json(out / "mlc-chat-config.json",
                mlc_chat_config(config, quantization, tensor_parallel_shards))
    _write_json(out / NUMAPLAN_MODEL_NAME,
                numaplan_model_doc(config, quantization, size=size_name, seed=seed))
    return out


def _write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m numaplan.tiny_llama.build",
                                     description="Write the tiny Llama example as an MLC "
                                                 "model directory.")
    parser.add_argument("out_dir")
    parser.add_argument("--size", default="default", choices=["default", "bench", "tiny"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tensor-parallel-shards", type=int, default=1)
    args = parser.parse_args(argv)
    out = build_model_dir(args.out_dir, size=args.size, dtype=args.dtype, seed=args.seed,
                          tensor_parallel_shards=args.tensor_parallel_shards)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
