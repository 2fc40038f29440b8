"""Small random-weight models of every family, written in MLC's format and built once a session."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from numaplan.model.random_model import chat_config, write_random_model

#: Sizes that exercise GQA, several shard files and every kernel path (K multiple of 128 and
#: of 64 only) while building in seconds.
SIZES = dict(hidden_size=128, intermediate_size=192, num_attention_heads=4,
             num_key_value_heads=2, num_hidden_layers=2, vocab_size=160,
             context_window_size=128, prefill_chunk_size=16)
TIED = {"qwen2": True, "phi3": False, "llama": True, "mistral": False}


@dataclass
class Built:
    """A model directory and its library (TP=1)."""

    model_dir: Path
    lib: Path
    doc: dict[str, Any]


_CACHE: dict[tuple, Built] = {}


def build(root: Path, model_type: str, quantization: str, *, shards: int = 1,
          q4_activations: str = "float", **overrides: Any) -> Built:
    """Write (once) and build (once per worker count) a model."""
    import hashlib
    import json

    import tvm

    from numaplan.nn.export import build_ir_module
    from numaplan.passes.pipeline import numaplan_pipeline
    from numaplan.passes.schedules import resolve_target

    extra = json.dumps(overrides, sort_keys=True)
    key = (model_type, quantization, shards, q4_activations, extra)
    if key in _CACHE:
        return _CACHE[key]
    name = f"{model_type}-{quantization}-{hashlib.sha1(extra.encode()).hexdigest()[:8]}"
    model_dir = root / name
    doc = chat_config(model_type, quantization, **{**SIZES, "tie_word_embeddings":
                                                    TIED[model_type], **overrides})
    if not model_dir.exists():
        write_random_model(model_dir, doc, shard_cap_bytes=1 << 16,
                           data_path_suffix="?download=true")
    lib = model_dir.parent / f"{name}-w{shards}-{q4_activations}.so"
    if not lib.exists():
        mod, _ = build_ir_module(doc, shards, q4_activations=q4_activations)
        target = resolve_target("llvm")
        ex = tvm.compile(mod, target=target, relax_pipeline=numaplan_pipeline(target, None))
        ex.export_library(str(lib))
    _CACHE[key] = Built(model_dir, lib, doc)
    return _CACHE[key]


@pytest.fixture(scope="session")
def model_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("nn-models")
