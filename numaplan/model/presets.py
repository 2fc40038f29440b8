"""Hugging Face ``config.json`` contents of well-known models, for planning without a download
and for tests.

The numbers are those of the published configs (``meta-llama/Meta-Llama-3-8B``,
``meta-llama/Meta-Llama-3-70B``); the ``tiny-*`` ones are small made-up models of each supported
family, small enough to materialise weights for in tests.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from numaplan._io import dumps_canonical, write_atomic
from numaplan.model.config import HF_CONFIG_NAME

_LLAMA3_COMMON = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "max_position_embeddings": 8192,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}

LLAMA3_8B_HF: Mapping[str, Any] = MappingProxyType({
    **_LLAMA3_COMMON,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
})

LLAMA3_70B_HF: Mapping[str, Any] = MappingProxyType({
    **_LLAMA3_COMMON,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
})

#: 2 layers, hidden 64, 4 heads of 16, 2 kv heads: q4 groups split for W in {1, 2}.
TINY_LLAMA_HF: Mapping[str, Any] = MappingProxyType({
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 256,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
})

#: Qwen2-style: fused qkv with bias, tied embeddings (no lm_head).
TINY_QWEN2_HF: Mapping[str, Any] = MappingProxyType({
    **TINY_LLAMA_HF,
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "tie_word_embeddings": True,
})

#: Phi-3-style: MLC names it transformer.h.N.mixer.* with ln / post_attention_layernorm.
TINY_PHI3_HF: Mapping[str, Any] = MappingProxyType({
    **TINY_LLAMA_HF,
    "architectures": ["Phi3ForCausalLM"],
    "model_type": "phi3",
    "num_key_value_heads": 4,
})

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "llama3-8b": LLAMA3_8B_HF,
    "llama3-70b": LLAMA3_70B_HF,
    "tiny-llama": TINY_LLAMA_HF,
    "tiny-qwen2": TINY_QWEN2_HF,
    "tiny-phi3": TINY_PHI3_HF,
})


def preset_config(name: str) -> dict[str, Any]:
    """A fresh, mutable copy of preset ``name`` (see :data:`PRESETS`).

    Raises
    ------
    KeyError
        With the known names, when ``name`` is not one.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return copy.deepcopy(dict(PRESETS[name]))


def write_hf_config(directory: str | Path, config: str | Mapping[str, Any], **overrides: Any
                    ) -> Path:
    """Write a Hugging Face ``config.json`` into ``directory`` (created if needed).

    Parameters
    ----------
    directory
        Target directory.
    config
        A preset name or a config mapping.
    **overrides
        Fields to change, e.g. ``tie_word_embeddings=True``.

    Returns
    -------
    Path
        The written file.
    """
    doc = preset_config(config) if isinstance(config, str) else copy.deepcopy(dict(config))
    doc.update(overrides)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / HF_CONFIG_NAME
    write_atomic(path, dumps_canonical(doc))
    return path
