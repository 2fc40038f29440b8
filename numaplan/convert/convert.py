"""``numaplan convert MODEL.gguf -o DIR``: a GGUF file to an MLC model directory.

The directory is what ``mlc_llm convert_weight`` + ``gen_config`` write: ``params_shard_*.bin``
and ``tensor-cache.json`` (MLC's names, fused q|k|v and gate|up, the chosen quantization),
``mlc-chat-config.json`` (architecture, context window, BOS/EOS ids, a conversation template
recognised from the GGUF chat template) and ``tokenizer.json`` / ``tokenizer_config.json``
(Hugging Face's format, built from the GGUF vocabulary by :mod:`numaplan.convert.tokenizer`).

Tensors are converted one MLC parameter at a time and streamed into ~32 MB shard files, so
memory stays near the largest tensor (dequantized to float32) plus one shard. The directory
appears whole or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from numaplan._base import Frozen
from numaplan.convert.gguf_model import QUANTIZATIONS, GGUFModel, conversation_template
from numaplan.errors import ModelFormatError, UsageError
from numaplan.model.config import MLC_CONFIG_NAME
from numaplan.model.group_quant import quantize_q4
from numaplan.model.quantization import get_quantization
from numaplan.model.writer import MLCDirWriter, f32_to_bf16_bits


class ConvertResult(Frozen):
    """What a conversion wrote."""

    out_dir: str
    model_type: str
    quantization: str
    tensors: int
    nbytes: int
    shards: int


def chat_config(model: GGUFModel, quantization: str) -> dict[str, Any]:
    """The ``mlc-chat-config.json`` document of a converted model."""
    mc = model.model_config()
    tokens = model.fields.get("tokenizer.ggml.tokens") or []
    vocab = {t: i for i, t in enumerate(tokens)}
    eos = model.token_id("eos")
    conv = conversation_template(model.fields.get("tokenizer.chat_template"), vocab, eos)
    return {
        "version": "0.1.0",
        "model_type": model.model_type,
        "quantization": quantization,
        "model_config": mc,
        "vocab_size": model.vocab_size,
        "context_window_size": mc["context_window_size"],
        "sliding_window_size": -1,
        "prefill_chunk_size": mc["prefill_chunk_size"],
        "attention_sink_size": -1,
        "tensor_parallel_shards": 1,
        "pipeline_parallel_stages": 1,
        "active_vocab_size": len(tokens) or model.vocab_size,
        "temperature": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "repetition_penalty": 1.0, "top_p": 1.0,
        "tokenizer_files": ["tokenizer.json", "tokenizer_config.json"],
        "tokenizer_info": {"token_postproc_method": "byte_level",
                           "prepend_space_in_encode": False, "strip_space_in_decode": False},
        "conv_template": conv,
        "pad_token_id": model.token_id("padding") or 0,
        "bos_token_id": model.token_id("bos") if model.token_id("bos") is not None else 1,
        "eos_token_id": eos if eos is not None else 2,
        "model_task": "chat",
        "numaplan_source": {"gguf": model.path.name,
                            "name": model.fields.get("general.name", "")},
    }


def convert_gguf(path: str | Path, out_dir: str | Path, *, quantization: str = "q4f16_1"
                 ) -> ConvertResult:
    """Convert a GGUF file into a new MLC model directory.

    Parameters
    ----------
    path
        The ``.gguf`` file (architecture ``llama`` or ``qwen2``).
    out_dir
        The directory to create (must not exist, or be empty).
    quantization
        One of :data:`numaplan.convert.gguf_model.QUANTIZATIONS`.

    Raises
    ------
    ModelFormatError
        An unreadable or unsupported file (nothing is left behind).
    UsageError
        An unknown quantization, or an output directory that is not empty.
    """
    if quantization not in QUANTIZATIONS:
        raise UsageError(f"quantization {quantization!r} is not a conversion target "
                         f"(choose {', '.join(QUANTIZATIONS)})")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"output directory {out} exists and is not empty")
    model = GGUFModel(path)
    quant = get_quantization(quantization)
    from numaplan.convert.tokenizer import tokenizer_config, tokenizer_from_gguf

    try:
        tokenizer = tokenizer_from_gguf(model.fields)
    except ModelFormatError as exc:
        raise ModelFormatError(exc.message, path=model.path) from None
    except Exception as exc:  # the tokenizers library raises plain Exceptions
        raise ModelFormatError(f"the tokenizer cannot be built: {str(exc).splitlines()[0]}",
                               path=model.path) from None
    tok_config = tokenizer_config(model.fields)
    doc = chat_config(model, quantization)
    count = 0
    with MLCDirWriter(out) as writer:
        for src in model.sources():
            value = model.assemble(src)
            prefix, param = src.name.rsplit(".", 1)
            quantize = (quant.is_group_quant and value.ndim == 2 and param == "weight"
                        and (quant.quantize_final_fc or prefix != "lm_head"))
            if quantize:
                if value.shape[1] % quant.group_size:
                    raise ModelFormatError(f"{src.name}: {value.shape[1]} columns are not a "
                                           f"multiple of the group size {quant.group_size}",
                                           path=model.path)
                q_weight, q_scale = _quantize_rows(value, quant.model_dtype)
                writer.add(f"{prefix}.q_weight", q_weight)
                writer.add(f"{prefix}.q_scale", q_scale)
                count += 2
            else:
                writer.add(src.name, _cast(value, quant.model_dtype))
                count += 1
            del value
        writer.write_json(MLC_CONFIG_NAME, doc)
        writer.write_bytes("tokenizer.json", tokenizer.to_str().encode())
        writer.write_json("tokenizer_config.json", tok_config)
        writer.finish(total_params=model.unquantized_params)
    index = json.loads((out / "tensor-cache.json").read_text())
    return ConvertResult(out_dir=str(out), model_type=model.model_type,
                         quantization=quantization, tensors=count,
                         nbytes=sum(s["nbytes"] for s in index["records"]),
                         shards=len(index["records"]))


def _quantize_rows(value: np.ndarray, dtype: str, block: int = 4096
                   ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_q4` a block of rows at a time (rows are independent; whole-matrix
    temporaries of an embedding would be several times its size)."""
    rows = value.shape[0]
    q_weight = np.empty((rows, value.shape[1] // 8), np.uint32)
    q_scale = np.empty((rows, value.shape[1] // 32), dtype)
    for start in range(0, rows, block):
        q_weight[start:start + block], q_scale[start:start + block] = quantize_q4(
            value[start:start + block], dtype)
    return q_weight, q_scale


def _cast(value: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return f32_to_bf16_bits(value)
    return value.astype(dtype, copy=False)
