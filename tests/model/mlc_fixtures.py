"""Builders of MLC model directories for the workload-layer tests (imported by conftest)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from numaplan.model import (
    get_quantization,
    mlc_param_specs,
    pack_shards,
    read_hf_config,
    write_hf_config,
)


def mlc_chat_config(hf: dict[str, Any], quantization: str, **model_overrides: Any
                    ) -> dict[str, Any]:
    """A current-format mlc-chat-config.json document, shaped like ``gen_config`` output."""
    model_config = {
        "hidden_size": hf["hidden_size"],
        "intermediate_size": hf["intermediate_size"],
        "num_attention_heads": hf["num_attention_heads"],
        "num_hidden_layers": hf["num_hidden_layers"],
        "rms_norm_eps": hf.get("rms_norm_eps", 1e-5),
        "vocab_size": hf["vocab_size"],
        "tie_word_embeddings": hf.get("tie_word_embeddings", False),
        "position_embedding_base": 500000.0,
        "rope_scaling": None,
        "context_window_size": hf["max_position_embeddings"],
        "prefill_chunk_size": 2048,
        "num_key_value_heads": hf["num_key_value_heads"],
        "head_dim": hf["hidden_size"] // hf["num_attention_heads"],
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "max_batch_size": 128,
        "disaggregation": False,
    }
    model_config.update(model_overrides)
    return {
        "version": "0.1.0",
        "model_type": hf["model_type"],
        "quantization": quantization,
        "model_config": model_config,
        "vocab_size": hf["vocab_size"],
        "context_window_size": hf["max_position_embeddings"],
        "sliding_window_size": -1,
        "prefill_chunk_size": 2048,
        "attention_sink_size": -1,
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "active_vocab_size": hf["vocab_size"],
        "temperature": 0.6,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "top_p": 0.9,
        "tokenizer_files": ["tokenizer.json", "tokenizer_config.json"],
        "tokenizer_info": {"token_postproc_method": "byte_level",
                           "prepend_space_in_encode": False, "strip_space_in_decode": False},
        "conv_template": {"name": "llama-3", "system_template": "{system_message}",
                          "system_message": "", "roles": {"user": "user"}, "seps": ["<|eot_id|>"],
                          "stop_token_ids": [128001, 128009]},
        "pad_token_id": 0,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128009],
        "mean_gen_len": 128,
        "shift_fill_factor": 0.3,
    }


def write_mlc_dir(directory: Path, *, preset: str = "tiny-llama", quantization: str = "q4f16_1",
                  index_name: str = "tensor-cache.json", shard_cap_bytes: int = 4096,
                  seed: int = 0, **hf_overrides: Any) -> Path:
    """A converted MLC model directory with real (random) shard files."""
    directory.mkdir(parents=True, exist_ok=True)
    hf_path = write_hf_config(directory / "hf", preset, **hf_overrides)
    hf = json.loads(hf_path.read_text())
    config = read_hf_config(hf_path, quantization=quantization)
    cache = pack_shards(mlc_param_specs(config, get_quantization(quantization)),
                        shard_cap_bytes=shard_cap_bytes)
    rng = np.random.default_rng(seed)
    records = []
    for shard in cache.shards:
        data = rng.integers(0, 256, size=shard.nbytes, dtype=np.uint8).tobytes()
        (directory / shard.data_path).write_bytes(data)
        records.append({
            "dataPath": shard.data_path, "format": "raw-shard", "nbytes": shard.nbytes,
            "md5sum": hashlib.md5(data).hexdigest(),
            "records": [{"name": r.name, "shape": list(r.shape), "dtype": r.dtype,
                         "format": r.format, "nbytes": r.nbytes, "byteOffset": r.byte_offset}
                        for r in shard.records]})
    meta = {"ParamSize": 0, "ParamBytes": float(cache.total_nbytes), "BitsPerParam": 0.0}
    (directory / index_name).write_text(json.dumps({"metadata": meta, "records": records}))
    (directory / "mlc-chat-config.json").write_text(
        json.dumps(mlc_chat_config(hf, quantization), indent=2))
    return directory

