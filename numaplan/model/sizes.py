"""Byte counts the planner and the cost model need: weights, per-worker shards, KV cache,
all-reduce payloads."""

from __future__ import annotations

from numaplan.model.dtypes import dtype_itemsize
from numaplan.model.workload import Workload

#: Tokens per page of the paged KV cache numaplan creates (TVM's ``page_size`` argument; TVM
#: 0.27's CPU attention kernels require 16): capacities are whole pages.
KV_PAGE_TOKENS = 16
#: The context planned and cached for a model that states no window (a sliding-window model
#: with no fixed context reports -1).
DEFAULT_KV_WINDOW = 4096


def kv_window(workload: Workload) -> int:
    """Tokens of KV cache one sequence can hold: the context window, else
    :data:`DEFAULT_KV_WINDOW`."""
    return workload.context_window_size if workload.context_window_size > 0 else \
        DEFAULT_KV_WINDOW


def total_nbytes(workload: Workload) -> int:
    """Bytes of all tensors as stored in the shard files (encoded)."""
    return sum(t.nbytes for t in workload.tensors)


def total_mem_nbytes(workload: Workload) -> int:
    """Bytes of all tensors once loaded (float32 stored as bf16 counts 4 bytes an element)."""
    return sum(t.mem_nbytes for t in workload.tensors)


def layer_nbytes(workload: Workload, layer: int) -> int:
    """On-disk bytes of the tensors of decoder layer ``layer``."""
    return sum(t.nbytes for t in workload.tensors if t.layer == layer)


def replicated_nbytes(workload: Workload) -> int:
    """In-memory bytes every worker holds whole (embeddings, norms, lm_head...)."""
    return sum(t.mem_nbytes for t in workload.tensors if not t.is_split)


def worker_nbytes(workload: Workload, num_workers: int) -> int:
    """On-disk bytes one worker reads at tensor-parallel degree ``num_workers``.

    Raises
    ------
    InfeasiblePlanError
        When some tensor cannot be split evenly (see :func:`numaplan.model.validate_tp`).
    """
    return sum(t.shard_nbytes(num_workers) for t in workload.tensors)


def worker_mem_nbytes(workload: Workload, num_workers: int) -> int:
    """In-memory weight bytes of one worker at degree ``num_workers`` (replicated tensors
    included in full).

    Examples
    --------
    Llama-3-8B q4f16_1: 4.21, 2.38, 1.46, 1.01 GiB at 1, 2, 4, 8 workers.
    """
    return sum(t.shard_mem_nbytes(num_workers) for t in workload.tensors)


def kv_cache_bytes_per_token(workload: Workload, *, num_workers: int = 1) -> int:
    """KV-cache bytes one token adds: ``2 * layers * kv_heads * head_dim * dtype bytes``.

    Parameters
    ----------
    workload
        The model.
    num_workers
        Divide the kv heads among this many workers (MLC shards the cache by kv head), giving
        one worker's share.
    """
    if workload.num_key_value_heads % num_workers:
        raise ValueError(f"{workload.num_key_value_heads} kv heads do not split among "
                         f"{num_workers} workers")
    return (2 * workload.num_hidden_layers * (workload.num_key_value_heads // num_workers)
            * workload.head_dim * dtype_itemsize(workload.model_dtype))


def allreduce_bytes(workload: Workload, batch: int) -> int:
    """Payload of one all-reduce: ``batch * hidden_size`` elements of the model dtype.

    There are two per decoder layer (after ``o_proj`` and after ``down_proj``), see
    :func:`allreduces_per_step`. For prefill pass ``batch * sequence length``.
    """
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    return batch * workload.hidden_size * dtype_itemsize(workload.model_dtype)


def allreduces_per_step(workload: Workload) -> int:
    """All-reduces per forward step with more than one worker (two per decoder layer)."""
    return 2 * workload.num_hidden_layers
