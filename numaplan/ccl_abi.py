"""The collective's ABI: what a compiled model, numaplan's runtime and the C kernel agree on.

This module is the one place that names the collective's functions and numbers its codes. The
compile pass (:mod:`numaplan.passes.lower_collectives`), the runtime (:mod:`numaplan.runtime.ccl`),
its TVM registration and the tests import it; the C kernel (``numaplan/runtime/ccl/kernel.c``)
mirrors the codes in its enums. It lives beside :mod:`numaplan.errors`, outside the layers,
because the compiler and the runtime both need it and neither may import the other.

What it holds:

- the functions a compiled model calls, ``numaplan.ccl.<op>`` for each op of :data:`OPS`, in
  destination-passing style (the output last):

  - ``numaplan.ccl.allreduce(x, op_code, coll_id, group, algorithm, out)``
  - ``numaplan.ccl.broadcast_from_worker0(x, coll_id, group, out)``
  - ``numaplan.ccl.allgather(x, coll_id, group, out)`` (concatenation along axis 0)
  - ``numaplan.ccl.scatter_from_worker0(x, axis, coll_id, group, out)``

- the codes: reduction ops (TVM's ``relax.ccl`` numbering), element types, all-reduce
  algorithms, the kernel's return codes, and the kernel's limits;
- the 64-bit call descriptor every rank publishes with its data, so that peers can check they
  run the same call (:func:`encode_desc`, :func:`describe_desc`);
- the all-reduce algorithm for a message size (:func:`choose_algorithm` over the table of
  :func:`plan_algorithms`): the pass uses it for static sizes, the runtime for ``by_size``, so the
  two always agree.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal, get_args

from numaplan._base import Frozen

if TYPE_CHECKING:
    from numaplan.plan.schema import Plan

# -- functions ------------------------------------------------------------------------------------
#: Prefix of the functions a compiled model calls.
PREFIX = "numaplan.ccl."
#: The collectives, in descriptor-kind order (an op's kind code is its index).
OPS: tuple[str, ...] = ("allreduce", "broadcast_from_worker0", "allgather", "scatter_from_worker0")
ALLREDUCE, BROADCAST, ALLGATHER, SCATTER = range(len(OPS))
#: ``numaplan.ccl.<op>`` for every op, in :data:`OPS` order.
FUNCTION_NAMES: tuple[str, ...] = tuple(PREFIX + op for op in OPS)
#: The only collective group: every tensor-parallel rank (the only group MLC's models use).
GROUP = "tp"

# -- codes ----------------------------------------------------------------------------------------
#: Reduction ops, numbered as TVM's ``relax.ccl`` numbers them (a code is the index).
REDUCE_OPS: tuple[str, ...] = ("sum", "prod", "min", "max", "avg")
OP_SUM, OP_PROD, OP_MIN, OP_MAX, OP_AVG = range(len(REDUCE_OPS))
OP_CODES = {name: code for code, name in enumerate(REDUCE_OPS)}

#: Element types the reductions support (a code is the index), with their sizes in bytes.
DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "int32", "float64", "int64")
DT_F32, DT_F16, DT_BF16, DT_I32, DT_F64, DT_I64 = range(len(DTYPES))
DTYPE_SIZES: tuple[int, ...] = (4, 2, 2, 4, 8, 8)
DTYPE_CODES = {name: code for code, name in enumerate(DTYPES)}

Algorithm = Literal["one_shot", "two_shot", "hierarchical"]
#: All-reduce algorithms (a code is the index); see :mod:`numaplan.runtime.ccl`.
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
ONE_SHOT, TWO_SHOT, HIERARCHICAL = range(len(ALGORITHMS))
ALGORITHM_CODES = {name: code for code, name in enumerate(ALGORITHMS)}
#: The algorithm argument that leaves the choice to the runtime (message size not static).
BY_SIZE = "by_size"

#: Return codes of the kernel's calls (``CCL_OK``, ``CCL_ERR_*``).
OK, ERR_TIMEOUT, ERR_DEAD, ERR_ABORTED, ERR_MISMATCH, ERR_ARG = range(6)
#: The kernel's limits (``CCL_MAX_RANKS``, ``CCL_MAX_NODES``: array sizes of its context).
MAX_RANKS = 256
MAX_NODES = 64


def function_name(op: str) -> str:
    """``numaplan.ccl.<op>``.

    Raises
    ------
    ValueError
        ``op`` is not one of :data:`OPS`.
    """
    if op not in OPS:
        raise ValueError(f"unknown collective {op!r}; numaplan's are {', '.join(OPS)}")
    return PREFIX + op


# -- the call descriptor --------------------------------------------------------------------------
def encode_desc(kind: int, algo: int, dtype: int, op: int, coll_id: int, nbytes: int) -> int:
    """The descriptor of one call (one chunk): what every rank publishes with its data.

    Bits 0-31 the chunk's bytes, 32-47 the collective id, 48-51 the reduction op, 52-55 the
    dtype, 56-59 the kind (index in :data:`OPS`), 60-63 the algorithm. Two ranks in the same
    call publish the same descriptor; the kernel reports a mismatch otherwise. The fields other
    than the size are 0 where they do not apply, so ``encode_desc(..., 0) | nbytes`` is the
    descriptor of any chunk of a call.

    Examples
    --------
    >>> describe_desc(encode_desc(ALLREDUCE, ONE_SHOT, DT_F16, OP_SUM, 3, 16384))
    'allreduce one_shot sum float16 of 16384 bytes (collective id 3)'
    """
    return ((nbytes & 0xFFFFFFFF) | ((coll_id & 0xFFFF) << 32) | ((op & 0xF) << 48)
            | ((dtype & 0xF) << 52) | ((kind & 0xF) << 56) | ((algo & 0xF) << 60))


def describe_desc(desc: int) -> str:
    """A descriptor in words, e.g. ``allreduce one_shot sum float16 of 16384 bytes
    (collective id 3)`` (error messages name both sides of a mismatch this way)."""
    kind = (desc >> 56) & 0xF
    name = OPS[kind] if kind < len(OPS) else f"kind {kind}"
    nbytes, cid = desc & 0xFFFFFFFF, (desc >> 32) & 0xFFFF
    if kind == ALLREDUCE:
        algo, op, dt = (desc >> 60) & 0xF, (desc >> 48) & 0xF, (desc >> 52) & 0xF
        name += (f" {ALGORITHMS[algo] if algo < len(ALGORITHMS) else algo}"
                 f" {REDUCE_OPS[op] if op < len(REDUCE_OPS) else op}"
                 f" {DTYPES[dt] if dt < len(DTYPES) else dt}")
    return f"{name} of {nbytes} bytes (collective id {cid})"


# -- the all-reduce algorithm for a message size --------------------------------------------------
#: One node: one-shot below this many bytes, two-shot from it (docs/background.md 3.1).
TWO_SHOT_FROM_BYTES = 1 << 20


class AlgorithmRule(Frozen):
    """Messages smaller than ``below_bytes`` (``None``: any size) use ``algorithm``."""

    below_bytes: int | None = None
    algorithm: Algorithm


def default_algorithms(node_of_rank: Sequence[int]) -> tuple[AlgorithmRule, ...]:
    """One node: one-shot below 1 MiB, two-shot from it; several nodes: hierarchical."""
    if len(set(node_of_rank)) > 1:
        return (AlgorithmRule(algorithm="hierarchical"),)
    return (AlgorithmRule(below_bytes=TWO_SHOT_FROM_BYTES, algorithm="one_shot"),
            AlgorithmRule(algorithm="two_shot"))


def algorithms_from_choices(choices: Iterable[object], node_of_rank: Sequence[int]
                            ) -> tuple[AlgorithmRule, ...]:
    """Turn a plan's ``(message_bytes, algorithm)`` choices into size thresholds.

    Between two listed sizes with different algorithms the boundary is 1 MiB when it lies
    between them, else their geometric mean; a listed size always gets its own algorithm.
    Choices naming no real algorithm (``"none"`` for a single worker) are ignored; with none
    left the default table (:func:`default_algorithms`) is used.
    """
    pts = sorted({(int(c.message_bytes), str(c.algorithm)) for c in choices  # type: ignore[attr-defined]
                  if str(c.algorithm) in ALGORITHMS})  # type: ignore[attr-defined]
    if not pts:
        return default_algorithms(node_of_rank)
    rules: list[AlgorithmRule] = []
    for (m0, a0), (m1, a1) in itertools.pairwise(pts):
        if a0 == a1:
            continue
        if m0 < TWO_SHOT_FROM_BYTES <= m1:
            boundary = TWO_SHOT_FROM_BYTES
        else:
            boundary = max(m0 + 1, math.isqrt(m0 * m1))
        rules.append(AlgorithmRule(below_bytes=boundary, algorithm=a0))  # type: ignore[arg-type]
    rules.append(AlgorithmRule(algorithm=pts[-1][1]))  # type: ignore[arg-type]
    return tuple(rules)


def plan_algorithms(plan: Plan) -> tuple[AlgorithmRule, ...]:
    """The algorithm table of a plan: its collective choices over its workers' nodes.

    What both the pass (for static message sizes) and the runtime's communicator (for
    ``by_size``) choose from.
    """
    workers = sorted(plan.workers, key=lambda w: w.worker_id)
    return algorithms_from_choices(plan.collectives.choices, [w.node_id for w in workers])


def choose_algorithm(rules: Sequence[AlgorithmRule], nbytes: int) -> Algorithm:
    """The table's algorithm for a message of ``nbytes``: the first rule it is below.

    Examples
    --------
    >>> choose_algorithm(default_algorithms([0, 0]), 16384)
    'one_shot'
    >>> choose_algorithm(default_algorithms([0, 0]), 2 << 20)
    'two_shot'
    """
    for rule in rules:
        if rule.below_bytes is None or nbytes < rule.below_bytes:
            return rule.algorithm
    raise ValueError("the algorithm table must end with a rule without below_bytes")
