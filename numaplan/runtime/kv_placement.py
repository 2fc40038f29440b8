"""The KV cache's pages: bound to the worker's node and audited like the weights.

TVM allocates the paged KV cache inside the model library's own creation function, so numaplan
cannot hand it node-bound memory. :func:`create_on_node` places it from outside:

1. the creating thread's policy is set to bind to the worker's memory node for the call
   (``set_mempolicy``), then restored: whatever the library allocates *and touches* during the
   call lands there;
2. the anonymous memory the call added (:func:`~numaplan.osnuma.regions.added_ranges` of
   ``/proc/self/maps`` before and after) gets the same range policy (``mbind`` with
   ``MPOL_MF_MOVE``), so the pages first written later, by any thread (TVM's pool writes the
   cache during prefill and decode), land there too.

:func:`audit_kv` then reports where the *resident* pages are (``move_pages``), at creation and
again whenever the worker reports. The pages are not prefaulted: TVM 0.27's cache maps a
256 MiB attention workspace its CPU kernels never touch (measured: 256 MiB of the 257 MiB a
worker of the example model maps), and faulting it in would cost that much memory per worker.

Each refused call falls back under ``allow_fallback`` and is recorded as a
:class:`~numaplan.osnuma.Downgrade`. The memory found may include small allocations other
threads made during the call; it is all this worker's, and bound to its node.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
from pydantic import Field, computed_field

from numaplan._base import Frozen
from numaplan.errors import PlacementError
from numaplan.osnuma import (
    Downgrade,
    apply_mempolicy,
    bind_range,
    get_mempolicy,
    page_nodes,
    restore_mempolicy,
)
from numaplan.osnuma.regions import added_ranges, read_anonymous_ranges
from numaplan.osnuma.system import PAGE_SIZE
from numaplan.plan.formatting import human_bytes

T = TypeVar("T")


class KVMemory(Frozen):
    """The memory a KV cache's creation added: ``[start, end)`` ranges on ``node_id``'s
    policy, and the calls refused while placing it (under ``allow_fallback``)."""

    node_id: int
    ranges: tuple[tuple[int, int], ...]
    downgrades: tuple[Downgrade, ...] = ()


class KVPlacement(Frozen):
    """Where the KV cache's resident pages are (:func:`audit_kv`).

    Attributes
    ----------
    node_id
        The worker's memory node (where the pages should be).
    bytes_mapped
        Anonymous memory the creation added (the cache, its workspace, and what else was
        allocated then), resident or not.
    pages_resident
        Pages backed by memory when audited (0 when not audited).
    pages_on_node
        Of those, on ``node_id``.
    pages_per_node
        Resident pages per node.
    audited
        ``move_pages`` answered (``False``: refused under ``allow_fallback``).
    downgrades
        Placement calls refused under ``allow_fallback``.
    """

    node_id: int
    bytes_mapped: int
    pages_resident: int = 0
    pages_on_node: int = 0
    pages_per_node: dict[int, int] = Field(default_factory=dict)
    audited: bool = False
    downgrades: tuple[Downgrade, ...] = ()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def on_node_fraction(self) -> float:
        """Share of the resident pages on the worker's node (1.0 when none is resident)."""
        return self.pages_on_node / self.pages_resident if self.pages_resident else 1.0

    @property
    def complete(self) -> bool:
        """Audited, and every resident page is on the worker's node."""
        return self.audited and self.pages_on_node == self.pages_resident

    def describe(self) -> str:
        """``KV cache 257.1 MiB mapped, 1.1 MiB resident: 100.0% on node 0``."""
        head = f"KV cache {human_bytes(self.bytes_mapped)} mapped"
        if not self.audited:
            return f"{head}, not audited"
        others = [f"node {n}: {c} pages" for n, c in self.pages_per_node.items()
                  if n != self.node_id]
        return (f"{head}, {human_bytes(self.pages_resident * PAGE_SIZE)} resident: "
                f"{100 * self.on_node_fraction:.1f}% on node {self.node_id}"
                + (f", elsewhere {', '.join(others)}" if others else ""))


def create_on_node(create: Callable[[], T], node_id: int, *, bind: bool = True,
                   allow_fallback: bool = False, what: str = "KV cache") -> tuple[T, KVMemory]:
    """Call ``create`` so that the memory it allocates is bound to ``node_id``.

    Parameters
    ----------
    create
        Allocates (e.g. creates TVM's paged KV cache); called once, on this thread.
    node_id
        The worker's memory node.
    bind
        Place the memory (off: first touch decides; :func:`audit_kv` still reports).
    allow_fallback
        Continue when a call is refused, recording a downgrade.
    what
        Names the memory in the downgrades.

    Returns
    -------
    (result of create, KVMemory)

    Raises
    ------
    PlacementError
        A call was refused and ``allow_fallback`` is off.
    """
    downgrades: list[Downgrade] = []
    saved = None
    if bind:
        try:
            saved = get_mempolicy()
        except PlacementError as exc:
            if not allow_fallback or exc.call is None:
                raise
            downgrades.append(Downgrade.of(exc, f"read the thread memory policy before the "
                                                f"{what}", "not restored afterwards"))
        outcome = apply_mempolicy("bind", [node_id], allow_fallback=allow_fallback)
        downgrades += [d for d in [outcome.downgrade(f"thread creating the {what}")] if d]
    before = read_anonymous_ranges()
    try:
        result = create()
    finally:
        if saved is not None:
            restore_mempolicy(saved)
    ranges = added_ranges(before, read_anonymous_ranges())
    for lo, hi in ranges if bind else ():
        outcome = bind_range(lo, hi - lo, node_id, move=True, strict=False,
                             allow_fallback=allow_fallback)
        downgrades += [d for d in [outcome.downgrade(what)] if d]
    return result, KVMemory(node_id=node_id, ranges=tuple(ranges), downgrades=tuple(downgrades))


def audit_kv(memory: KVMemory, *, allow_fallback: bool = False, page_query=None,
             what: str = "KV cache") -> KVPlacement:
    """Where the resident pages of ``memory`` are now (move_pages, ``nodes=NULL``).

    Parameters
    ----------
    memory
        From :func:`create_on_node`.
    allow_fallback
        A refused move_pages gives an unaudited report (recorded) instead of an error.
    page_query
        Replaces move_pages(2) (tests).

    Raises
    ------
    PlacementError
        move_pages was refused and ``allow_fallback`` is off.
    """
    fields = dict(node_id=memory.node_id, bytes_mapped=sum(hi - lo for lo, hi in memory.ranges))
    pages = np.concatenate([np.arange(lo, hi, PAGE_SIZE, dtype=np.uint64)
                            for lo, hi in memory.ranges]) if memory.ranges \
        else np.zeros(0, np.uint64)
    try:
        status = np.asarray(page_query(pages) if page_query is not None else page_nodes(pages),
                            dtype=np.int64)
    except PlacementError as exc:
        if not allow_fallback or exc.call is None:
            raise
        return KVPlacement(**fields, downgrades=(
            *memory.downgrades, Downgrade.of(exc, f"audit of the {what}", "not audited")))
    nodes, counts = np.unique(status[status >= 0], return_counts=True)
    per_node = {int(n): int(c) for n, c in zip(nodes, counts, strict=True)}
    return KVPlacement(**fields, pages_resident=sum(per_node.values()),
                       pages_on_node=per_node.get(memory.node_id, 0), pages_per_node=per_node,
                       audited=True, downgrades=memory.downgrades)


def check_kv_placement(placement: KVPlacement, worker_id: int, *, strict: bool) -> None:
    """In strict mode, refuse a KV cache with pages off the worker's node or not audited.

    Raises
    ------
    PlacementError
        Naming the worker and where the pages are.
    """
    if strict and not placement.complete:
        raise PlacementError(f"worker {worker_id}: strict placement refuses its "
                             f"{placement.describe()}")
