"""MLC's tensor-parallel shard rules and the pure arithmetic on them.

MLC marks each sharded weight with ``ShardSingleDim(name, dim, segs)``
(``mlc_llm/support/tensor_parallel.py``). For ``W`` workers, worker ``w`` takes, from every
segment along ``dim``, the ``w``-th contiguous ``1/W`` of that segment, and its shard is the
concatenation of those pieces. For a fused qkv weight that gives ``[q_w | k_w | v_w]``; for a
single-segment split on dim 1 it is ``np.split(x, W, axis=1)[w]``. Everything else is
replicated.

Which tensors split how (Llama, Mistral, Qwen2, Phi-3 in MLC):

========================  ==========  ======  ============================
role                      param       dim     segments
========================  ==========  ======  ============================
attn_qkv (fused)          weight,     0       [H*d, KV*d, KV*d]
                          q_weight,
                          q_scale,
                          bias
mlp_in (fused gate|up)    same        0       [I, I]
attn_out, mlp_out         weight,     1       [whole dim 1] (packed/grouped
                          q_weight,           extent for q_weight/q_scale)
                          q_scale
everything else                       --      replicated
========================  ==========  ======  ============================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import model_validator

from numaplan._base import Frozen
from numaplan.errors import InfeasiblePlanError
from numaplan.model.dtypes import dtype_itemsize, encoded_itemsize
from numaplan.model.roles import Role, TensorRole

_WEIGHT_PARAMS = frozenset({"weight", "q_weight", "q_scale"})


class ShardRule(Frozen):
    """How a tensor is divided among tensor-parallel workers.

    ``kind == "replicate"``: every worker holds the whole tensor (``dim`` is ``None``,
    ``segments`` empty). ``kind == "split"``: ``segments`` partition ``dim`` (they sum to the
    tensor's extent along it) and each is cut into ``W`` equal contiguous pieces.
    """

    kind: Literal["replicate", "split"]
    dim: int | None = None
    segments: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> ShardRule:
        if self.kind == "replicate":
            if self.dim is not None or self.segments:
                raise ValueError("a replicated tensor has no split dim or segments")
        else:
            if self.dim is None or self.dim < 0:
                raise ValueError("a split needs a non-negative dim")
            if not self.segments or any(s <= 0 for s in self.segments):
                raise ValueError("a split needs positive segment sizes")
        return self

    @property
    def is_split(self) -> bool:
        """Whether the tensor is divided among workers."""
        return self.kind == "split"


REPLICATE = ShardRule(kind="replicate")


def mlc_shard_rule(role: TensorRole, shape: Sequence[int], *, q_rows: int, kv_rows: int,
                   intermediate_size: int, kn_layout: bool = False) -> ShardRule:
    """The rule MLC applies to a tensor of ``role`` and ``shape``.

    Parameters
    ----------
    role
        From :func:`numaplan.model.roles.classify_tensor`.
    shape
        The full (unsharded) shape.
    q_rows, kv_rows
        ``num_attention_heads * head_dim`` and ``num_key_value_heads * head_dim``: the q and
        the k (= v) segments of a fused qkv projection.
    intermediate_size
        The gate and the up segments of a fused gate|up projection.
    kn_layout
        The quantization stores ``q_weight``/``q_scale`` transposed (``*_0`` schemes), so the
        output dimension is dim 1.

    Raises
    ------
    ValueError
        When the shape does not fit the role (e.g. a fused qkv whose rows are not
        ``q_rows + 2*kv_rows``).
    """
    transposed = kn_layout and role.param in ("q_weight", "q_scale")
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    if role.role in (Role.ATTN_QKV, Role.MLP_IN) and (
            role.param in _WEIGHT_PARAMS or role.param == "bias"):
        dim = 0 if role.param == "bias" else out_dim
        _need_dims(shape, dim, role)
        if not role.fused:
            return ShardRule(kind="split", dim=dim, segments=(shape[dim],))
        segments = ((q_rows, kv_rows, kv_rows) if role.role is Role.ATTN_QKV
                    else (intermediate_size, intermediate_size))
        if sum(segments) != shape[dim]:
            raise ValueError(f"{role.role.value} {role.param} has {shape[dim]} rows along dim "
                             f"{dim}, the config implies {' + '.join(map(str, segments))} = "
                             f"{sum(segments)}")
        return ShardRule(kind="split", dim=dim, segments=segments)
    if role.role in (Role.ATTN_OUT, Role.MLP_OUT) and role.param in _WEIGHT_PARAMS:
        _need_dims(shape, in_dim, role)
        return ShardRule(kind="split", dim=in_dim, segments=(shape[in_dim],))
    # Embeddings, norms, lm_head, row-parallel biases (summed after the all-reduce, so whole).
    return REPLICATE


def shard_shape(shape: Sequence[int], rule: ShardRule, num_workers: int) -> tuple[int, ...]:
    """The shape of one worker's shard (the same for every worker).

    Raises
    ------
    InfeasiblePlanError
        When a segment does not divide evenly among ``num_workers``.
    ValueError
        When ``num_workers < 1`` or the rule does not fit ``shape``.

    Examples
    --------
    >>> rule = ShardRule(kind="split", dim=0, segments=(4096, 1024, 1024))
    >>> shard_shape((6144, 512), rule, 2)
    (3072, 512)
    """
    _check(shape, rule, num_workers)
    if not rule.is_split:
        return tuple(shape)
    out = list(shape)
    out[rule.dim] //= num_workers  # type: ignore[index]
    return tuple(out)


def shard_nbytes(shape: Sequence[int], dtype: str, rule: ShardRule, num_workers: int, *,
                 encoding: str = "raw") -> int:
    """Bytes of one worker's shard as stored on disk under ``encoding``.

    ``f32-to-bf16`` float32 data takes 2 bytes an element on disk; see
    :func:`shard_mem_nbytes` for the loaded size.
    """
    return math.prod(shard_shape(shape, rule, num_workers)) * encoded_itemsize(dtype, encoding)


def shard_mem_nbytes(shape: Sequence[int], dtype: str, rule: ShardRule, num_workers: int) -> int:
    """Bytes of one worker's shard once loaded (decoded to ``dtype``)."""
    return math.prod(shard_shape(shape, rule, num_workers)) * dtype_itemsize(dtype)


def slice_shard(array: np.ndarray, rule: ShardRule, num_workers: int, worker: int) -> np.ndarray:
    """Worker ``worker``'s shard of ``array``, exactly as MLC's shard function computes it.

    Parameters
    ----------
    array
        The full tensor.
    rule
        Its shard rule.
    num_workers
        Tensor-parallel degree ``W``.
    worker
        ``0 <= worker < W``.

    Returns
    -------
    numpy.ndarray
        A new array for a split; ``array`` itself (not a copy) when replicated.

    Examples
    --------
    >>> x = np.arange(12).reshape(6, 2)
    >>> rule = ShardRule(kind="split", dim=0, segments=(2, 2, 2))
    >>> slice_shard(x, rule, 2, 1)[:, 0].tolist()
    [2, 6, 10]
    """
    _check(array.shape, rule, num_workers, worker)
    if not rule.is_split:
        return array
    dim = rule.dim
    pieces = []
    start = 0
    for seg in rule.segments:
        per = seg // num_workers
        index = [slice(None)] * array.ndim
        index[dim] = slice(start + worker * per, start + (worker + 1) * per)  # type: ignore[index]
        pieces.append(array[tuple(index)])
        start += seg
    return np.concatenate(pieces, axis=dim)


def shard_byte_ranges(shape: Sequence[int], dtype: str, rule: ShardRule, num_workers: int,
                      worker: int, *, byte_offset: int = 0, encoding: str = "raw"
                      ) -> tuple[tuple[int, int], ...]:
    """The ``(file_offset, length)`` ranges worker ``worker`` reads to get its shard.

    The tensor is stored row-major at ``byte_offset`` in its shard file. A dim-0 split gives one
    contiguous range per segment (adjacent ranges are merged, so ``W == 1`` gives one range);
    a split on a later dim gives one range per index of the leading dims. Reading the ranges
    in order and reshaping to :func:`shard_shape` yields :func:`slice_shard`'s result.

    Examples
    --------
    >>> rule = ShardRule(kind="split", dim=0, segments=(4, 2, 2))
    >>> shard_byte_ranges((8, 3), "float16", rule, 2, 1, byte_offset=100)
    ((112, 12), (130, 6), (142, 6))
    """
    _check(shape, rule, num_workers, worker)
    item = encoded_itemsize(dtype, encoding)
    if not rule.is_split:
        total = math.prod(shape) * item
        return ((byte_offset, total),) if total else ()
    dim = rule.dim
    outer = math.prod(shape[:dim])  # type: ignore[misc]
    inner = math.prod(shape[dim + 1:]) * item  # type: ignore[operator]
    row_block = shape[dim] * inner  # type: ignore[index]
    ranges: list[list[int]] = []
    for o in range(outer):
        start = 0
        for seg in rule.segments:
            per = seg // num_workers
            offset = byte_offset + o * row_block + (start + worker * per) * inner
            length = per * inner
            start += seg
            if not length:
                continue
            if ranges and ranges[-1][0] + ranges[-1][1] == offset:
                ranges[-1][1] += length
            else:
                ranges.append([offset, length])
    return tuple((a, b) for a, b in ranges)


def _need_dims(shape: Sequence[int], dim: int, role: TensorRole) -> None:
    if len(shape) <= dim:
        raise ValueError(f"{role.role.value} {role.param} of shape {list(shape)} has no dim {dim}")


def _check(shape: Sequence[int], rule: ShardRule, num_workers: int,
           worker: int | None = None) -> None:
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"the number of workers must be a positive integer, got {num_workers!r}")
    if worker is not None and not 0 <= worker < num_workers:
        raise ValueError(f"worker {worker} is not in [0, {num_workers})")
    if not rule.is_split:
        return
    if rule.dim >= len(shape):  # type: ignore[operator]
        raise ValueError(f"split dim {rule.dim} does not exist in shape {list(shape)}")
    if sum(rule.segments) != shape[rule.dim]:  # type: ignore[index]
        raise ValueError(f"segments {list(rule.segments)} do not sum to dim {rule.dim} of "
                         f"shape {list(shape)}")
    uneven = [s for s in rule.segments if s % num_workers]
    if uneven:
        raise InfeasiblePlanError(
            f"segment(s) {uneven} along dim {rule.dim} of shape {list(shape)} cannot be split "
            f"evenly among {num_workers} workers")
