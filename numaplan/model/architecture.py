"""The facts a model definition needs beyond sizes: norms, rotary embedding, biases, windows.

:class:`numaplan.model.config.ModelConfig` keeps what planning needs; building and running a
model also needs the rotary base and scaling, the norm epsilon, whether the attention projection
has a bias, the prefill chunk and the sliding window. They are read from the same
``mlc-chat-config.json`` (``model_config`` first, then the top-level copies), with the defaults
MLC's model configs use for each ``model_type`` (``mlc_llm/model/<type>/<type>_model.py``):

============  ====================  =========  ========  ==============================
model_type    rotary base field     norm eps   qkv bias  attention names
============  ====================  =========  ========  ==============================
llama         position_embedding_   1e-5       no        self_attn.qkv_proj / o_proj
              base (or rope_theta)
mistral       same                  1e-5       no        same; sliding_window_size
qwen2         rope_theta            1e-6       yes       self_attn.c_attn / o_proj
phi3          position_embedding_   1e-5       no        self_attn.qkv_proj / o_proj
              base (or rope_theta)
============  ====================  =========  ========  ==============================
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import model_validator

from numaplan.errors import ModelFormatError
from numaplan.model.config import ModelConfig, first_error, parse_mlc_config
from numaplan.model.sizes import DEFAULT_KV_WINDOW

#: The ``model_type`` values numaplan has a model definition for.
MODEL_TYPES = ("llama", "mistral", "qwen2", "phi3")

_DEFAULT_EPS = {"qwen2": 1e-6}
_QKV_BIAS = frozenset({"qwen2"})
#: MLC's default prefill chunk when a config gives none.
DEFAULT_PREFILL_CHUNK = 2048


class Architecture(ModelConfig):
    """One model's architecture, full (unsharded) sizes: the planner's
    :class:`~numaplan.model.config.ModelConfig` plus what a model definition needs.

    ``rope_scaling`` is the Hugging Face / MLC dict (``{"rope_type": "llama3", "factor": 8.0,
    ...}``) or ``None``; ``sliding_window_size`` is ``-1`` when attention is not windowed.
    """

    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None = None
    qkv_bias: bool = False
    prefill_chunk_size: int

    @model_validator(mode="after")
    def _check(self) -> Architecture:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"no model definition for model_type {self.model_type!r} "
                             f"(supported: {', '.join(MODEL_TYPES)})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for the rotary embedding")
        return self

    def per_shard(self, num_shards: int) -> dict[str, int]:
        """What one of ``num_shards`` tensor-parallel workers builds (MLC's division)."""
        for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
            if getattr(self, name) % num_shards:
                raise ModelFormatError(f"{name}={getattr(self, name)} does not split over "
                                       f"{num_shards} tensor-parallel workers")
        return {"num_attention_heads": self.num_attention_heads // num_shards,
                "num_key_value_heads": self.num_key_value_heads // num_shards,
                "intermediate_size": self.intermediate_size // num_shards}

    @property
    def kv_window(self) -> int:
        """Tokens a sequence may hold in the KV cache: the context window, or the sliding
        window for windowed models with no fixed context."""
        if self.context_window_size > 0:
            return self.context_window_size
        return self.sliding_window_size if self.sliding_window_size > 0 else DEFAULT_KV_WINDOW


def parse_architecture(doc: Mapping[str, Any], *, path: str | Path | None = None
                       ) -> Architecture:
    """Read an :class:`Architecture` from a parsed ``mlc-chat-config.json``.

    Raises
    ------
    ModelFormatError
        As :func:`numaplan.model.config.parse_mlc_config`, or when a field this module reads has
        the wrong type or the model type has no definition.
    """
    base = parse_mlc_config(doc, path=path)
    mc = doc.get("model_config") or {}

    def pick(*names: str, default: Any = None) -> Any:
        for source in (mc, doc):
            for name in names:
                if source.get(name) is not None:
                    return source[name]
        return default

    def number(value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ModelFormatError(f"model_config.{field}: must be a positive number, got "
                                   f"{value!r}", path=path)
        return float(value)

    theta = pick("position_embedding_base", "rope_theta", default=10000.0)
    # MLC's LlamaConfig stores 0 for "take rope_theta from kwargs, else 10000".
    theta = 10000.0 if theta == 0 else number(theta, "position_embedding_base")
    eps = number(pick("rms_norm_eps", "layer_norm_eps",
                      default=_DEFAULT_EPS.get(base.model_type, 1e-5)), "rms_norm_eps")
    scaling = pick("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise ModelFormatError(f"model_config.rope_scaling: must be an object, got {scaling!r}",
                               path=path)
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind in (None, "default"):
            scaling = None
        elif kind != "llama3":
            raise ModelFormatError(f"model_config.rope_scaling: type {kind!r} is not supported "
                                   "(supported: llama3)", path=path)
        else:
            scaling = {"rope_type": "llama3", **{k: v for k, v in scaling.items()
                                                  if k not in ("type", "rope_type")}}
    chunk = pick("prefill_chunk_size", default=DEFAULT_PREFILL_CHUNK)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0:
        raise ModelFormatError(f"prefill_chunk_size: must be a positive integer, got {chunk!r}",
                               path=path)
    context = base.context_window_size
    try:
        return Architecture(
            **base.model_dump(exclude={"rms_norm_eps"}), rms_norm_eps=eps, rope_theta=theta,
            rope_scaling=scaling, qkv_bias=base.model_type in _QKV_BIAS,
            prefill_chunk_size=min(chunk, context) if context > 0 else chunk)
    except ValueError as exc:
        raise ModelFormatError(first_error(exc), path=path) from None
