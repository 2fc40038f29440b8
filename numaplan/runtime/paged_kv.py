"""Drive a compiled model through MLC's function ABI and TVM's paged KV cache, in one process.

A tensor-parallel worker (or a single-process run) holds one :class:`PagedKVModel`: the VM,
its parameters and one KV cache for many sequences. The calls follow MLC's engine
(``cpp/serve/model.cc``): every step announces its sequences and token counts to the cache
(``vm.builtin.kv_state_begin_forward``), runs ``prefill`` / ``batch_prefill`` or ``decode`` /
``batch_decode`` on the embedded tokens with the packed parameters last, and closes the step
(``kv_state_end_forward``).

TVM's cache checks misuse with fatal checks (a prefill longer than the chunk, an unknown
sequence, a full cache), not with errors a caller can handle, so every request is validated
here first; a prompt longer than the prefill chunk is fed in chunks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import tvm
from tvm.runtime import ShapeTuple

from numaplan.errors import RequestError
from numaplan.model.sizes import DEFAULT_KV_WINDOW, KV_PAGE_TOKENS

#: Names of the cache-creation function, in the order they are looked up (the first is what
#: ``mlc_llm compile`` and numaplan export).
KV_CREATE_FUNCTIONS = ("create_tir_paged_kv_cache", "create_paged_kv_cache")
#: The page size TVM 0.27's CPU attention kernels require (the planner sizes in the same pages).
PAGE_SIZE = KV_PAGE_TOKENS

_KV = {name: f"vm.builtin.{name}" for name in (
    "kv_state_add_sequence", "kv_state_remove_sequence", "kv_state_fork_sequence",
    "kv_state_begin_forward", "kv_state_end_forward", "kv_state_popn", "kv_state_clear",
    "attention_kv_cache_get_num_available_pages",
    "attention_kv_cache_get_total_sequence_length",
    "attention_kv_cache_enable_sliding_window_for_seq")}


def read_metadata(vm: Any) -> dict[str, Any]:
    """The library's ``_metadata`` JSON (MLC's keys)."""
    return json.loads(str(vm["_metadata"]()))


def has_function(vm: Any, name: str) -> bool:
    """Whether the VM's library exports ``name``."""
    try:
        vm[name]
    except (AttributeError, KeyError, RuntimeError, tvm.error.TVMError):
        return False
    return True


class PagedKVModel:
    """One process's model: VM, packed parameters and a paged KV cache.

    Parameters
    ----------
    vm
        ``relax.VirtualMachine`` of a library with MLC's ABI.
    params
        The packed parameters, in ``_metadata["params"]`` order.
    max_batch
        Sequences the cache holds at once.
    max_total_seq_len
        Tokens the cache holds over all sequences, rounded up to whole pages (default: the
        model's context window: the sequences share it).
    prefill_chunk
        Tokens one forward call may take (default: the library's ``prefill_chunk_size``).
    """

    def __init__(self, vm: Any, params: Sequence[Any], *, max_batch: int = 1,
                 max_total_seq_len: int | None = None, prefill_chunk: int | None = None
                 ) -> None:
        self.vm = vm
        self.params = list(params)
        self.meta = read_metadata(vm)
        create = next((n for n in KV_CREATE_FUNCTIONS if has_function(vm, n)), None)
        if create is None:
            raise RequestError("the model library has no paged-KV-cache creation function "
                               f"({' or '.join(KV_CREATE_FUNCTIONS)}): it was not built with "
                               "MLC's ABI")
        self.context_window = int(self.meta.get("context_window_size", -1))
        self.sliding_window = int(self.meta.get("sliding_window_size", -1))
        self.attention_sink = int(self.meta.get("attention_sink_size", -1))
        window = self.context_window if self.context_window > 0 else DEFAULT_KV_WINDOW
        self.max_total = int(max_total_seq_len or window)
        self.max_total = -(-self.max_total // PAGE_SIZE) * PAGE_SIZE
        self.prefill_chunk = int(prefill_chunk or self.meta.get("prefill_chunk_size") or 512)
        self.max_batch = int(max_batch)
        self._f = {k: tvm.get_global_func(v) for k, v in _KV.items()}
        self._embed = vm["embed"]
        self._prefill = vm["prefill"]
        self._decode = vm["decode"]
        self._batch_prefill = vm["batch_prefill"] if has_function(vm, "batch_prefill") else None
        self._batch_decode = vm["batch_decode"] if has_function(vm, "batch_decode") else None
        self.kv = vm[create](ShapeTuple([self.max_batch]), ShapeTuple([self.max_total]),
                             ShapeTuple([self.prefill_chunk]), ShapeTuple([PAGE_SIZE]),
                             ShapeTuple([int(self.sliding_window > 0)]))
        self.lengths: dict[int, int] = {}

    # -- sequences ---------------------------------------------------------------------------

    def add_sequence(self, seq_id: int) -> None:
        """Start an empty sequence."""
        if seq_id in self.lengths:
            raise RequestError(f"sequence {seq_id} already exists")
        if len(self.lengths) >= self.max_batch:
            raise RequestError(f"the KV cache holds at most {self.max_batch} sequences")
        self._f["kv_state_add_sequence"](self.kv, seq_id)
        if self.sliding_window > 0:
            self._f["attention_kv_cache_enable_sliding_window_for_seq"](
                self.kv, seq_id, self.sliding_window, max(self.attention_sink, 0))
        self.lengths[seq_id] = 0

    def remove_sequence(self, seq_id: int) -> None:
        """Drop a sequence and free its pages."""
        self._known(seq_id)
        self._f["kv_state_remove_sequence"](self.kv, seq_id)
        del self.lengths[seq_id]

    def popn(self, seq_id: int, n: int) -> None:
        """Forget the last ``n`` tokens of a sequence (to re-run them)."""
        self._known(seq_id)
        if not 0 <= n <= self.lengths[seq_id]:
            raise RequestError(f"sequence {seq_id} holds {self.lengths[seq_id]} tokens, "
                               f"cannot pop {n}")
        if n:
            self._f["kv_state_popn"](self.kv, seq_id, n)
            self.lengths[seq_id] -= n

    def clear(self) -> None:
        """Drop every sequence."""
        self._f["kv_state_clear"](self.kv)
        self.lengths.clear()

    @property
    def free_tokens(self) -> int:
        """Tokens the cache can still take (whole free pages)."""
        return int(self._f["attention_kv_cache_get_num_available_pages"](self.kv)) * PAGE_SIZE

    # -- forward -----------------------------------------------------------------------------

    def prefill(self, seq_ids: Sequence[int], tokens: Sequence[Sequence[int]]) -> np.ndarray:
        """Append ``tokens[i]`` to sequence ``seq_ids[i]``; logits of each one's last token.

        Returns
        -------
        numpy.ndarray
            float32 ``[len(seq_ids), vocab]``.
        """
        if len(seq_ids) != len(tokens) or not seq_ids:
            raise RequestError("prefill needs one non-empty token list per sequence")
        if len(set(seq_ids)) != len(seq_ids):
            raise RequestError("a sequence appears twice in one prefill")
        for sid, toks in zip(seq_ids, tokens, strict=True):
            self._known(sid)
            if not toks:
                raise RequestError(f"sequence {sid}: empty prompt")
            self._fits(sid, len(toks))
        self._reserve({sid: len(t) for sid, t in zip(seq_ids, tokens, strict=True)})
        out: dict[int, np.ndarray] = {}
        # Chunks of whole sequences up to the prefill chunk; a longer one goes alone in pieces.
        batch: list[tuple[int, list[int]]] = []
        for sid, toks in zip(seq_ids, tokens, strict=True):
            toks = [int(t) for t in toks]
            if len(toks) > self.prefill_chunk:
                self._run_prefill(batch, out)
                batch = []
                for start in range(0, len(toks), self.prefill_chunk):
                    self._run_prefill([(sid, toks[start:start + self.prefill_chunk])], out)
                continue
            if sum(len(t) for _, t in batch) + len(toks) > self.prefill_chunk or \
                    (batch and self._batch_prefill is None):
                self._run_prefill(batch, out)
                batch = []
            batch.append((sid, toks))
        self._run_prefill(batch, out)
        return np.stack([out[sid] for sid in seq_ids])

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
        """Append one token to each sequence; their logits, float32 ``[n, vocab]``."""
        if len(seq_ids) != len(tokens) or not seq_ids:
            raise RequestError("decode needs one token per sequence")
        if len(set(seq_ids)) != len(seq_ids):
            raise RequestError("a sequence appears twice in one decode step")
        for sid in seq_ids:
            self._known(sid)
            self._fits(sid, 1)
        self._reserve({sid: 1 for sid in seq_ids})
        if len(seq_ids) > 1 and self._batch_decode is None:
            return np.stack([self.decode([s], [t])[0] for s, t in zip(seq_ids, tokens,
                                                                       strict=True)])
        ids = [int(s) for s in seq_ids]
        self._f["kv_state_begin_forward"](self.kv, ShapeTuple(ids), ShapeTuple([1] * len(ids)))
        try:
            x = self._embedded([int(t) for t in tokens], (len(ids), 1))
            fn = self._decode if len(ids) == 1 else self._batch_decode
            logits, _ = fn(x, self.kv, self.params)
        finally:
            self._f["kv_state_end_forward"](self.kv)
        for sid in ids:
            self.lengths[sid] += 1
        return np.from_dlpack(logits).reshape(len(ids), -1).copy()

    # -- internals ---------------------------------------------------------------------------

    def _embedded(self, ids: list[int], lead: tuple[int, int]) -> Any:
        h = self._embed(tvm.runtime.tensor(np.asarray(ids, dtype=np.int32)), self.params)
        return h._create_view((*lead, int(h.shape[-1])), h.dtype)

    def _run_prefill(self, batch: list[tuple[int, list[int]]], out: dict[int, np.ndarray]
                     ) -> None:
        if not batch:
            return
        ids = [sid for sid, _ in batch]
        lens = [len(t) for _, t in batch]
        flat = [t for _, toks in batch for t in toks]
        self._f["kv_state_begin_forward"](self.kv, ShapeTuple(ids), ShapeTuple(lens))
        try:
            x = self._embedded(flat, (1, len(flat)))
            if len(batch) == 1:
                logits, _ = self._prefill(x, self.kv, self.params)
            else:
                positions = np.cumsum(lens, dtype=np.int32) - 1
                logits, _ = self._batch_prefill(x, tvm.runtime.tensor(positions), self.kv,
                                                self.params)
        finally:
            self._f["kv_state_end_forward"](self.kv)
        rows = np.from_dlpack(logits).reshape(len(batch), -1)
        for i, (sid, toks) in enumerate(batch):
            self.lengths[sid] += len(toks)
            out[sid] = rows[i].copy()

    def _known(self, seq_id: int) -> None:
        if seq_id not in self.lengths:
            raise RequestError(f"unknown sequence {seq_id}")

    def _fits(self, seq_id: int, n: int) -> None:
        total = self.lengths[seq_id] + n
        if self.context_window > 0 and self.sliding_window <= 0 and total > self.context_window:
            raise RequestError(f"sequence {seq_id} would hold {total} tokens, more than the "
                               f"model's context window of {self.context_window}")

    def _reserve(self, growth: dict[int, int]) -> None:
        """Refuse a step whose new pages (sequence by sequence) exceed the free ones."""
        if self.sliding_window > 0:
            return  # a windowed sequence recycles its pages
        pages = sum(-(-(self.lengths[s] + n) // PAGE_SIZE) - -(-self.lengths[s] // PAGE_SIZE)
                    for s, n in growth.items())
        free = self.free_tokens // PAGE_SIZE
        if pages > free:
            raise RequestError(f"the KV cache is full: the step needs {pages} more pages of "
                               f"{PAGE_SIZE} tokens, {free} are free (capacity "
                               f"{self.max_total} tokens)")
