"""The example's architecture description, sizes and parameter order (no TVM needed).

Field names are MLC's ``LlamaConfig`` ones, so :meth:`LlamaConfig.to_dict` is the
``model_config`` of ``mlc-chat-config.json`` and :meth:`LlamaConfig.from_dict` reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

#: MLC quantization names this example supports, and the model dtype of each.
QUANTIZATION_DTYPES = {"q0f32": "float32", "q0f16": "float16"}

#: The layout of the explicit KV cache (one tensor per worker), recorded in ``_metadata`` and
#: ``numaplan-model.json``. Index 0 of the second axis is K, 1 is V.
KV_CACHE_LAYOUT = "[num_hidden_layers, 2, max_seq_len, num_key_value_heads, head_dim]"


@dataclass(frozen=True)
class LlamaConfig:
    """The architecture of the example, with MLC's ``LlamaConfig`` field names.

    ``num_attention_heads``, ``num_key_value_heads`` and ``intermediate_size`` are the full
    (unsharded) sizes; :meth:`per_shard` gives what one tensor-parallel worker builds.
    """

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_hidden_layers: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    position_embedding_base: float = 10000.0
    context_window_size: int = 512
    prefill_chunk_size: int = 128
    tie_word_embeddings: bool = False
    tensor_parallel_shards: int = 1

    def __post_init__(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "num_hidden_layers", "vocab_size",
                     "context_window_size", "prefill_chunk_size", "tensor_parallel_shards"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if self.tie_word_embeddings:
            raise ValueError("this example always has a separate lm_head "
                             "(tie_word_embeddings must be false)")

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> LlamaConfig:
        """From an ``mlc-chat-config.json`` document or its ``model_config`` part.

        Unknown keys are ignored (MLC files carry many); ``null`` values take the default.
        """
        src = doc.get("model_config", doc)
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in src.items() if k in fields and v is not None})

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return asdict(self)

    def with_(self, **changes: Any) -> LlamaConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def tp_violations(self, num_shards: int) -> list[str]:
        """Why ``num_shards`` workers cannot split the model (empty when they can)."""
        if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
            return [f"tensor_parallel_shards must be a positive integer, got {num_shards!r}"]
        return [f"tensor_parallel_shards={num_shards} does not divide {name}="
                f"{getattr(self, name)}"
                for name in ("num_attention_heads", "num_key_value_heads", "intermediate_size")
                if getattr(self, name) % num_shards]

    def check_tp(self, num_shards: int) -> None:
        """Raise ``ValueError`` when ``num_shards`` workers cannot split the model."""
        problems = self.tp_violations(num_shards)
        if problems:
            raise ValueError("; ".join(problems))

    def valid_tp_degrees(self) -> list[int]:
        """Every degree the model admits (divisors of the kv heads that pass the checks)."""
        kv = self.num_key_value_heads
        return [w for w in range(1, kv + 1) if kv % w == 0 and not self.tp_violations(w)]

    def per_shard(self, num_shards: int) -> dict[str, int]:
        """Head counts and intermediate size of one worker's modules."""
        self.check_tp(num_shards)
        return {"num_attention_heads": self.num_attention_heads // num_shards,
                "num_key_value_heads": self.num_key_value_heads // num_shards,
                "intermediate_size": self.intermediate_size // num_shards}

    @property
    def qkv_rows(self) -> int:
        """Rows of the full fused qkv projection: ``(heads + 2 * kv_heads) * head_dim``."""
        return (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim

    def param_shapes(self, num_shards: int = 1) -> dict[str, tuple[int, ...]]:
        """Every parameter with its shape for one of ``num_shards`` workers, in packed order.

        This is the order of the VM functions' packed params tuple and of
        ``_metadata["params"]`` (the tests check that the exported module agrees).
        """
        s = self.per_shard(num_shards)
        hid, d = self.hidden_size, self.head_dim
        qkv = (s["num_attention_heads"] + 2 * s["num_key_value_heads"]) * d
        shapes: dict[str, tuple[int, ...]] = {
            "model.embed_tokens.weight": (self.vocab_size, hid)}
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (hid,)
            shapes[p + "self_attn.qkv_proj.weight"] = (qkv, hid)
            shapes[p + "self_attn.o_proj.weight"] = (hid, s["num_attention_heads"] * d)
            shapes[p + "post_attention_layernorm.weight"] = (hid,)
            shapes[p + "mlp.gate_up_proj.weight"] = (2 * s["intermediate_size"], hid)
            shapes[p + "mlp.down_proj.weight"] = (hid, s["intermediate_size"])
        shapes["model.norm.weight"] = (hid,)
        shapes["lm_head.weight"] = (self.vocab_size, hid)
        return shapes

    def param_names(self) -> list[str]:
        """Parameter names in packed order."""
        return list(self.param_shapes())

    def num_params(self) -> int:
        """Number of weights (full model)."""
        total = 0
        for shape in self.param_shapes().values():
            n = 1
            for dim in shape:
                n *= dim
            total += n
        return total


#: Named sizes. ``default`` builds and compiles in seconds and admits W in {1, 2, 4};
#: ``bench`` is bandwidth-bound (~107 M weights: 430 MB in float32, 215 MB in float16, well
#: past any last-level cache) and admits W in {1, 2, 4}.
SIZES: dict[str, LlamaConfig] = {
    "default": LlamaConfig(hidden_size=256, intermediate_size=688, num_attention_heads=8,
                           num_key_value_heads=4, head_dim=32, num_hidden_layers=4,
                           vocab_size=512, context_window_size=512, prefill_chunk_size=128),
    "bench": LlamaConfig(hidden_size=1024, intermediate_size=2816, num_attention_heads=16,
                         num_key_value_heads=4, head_dim=64, num_hidden_layers=8,
                         vocab_size=8192, context_window_size=1024, prefill_chunk_size=256),
    # For fast unit tests: every dimension tiny, still W in {1, 2}.
    "tiny": LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=16, num_hidden_layers=2,
                        vocab_size=128, context_window_size=128, prefill_chunk_size=32),
}


def get_size(size: str | LlamaConfig | Mapping[str, Any]) -> LlamaConfig:
    """A :data:`SIZES` name, a config, or a ``model_config`` dict, as a config."""
    if isinstance(size, LlamaConfig):
        return size
    if isinstance(size, Mapping):
        return LlamaConfig.from_dict(size)
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}") from None


def quantization_for(dtype: str) -> str:
    """``float32`` -> ``q0f32``, ``float16`` -> ``q0f16`` (quantization names pass through)."""
    if dtype in QUANTIZATION_DTYPES:
        return dtype
    for quant, dt in QUANTIZATION_DTYPES.items():
        if dt == dtype:
            return quant
    raise ValueError(f"dtype {dtype!r} is not supported; use float32 (q0f32) or float16 (q0f16)")


def model_dtype(quantization: str) -> str:
    """The dtype of a supported quantization (``q0f32`` -> float32, ``q0f16`` -> float16)."""
    try:
        return QUANTIZATION_DTYPES[quantization]
    except KeyError:
        raise ValueError(f"quantization {quantization!r} is not supported by this example; "
                         f"use one of {', '.join(QUANTIZATION_DTYPES)}") from None
