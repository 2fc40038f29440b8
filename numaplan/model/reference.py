"""An independent numpy forward pass of an MLC model directory: the oracle that checks compiled
libraries, conversions and the runtime (it shares no code with them).

It reads ``tensor-cache.json`` and the shard files with ``json`` and ``numpy`` alone, decodes
``f32-to-bf16`` records, dequantizes q4 with :mod:`numaplan.model.group_quant` (no TVM code),
and computes in float64: RMSNorm, rotate-half rotary embedding (with llama3 frequency scaling),
causal grouped-query attention, SiLU-gated MLP, tied or untied head.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from numaplan.model.group_quant import dequantize_q4

FAMILY = {
    "phi3": dict(root="transformer", embed="embd", layers="h", attn="mixer", qkv="qkv_proj",
                 out="out_proj", ln1="ln"),
}
DEFAULT = dict(root="model", embed="embed_tokens", layers="layers", attn="self_attn",
               qkv="qkv_proj", out="o_proj", ln1="input_layernorm")


def read_tensors(model_dir: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the directory, decoded (float32 for f32-to-bf16 float32 records)."""
    model_dir = Path(model_dir)
    index = json.loads((model_dir / "tensor-cache.json").read_text())
    out = {}
    for shard in index["records"]:
        raw = (model_dir / shard["dataPath"].split("?")[0]).read_bytes()
        for r in shard["records"]:
            data = raw[r["byteOffset"]:r["byteOffset"] + r["nbytes"]]
            if r["dtype"] == "float32" and r["format"] == "f32-to-bf16":
                bits = np.frombuffer(data, np.uint16).astype(np.uint32) << 16
                a = bits.view(np.float32)
            elif r["dtype"] == "bfloat16":
                a = (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                a = np.frombuffer(data, r["dtype"])
            out[r["name"]] = a.reshape(r["shape"])
    return out


class Reference:
    """Greedy-decodable numpy model of an MLC directory; one sequence at a time."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        doc = json.loads((model_dir / "mlc-chat-config.json").read_text())
        self.doc = doc
        mc = doc["model_config"]
        self.type = doc["model_type"]
        self.n = FAMILY.get(self.type, DEFAULT) | {}
        if self.type == "qwen2":
            self.n["qkv"] = "c_attn"
        self.hidden = mc["hidden_size"]
        self.heads = mc["num_attention_heads"]
        self.kv_heads = mc.get("num_key_value_heads") or self.heads
        self.head_dim = mc.get("head_dim") or self.hidden // self.heads
        self.layers = mc["num_hidden_layers"]
        self.eps = mc.get("rms_norm_eps", 1e-5)
        self.theta = mc.get("position_embedding_base") or mc.get("rope_theta") or 10000.0
        self.scaling = mc.get("rope_scaling")
        self.tied = mc.get("tie_word_embeddings", False)
        self.t = read_tensors(model_dir)
        self.cache: list[tuple[np.ndarray, np.ndarray]] = []
        self.reset()

    def weight(self, prefix: str) -> np.ndarray:
        if prefix + ".q_weight" in self.t:
            return dequantize_q4(self.t[prefix + ".q_weight"],
                                 self.t[prefix + ".q_scale"]).astype(np.float64)
        return self.t[prefix + ".weight"].astype(np.float64)

    def reset(self) -> None:
        self.cache = [(np.zeros((0, self.kv_heads, self.head_dim)),) * 2
                      for _ in range(self.layers)]

    def _norm(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w.astype(np.float64)

    def _inv_freq(self) -> np.ndarray:
        d = self.head_dim
        inv = 1.0 / self.theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
        s = self.scaling
        if s and s.get("rope_type") == "llama3":
            lo, hi = s["low_freq_factor"], s["high_freq_factor"]
            orig = s["original_max_position_embeddings"]
            smooth = np.clip(orig / (2 * math.pi) / (hi - lo) * inv - lo / (hi - lo), 0, 1)
            inv = (1 - smooth) * inv / s["factor"] + smooth * inv
        return inv

    def _rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        half = self.head_dim // 2
        ang = pos[:, None] * self._inv_freq()[None, :]
        cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
        sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]
        rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
        return x * cos + rot * sin

    def forward(self, ids: list[int]) -> np.ndarray:
        """Logits (float64 [len(ids), vocab]) of new tokens appended to the sequence."""
        n = self.n
        root = n["root"]
        emb_prefix = f"{root}.{n['embed']}"
        x = self.weight(emb_prefix)[np.asarray(ids)]
        s = len(ids)
        h, kvh, d = self.heads, self.kv_heads, self.head_dim
        for i in range(self.layers):
            p = f"{root}.{n['layers']}.{i}"
            a = self._norm(x, self.t[f"{p}.{n['ln1']}.weight"])
            qkv = a @ self.weight(f"{p}.{n['attn']}.{n['qkv']}").T
            bias = self.t.get(f"{p}.{n['attn']}.{n['qkv']}.bias")
            if bias is not None:
                qkv = qkv + bias.astype(np.float64)
            qkv = qkv.reshape(s, h + 2 * kvh, d)
            k_old, v_old = self.cache[i]
            pos = np.arange(k_old.shape[0], k_old.shape[0] + s, dtype=np.float64)
            q = self._rope(qkv[:, :h], pos)
            k = np.concatenate([k_old, self._rope(qkv[:, h:h + kvh], pos)])
            v = np.concatenate([v_old, qkv[:, h + kvh:]])
            self.cache[i] = (k, v)
            total = k.shape[0]
            out = np.zeros((s, h, d))
            mask = np.arange(total)[None, :] <= (total - s + np.arange(s))[:, None]
            for head in range(h):
                kh = head // (h // kvh)
                sc = q[:, head] @ k[:, kh].T / math.sqrt(d)
                sc = np.where(mask, sc, -np.inf)
                pr = np.exp(sc - sc.max(-1, keepdims=True))
                out[:, head] = (pr / pr.sum(-1, keepdims=True)) @ v[:, kh]
            x = x + out.reshape(s, h * d) @ self.weight(f"{p}.{n['attn']}.{n['out']}").T
            m = self._norm(x, self.t[f"{p}.post_attention_layernorm.weight"])
            gu = m @ self.weight(f"{p}.mlp.gate_up_proj").T
            gate, up = np.split(gu, 2, axis=-1)
            x = x + (gate / (1 + np.exp(-gate)) * up) @ self.weight(f"{p}.mlp.down_proj").T
        x = self._norm(x, self.t[f"{root}.norm.weight"])
        head = self.weight(emb_prefix if self.tied else "lm_head")
        return x @ head.T

    def generate(self, prompt: list[int], steps: int) -> tuple[list[np.ndarray], list[int]]:
        """Greedy decoding from a fresh sequence: the logits of the prompt's last token and
        of ``steps`` further tokens, and the ``steps + 1`` tokens chosen."""
        self.reset()
        logits = [self.forward(list(prompt))[-1]]
        tokens = [int(np.argmax(logits[-1]))]
        for _ in range(steps):
            logits.append(self.forward([tokens[-1]])[-1])
            tokens.append(int(np.argmax(logits[-1])))
        return logits, tokens
