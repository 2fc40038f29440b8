"""A plain-numpy reference of the example's Llama math, and the weight loaders.

Weights are read from the model directory through numaplan's own workload layer
(:func:`numaplan.model.load_workload` gives every tensor's file, offset, encoding and shard
rule), independently of TVM's loader, so the tests can compare the two. Computation is in float64
whatever the stored dtype: it is the ground truth the compiled model is checked against.

The reference can also run *as* ``W`` tensor-parallel workers (``num_shards=W``): each worker's
attention and MLP use only its shard, and the partial outputs are summed where the compiled
model all-reduces. With ``W = 1`` it is the plain model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from numaplan.model import Workload, load_workload, slice_shard
from numaplan.tiny_llama.config import LlamaConfig

_MLC_CONFIG = "mlc-chat-config.json"


def read_config(model_dir: str | Path) -> tuple[LlamaConfig, str]:
    """``(LlamaConfig, quantization)`` of a model directory."""
    import json

    doc = json.loads((Path(model_dir) / _MLC_CONFIG).read_text())
    return LlamaConfig.from_dict(doc), doc["quantization"]


def _read_tensor(model_dir: Path, workload: Workload, name: str) -> np.ndarray:
    info = workload.tensor(name)
    with open(model_dir / info.data_path, "rb") as f:
        f.seek(info.byte_offset)
        raw = f.read(info.nbytes)
    if len(raw) != info.nbytes:
        raise ValueError(f"{name}: short read from {info.data_path}")
    if info.format == "f32-to-bf16" and info.dtype == "float32":
        bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(info.shape)
    return np.frombuffer(raw, dtype=np.dtype(info.dtype)).reshape(info.shape).copy()


def load_full_weights(model_dir: str | Path) -> dict[str, np.ndarray]:
    """Every weight of the directory, full size and decoded (bf16-stored float32 widened)."""
    model_dir = Path(model_dir)
    workload = load_workload(model_dir)
    return {t.name: _read_tensor(model_dir, workload, t.name) for t in workload.tensors}


def load_shard_params(model_dir: str | Path, num_shards: int, worker: int, *,
                      names: Sequence[str] | None = None,
                      weights: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Worker ``worker``'s packed params for TP degree ``num_shards``.

    Every tensor is sliced with :func:`numaplan.model.slice_shard` and the workload's shard
    rule (MLC's rules), and the list follows ``names`` (default: the example's packed order,
    which equals ``_metadata["params"]``).

    Parameters
    ----------
    model_dir
        The model directory.
    num_shards, worker
        TP degree and worker index.
    names
        The packed-params order to follow, e.g. ``[p["name"] for p in metadata["params"]]``.
    weights
        Already loaded full weights (skips reading the files).
    """
    model_dir = Path(model_dir)
    workload = load_workload(model_dir)
    if names is None:
        names = read_config(model_dir)[0].param_names()
    out = []
    for name in names:
        full = weights[name] if weights is not None else _read_tensor(model_dir, workload, name)
        out.append(np.ascontiguousarray(
            slice_shard(full, workload.tensor(name).shard_rule, num_shards, worker)))
    return out


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate-half RoPE of ``x[n, heads, d]`` at ``positions[n]``."""
    d = x.shape[-1]
    half = d // 2
    inv = 1.0 / theta ** (np.arange(half, dtype=np.float64) * 2.0 / d)
    ang = positions[:, None].astype(np.float64) * inv[None, :]          # [n, half]
    cos = np.concatenate([np.cos(ang), np.cos(ang)], axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang), np.sin(ang)], axis=-1)[:, None, :]
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class LlamaReference:
    """The example model in numpy (float64), with a KV cache.

    Parameters
    ----------
    config
        The architecture.
    weights
        Full weights by name (any float dtype; computed in float64).
    num_shards
        Run as this many tensor-parallel workers (sum of partial outputs); 1 = plain model.

    Usage: ``ref.prefill(ids)`` starts a new sequence and returns the logits of its last token,
    ``ref.decode(token)`` appends one token and returns its logits.
    """

    def __init__(self, config: LlamaConfig, weights: dict[str, np.ndarray], num_shards: int = 1):
        from numaplan.model import classify_tensor, mlc_shard_rule

        config.check_tp(num_shards)
        self.config = config
        self.num_shards = num_shards
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        q_rows = config.num_attention_heads * config.head_dim
        kv_rows = config.num_key_value_heads * config.head_dim
        self.shards: list[dict[str, np.ndarray]] = []
        for worker in range(num_shards):
            shard = {}
            for name, full in self.w.items():
                rule = mlc_shard_rule(classify_tensor(name), full.shape, q_rows=q_rows,
                                      kv_rows=kv_rows,
                                      intermediate_size=config.intermediate_size)
                shard[name] = slice_shard(full, rule, num_shards, worker)
            self.shards.append(shard)
        self.reset()

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, num_shards: int = 1) -> LlamaReference:
        """Load config and weights from an MLC model directory."""
        config, _ = read_config(model_dir)
        return cls(config, load_full_weights(model_dir), num_shards)

    def reset(self) -> None:
        """Forget the sequence: ``k[worker][layer]`` and ``v`` lists of cached rows."""
        c = self.config
        self.pos = 0
        kvh = c.num_key_value_heads // self.num_shards
        empty = np.zeros((0, kvh, c.head_dim))
        self.k = [[empty] * c.num_hidden_layers for _ in range(self.num_shards)]
        self.v = [[empty] * c.num_hidden_layers for _ in range(self.num_shards)]

    def embed(self, ids: Sequence[int]) -> np.ndarray:
        """``[n, hidden]`` rows of the embedding table."""
        return self.w["model.embed_tokens.weight"][np.asarray(ids, dtype=np.int64)]

    def _attention(self, worker: int, layer: int, h: np.ndarray) -> np.ndarray:
        c = self.config
        p = self.shards[worker]
        pre = f"model.layers.{layer}."
        nh = c.num_attention_heads // self.num_shards
        kvh = c.num_key_value_heads // self.num_shards
        d = c.head_dim
        n = h.shape[0]
        qkv = (h @ p[pre + "self_attn.qkv_proj.weight"].T).reshape(n, nh + 2 * kvh, d)
        positions = np.arange(self.pos, self.pos + n)
        q = _rope(qkv[:, :nh], positions, c.position_embedding_base)
        k = _rope(qkv[:, nh:nh + kvh], positions, c.position_embedding_base)
        v = qkv[:, nh + kvh:]
        self.k[worker][layer] = np.concatenate([self.k[worker][layer], k])
        self.v[worker][layer] = np.concatenate([self.v[worker][layer], v])
        keys, values = self.k[worker][layer], self.v[worker][layer]
        total = keys.shape[0]
        group = nh // kvh
        keys = np.repeat(keys, group, axis=1)        # [total, nh, d]
        values = np.repeat(values, group, axis=1)
        scores = np.einsum("ihd,thd->hit", q, keys) / np.sqrt(d)
        mask = np.arange(total)[None, :] <= positions[:, None]   # [n, total]
        scores = np.where(mask[None], scores, -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        prob = np.exp(scores)
        prob /= prob.sum(axis=-1, keepdims=True)
        attn = np.einsum("hit,thd->ihd", prob, values).reshape(n, nh * d)
        return attn @ p[pre + "self_attn.o_proj.weight"].T

    def _mlp(self, worker: int, layer: int, h: np.ndarray) -> np.ndarray:
        p = self.shards[worker]
        pre = f"model.layers.{layer}.mlp."
        gate, up = np.split(h @ p[pre + "gate_up_proj.weight"].T, 2, axis=-1)
        return (_silu(gate) * up) @ p[pre + "down_proj.weight"].T

    def forward_hidden(self, x: np.ndarray) -> np.ndarray:
        """Run ``x[n, hidden]`` (embeddings of the next ``n`` tokens) through the layers,
        appending to the cache; returns the final-norm logits ``[n, vocab]``."""
        c = self.config
        eps = c.rms_norm_eps
        x = np.asarray(x, dtype=np.float64)
        for layer in range(c.num_hidden_layers):
            pre = f"model.layers.{layer}."
            h = _rms_norm(x, self.w[pre + "input_layernorm.weight"], eps)
            x = x + sum(self._attention(r, layer, h) for r in range(self.num_shards))
            h = _rms_norm(x, self.w[pre + "post_attention_layernorm.weight"], eps)
            x = x + sum(self._mlp(r, layer, h) for r in range(self.num_shards))
        self.pos += x.shape[0]
        x = _rms_norm(x, self.w["model.norm.weight"], eps)
        return x @ self.w["lm_head.weight"].T

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Start a new sequence with ``ids``; logits ``[vocab]`` of its last token."""
        self.reset()
        return self.forward_hidden(self.embed(ids))[-1]

    def decode(self, token: int) -> np.ndarray:
        """Append one token; its logits ``[vocab]``."""
        return self.forward_hidden(self.embed([token]))[-1]

    def generate(self, ids: Sequence[int], steps: int) -> tuple[list[np.ndarray], list[int]]:
        """Greedy: prefill ``ids`` then ``steps`` decodes. Returns every step's logits and the
        tokens chosen (argmax of each)."""
        logits = [self.prefill(ids)]
        tokens = [int(np.argmax(logits[-1]))]
        for _ in range(steps):
            logits.append(self.decode(tokens[-1]))
            tokens.append(int(np.argmax(logits[-1])))
        return logits, tokens
