"""A GGUF file read as a model: architecture, tensors by role, conversation template.

GGUF (llama.cpp's format, read with the ``gguf`` package that llama.cpp maintains) names tensors
``token_embd``, ``blk.N.attn_q`` ... and keeps the architecture under ``<arch>.*`` keys. This
module turns them into what an MLC model directory needs: the ``mlc-chat-config.json`` fields
and, per MLC parameter, the GGUF tensors it is made of (MLC fuses q|k|v and gate|up).

llama.cpp's converter permutes the rows of Llama's Q and K projections for its rotary layout
(``convert_hf_to_gguf.py``, ``LlamaModel.permute``): per head, the two halves of the rotated
dimensions are interleaved. :func:`unpermute_rows` is its inverse; without it the logits are
off by several units. Qwen2 files are not permuted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from numaplan.errors import ModelFormatError

#: GGUF architectures numaplan converts, and the MLC ``model_type`` each becomes.
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}
#: Conversion targets (MLC quantization names).
QUANTIZATIONS = ("q0f32", "q0f16", "q0bf16", "q4f16_1", "q4f32_1")
#: Rows dequantized at a time (bounds the dequantizer's temporary copies).
ROW_BLOCK = 4096
#: Architectures whose Q/K rows llama.cpp's converter permuted.
_PERMUTED = frozenset({"llama"})


def open_gguf(path: str | Path) -> Any:
    """Open a GGUF file, turning the reader's exceptions into one-line errors.

    Raises
    ------
    ModelFormatError
        Missing, not GGUF, or truncated.
    """
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ModelFormatError("no such file", path=path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelFormatError(f"not a GGUF file (starts with {magic!r}, expected b'GGUF')",
                               path=path)
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, struct.error, IndexError...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFormatError(f"not a readable GGUF file (truncated or corrupt?): {reason}",
                               path=path) from None


def unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of a Q (``heads``) or K (KV heads) weight or
    bias: ``w.reshape(n, 2, r, ...).swapaxes(1, 2)`` was applied, so the inverse swaps back."""
    rows = w.shape[0]
    if rows % (2 * heads):
        raise ModelFormatError(f"{rows} rows do not split into {heads} heads of two halves")
    tail = w.shape[1:]
    return w.reshape(heads, rows // heads // 2, 2, *tail).swapaxes(1, 2).reshape(w.shape)


def permute_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's permutation (for tests: a Hugging-Face-layout weight -> GGUF layout)."""
    rows = w.shape[0]
    tail = w.shape[1:]
    return w.reshape(heads, 2, rows // heads // 2, *tail).swapaxes(1, 2).reshape(w.shape)


@dataclass(frozen=True)
class Source:
    """How one MLC parameter is made: GGUF tensors concatenated on dim 0 (after undoing the
    rotary permutation of those listed in ``permute`` with that many heads)."""

    name: str
    parts: tuple[str, ...]
    permute: tuple[int | None, ...]


class GGUFModel:
    """The model inside a GGUF file.

    Parameters
    ----------
    path
        The ``.gguf`` file.

    Raises
    ------
    ModelFormatError
        Unreadable file, unsupported architecture, missing metadata or tensors.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.reader = open_gguf(self.path)
        self.fields = self._fields()
        arch = self.fields.get("general.architecture")
        if arch not in ARCHITECTURES:
            raise ModelFormatError(f"architecture {arch!r} is not supported (supported: "
                                   f"{', '.join(ARCHITECTURES)})", path=self.path)
        self.arch = arch
        self.model_type = ARCHITECTURES[arch]
        self.tensors = {t.name: t for t in self.reader.tensors}
        if "rope_freqs.weight" in self.tensors:
            raise ModelFormatError("per-dimension rotary frequency factors (rope_freqs, a "
                                   "Llama 3.1-style rope scaling) are not supported",
                                   path=self.path)
        self.hidden = self._int("embedding_length")
        self.heads = self._int("attention.head_count")
        self.kv_heads = self._int("attention.head_count_kv", self.heads)
        self.layers = self._int("block_count")
        self.head_dim = self._int("attention.key_length", self.hidden // self.heads)
        self.intermediate = self._int("feed_forward_length")
        tokens = self.fields.get("tokenizer.ggml.tokens")
        self.vocab_size = self._int("vocab_size", len(tokens) if tokens else None)
        self.tied = "output.weight" not in self.tensors
        for name in ("token_embd.weight", "output_norm.weight"):
            self._need(name)

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, field in self.reader.fields.items():
            try:
                out[key] = field.contents()
            except Exception:  # a field of an unknown kind: not one the converter reads
                continue
        return out

    def _int(self, key: str, default: int | None = None) -> int:
        value = self.fields.get(f"{self.arch}.{key}", default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelFormatError(f"metadata {self.arch}.{key} is missing or not a positive "
                                   f"integer ({value!r})", path=self.path)
        return value

    def _need(self, name: str) -> None:
        if name not in self.tensors:
            raise ModelFormatError(f"tensor {name} is missing", path=self.path)

    # -- configuration -----------------------------------------------------------------------

    def model_config(self) -> dict[str, Any]:
        """``model_config`` of ``mlc-chat-config.json`` (MLC's field names)."""
        context = self._int("context_length", 4096)
        eps = self.fields.get(f"{self.arch}.attention.layer_norm_rms_epsilon", 1e-5)
        theta = float(self.fields.get(f"{self.arch}.rope.freq_base", 10000.0))
        mc: dict[str, Any] = {
            "hidden_size": self.hidden, "intermediate_size": self.intermediate,
            "num_attention_heads": self.heads, "num_hidden_layers": self.layers,
            "rms_norm_eps": float(eps), "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tied, "context_window_size": context,
            "prefill_chunk_size": min(context, 2048), "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim, "tensor_parallel_shards": 1, "max_batch_size": 8,
        }
        if self.model_type == "qwen2":
            mc.update(rope_theta=theta, hidden_act="silu")
        else:
            mc.update(position_embedding_base=theta, rope_scaling=None)
        return mc

    def token_id(self, key: str) -> int | None:
        """A ``tokenizer.ggml.<key>_token_id`` value, if present."""
        value = self.fields.get(f"tokenizer.ggml.{key}_token_id")
        return int(value) if isinstance(value, int) else None

    # -- tensors -----------------------------------------------------------------------------

    def sources(self) -> Iterator[Source]:
        """Every MLC parameter (unquantized names ``X.weight`` / ``X.bias``) in MLC's order."""
        qkv = "c_attn" if self.model_type == "qwen2" else "qkv_proj"
        perm = self.arch in _PERMUTED
        yield Source("model.embed_tokens.weight", ("token_embd.weight",), (None,))
        for i in range(self.layers):
            b, p = f"blk.{i}", f"model.layers.{i}"
            heads = (self.heads if perm else None, self.kv_heads if perm else None, None)
            yield Source(f"{p}.self_attn.{qkv}.weight",
                         (f"{b}.attn_q.weight", f"{b}.attn_k.weight", f"{b}.attn_v.weight"),
                         heads)
            if f"{b}.attn_q.bias" in self.tensors:
                yield Source(f"{p}.self_attn.{qkv}.bias",
                             (f"{b}.attn_q.bias", f"{b}.attn_k.bias", f"{b}.attn_v.bias"),
                             heads)
            yield Source(f"{p}.self_attn.o_proj.weight", (f"{b}.attn_output.weight",), (None,))
            yield Source(f"{p}.mlp.gate_up_proj.weight",
                         (f"{b}.ffn_gate.weight", f"{b}.ffn_up.weight"), (None, None))
            yield Source(f"{p}.mlp.down_proj.weight", (f"{b}.ffn_down.weight",), (None,))
            yield Source(f"{p}.input_layernorm.weight", (f"{b}.attn_norm.weight",), (None,))
            yield Source(f"{p}.post_attention_layernorm.weight", (f"{b}.ffn_norm.weight",),
                         (None,))
        yield Source("model.norm.weight", ("output_norm.weight",), (None,))
        if not self.tied:
            yield Source("lm_head.weight", ("output.weight",), (None,))

    def tensor(self, name: str) -> np.ndarray:
        """One GGUF tensor dequantized to float32, ``(out, in)`` as Hugging Face orders it.

        Raises
        ------
        ModelFormatError
            A missing tensor, or a type the ``gguf`` package cannot dequantize.
        """
        import gguf

        self._need(name)
        t = self.tensors[name]
        data = t.data
        try:
            if data.ndim < 2 or data.shape[0] <= ROW_BLOCK:
                return np.asarray(gguf.quants.dequantize(data, t.tensor_type), np.float32)
            # Row blocks: the package's dequantizers hold a few float32 copies of their input,
            # which for a whole embedding would be several times the tensor.
            first = np.asarray(gguf.quants.dequantize(data[:ROW_BLOCK], t.tensor_type),
                               np.float32)
            out = np.empty((data.shape[0], *first.shape[1:]), np.float32)
            out[:ROW_BLOCK] = first
            for start in range(ROW_BLOCK, data.shape[0], ROW_BLOCK):
                out[start:start + ROW_BLOCK] = gguf.quants.dequantize(
                    data[start:start + ROW_BLOCK], t.tensor_type)
            return out
        except (NotImplementedError, ValueError, TypeError) as exc:
            raise ModelFormatError(f"tensor {name}: type {t.tensor_type.name} cannot be read "
                                   f"({exc})", path=self.path) from None

    def assemble(self, src: Source) -> np.ndarray:
        """The float32 value of one MLC parameter."""
        parts = []
        for part, heads in zip(src.parts, src.permute, strict=True):
            w = self.tensor(part)
            parts.append(unpermute_rows(w, heads) if heads else w)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    @property
    def unquantized_params(self) -> int:
        """Parameter count of the model (for ``BitsPerParam``)."""
        return int(sum(int(np.prod(t.shape)) for t in self.reader.tensors))


# -- conversation templates -------------------------------------------------------------------

_CHATML = {
    "system_template": "<|im_start|>system\n{system_message}<|im_end|>\n",
    "roles": {"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"},
    "seps": ["<|im_end|>\n"], "role_content_sep": "\n", "role_empty_sep": "\n",
    "stop_str": ["<|im_end|>"], "stop_tokens": ["<|im_end|>"],
}
_LLAMA3 = {
    "system_template": "<|start_header_id|>system<|end_header_id|>\n\n{system_message}"
                       "<|eot_id|>",
    "roles": {"user": "<|start_header_id|>user", "assistant": "<|start_header_id|>assistant"},
    "seps": ["<|eot_id|>"], "role_content_sep": "<|end_header_id|>\n\n",
    "role_empty_sep": "<|end_header_id|>\n\n", "stop_str": ["<|end_of_text|>", "<|eot_id|>"],
    "stop_tokens": ["<|end_of_text|>", "<|eot_id|>"],
}


def conversation_template(chat_template: str | None, vocab: Mapping[str, int],
                          eos_id: int | None) -> dict[str, Any]:
    """MLC's conversation template (``protocol/conversation_protocol.py`` fields) for a GGUF
    chat template, recognised by its markers (ChatML, Llama 3); anything else gets a plain
    template that stops at the EOS token. The default system message is taken from the chat
    template when it writes one."""
    text = chat_template or ""
    if "<|im_start|>" in text:
        name, spec = "chatml", _CHATML
        found = re.search(r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", text, re.S)
    elif "<|start_header_id|>" in text:
        name, spec = "llama-3", _LLAMA3
        found = None
    else:
        name, found = "plain", None
        spec = {"system_template": "{system_message}", "roles": {"user": "", "assistant": ""},
                "seps": ["\n"], "role_content_sep": "", "role_empty_sep": "", "stop_str": [],
                "stop_tokens": []}
    stop_ids = sorted({vocab[t] for t in spec["stop_tokens"] if t in vocab} |
                      ({eos_id} if eos_id is not None else set()))
    return {
        "name": name,
        "system_template": spec["system_template"],
        "system_message": found.group(1) if found else "",
        "system_prefix_token_ids": None,
        "add_role_after_system_message": True,
        "roles": spec["roles"],
        "role_templates": {"user": "{user_message}", "assistant": "{assistant_message}",
                           "tool": "{tool_message}"},
        "messages": [],
        "seps": spec["seps"],
        "role_content_sep": spec["role_content_sep"],
        "role_empty_sep": spec["role_empty_sep"],
        "stop_str": spec["stop_str"],
        "stop_token_ids": stop_ids,
        "function_string": "",
        "use_function_calling": False,
    }
