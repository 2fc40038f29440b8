"""What every rank must agree on to build the communicator: :class:`CommSpec`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import model_validator

from numaplan._base import Frozen
from numaplan.ccl_abi import (
    MAX_NODES,
    MAX_RANKS,
    Algorithm,
    AlgorithmRule,
    choose_algorithm,
    default_algorithms,
    plan_algorithms,
)
from numaplan.osnuma.system import PAGE_SIZE
from numaplan.runtime.ccl.segments import SegmentLayout, layout_hash, round_up, segment_path
from numaplan.runtime.shm import check_namespace

if TYPE_CHECKING:  # importing the plan package costs ~0.2 s that a rank does not need
    from numaplan.plan.schema import Plan

#: How long a rank waits for a peer inside a collective before it reports it missing.
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_SLOT_BYTES = 1 << 20
MIN_PLAN_SLOT_BYTES = 64 << 10
MAX_SLOT_BYTES = 4 << 20


class CommSpec(Frozen):
    """Everything every rank must agree on to build the communicator.

    Attributes
    ----------
    namespace
        Unique per session (see :func:`~numaplan.runtime.shm.new_namespace`): prefixes the
        ``/dev/shm`` names.
    world_size
        W (defaults to ``len(node_of_rank)``).
    node_of_rank
        The node each rank runs on (node-major numbering is expected but not required).
    mem_node_of_rank
        The memory node each rank's memory is bound to (defaults to ``node_of_rank``). A node's
        segment is bound to its leader's memory node; a test may put "node 1" on memory node 0.
    slot_bytes
        Capacity of one data slot (rounded up to pages); larger messages go in chunks.
    algorithms
        Size thresholds -> algorithm for ``algorithm="by_size"`` (default:
        :func:`~numaplan.ccl_abi.default_algorithms`).
    timeout_s
        How long a rank waits for a peer before raising
        :class:`~numaplan.errors.CollectiveError`.
    connect_timeout_s
        How long :meth:`Communicator.create` waits for other nodes' segments (default
        ``timeout_s``).
    allow_placement_fallback
        If mbind is refused, degrade bind -> preferred -> nothing (recorded in
        :attr:`Communicator.placements`) instead of failing.
    spin_us, yield_us, sleep_max_us, check_interval_s
        The waiting policy (see :mod:`numaplan.runtime.ccl`).
    """

    namespace: str
    world_size: int
    node_of_rank: tuple[int, ...]
    mem_node_of_rank: tuple[int, ...]
    slot_bytes: int = DEFAULT_SLOT_BYTES
    algorithms: tuple[AlgorithmRule, ...]
    timeout_s: float = DEFAULT_TIMEOUT_S
    connect_timeout_s: float | None = None
    allow_placement_fallback: bool = False
    spin_us: float = 50.0
    yield_us: float = 2000.0
    sleep_max_us: float = 200.0
    check_interval_s: float = 0.05

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: object) -> object:
        if isinstance(data, dict):
            data = dict(data)
            nodes = tuple(data.get("node_of_rank") or ())
            data.setdefault("world_size", len(nodes))
            if data.get("mem_node_of_rank") is None:
                data["mem_node_of_rank"] = nodes
            if not data.get("algorithms"):
                data["algorithms"] = default_algorithms(nodes)
        return data

    @model_validator(mode="after")
    def _check(self) -> CommSpec:
        check_namespace(self.namespace)
        w = self.world_size
        if not 1 <= w <= MAX_RANKS:
            raise ValueError(f"world_size must be 1..{MAX_RANKS}, got {w}")
        if len(self.node_of_rank) != w or len(self.mem_node_of_rank) != w:
            raise ValueError(f"node_of_rank ({len(self.node_of_rank)}) and mem_node_of_rank "
                             f"({len(self.mem_node_of_rank)}) must list world_size={w} ranks")
        if len(set(self.node_of_rank)) > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes")
        if min(self.node_of_rank) < 0 or min(self.mem_node_of_rank) < 0:
            raise ValueError("node ids must be non-negative")
        if not 64 <= self.slot_bytes <= 1 << 30:
            raise ValueError(f"slot_bytes must be 64 B .. 1 GiB, got {self.slot_bytes}")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if not self.algorithms or self.algorithms[-1].below_bytes is not None:
            raise ValueError("the algorithm table must end with a rule without below_bytes")
        return self

    # -- derived ------------------------------------------------------------------------------
    @property
    def nodes(self) -> tuple[int, ...]:
        """The node ids, sorted (a node's *index* is its position here)."""
        return tuple(sorted(set(self.node_of_rank)))

    @property
    def intra_node_groups(self) -> tuple[tuple[int, ...], ...]:
        """Ranks of each node (in :attr:`nodes` order), sorted."""
        return tuple(tuple(r for r in range(self.world_size) if self.node_of_rank[r] == n)
                     for n in self.nodes)

    @property
    def leaders(self) -> tuple[int, ...]:
        """The first rank of each node (creates the node's segment, leads hierarchical)."""
        return tuple(g[0] for g in self.intra_node_groups)

    @property
    def inter_node_leaders(self) -> tuple[int, ...]:
        """The leaders when there are several nodes, else ``()`` (as in the plan)."""
        return self.leaders if len(self.nodes) > 1 else ()

    def leader_of(self, rank: int) -> int:
        """The leader of ``rank``'s node."""
        return self.leaders[self.nodes.index(self.node_of_rank[rank])]

    def segment_mem_node(self, node_id: int) -> int:
        """The memory node the segment of ``node_id`` is bound to (its leader's)."""
        return self.mem_node_of_rank[self.leaders[self.nodes.index(node_id)]]

    def segment_path(self, node_id: int) -> Path:
        """``/dev/shm/<namespace>-node<N>``."""
        return segment_path(self.namespace, node_id)

    @property
    def slot_stride(self) -> int:
        """Bytes of one data slot: ``slot_bytes`` rounded up to pages."""
        return round_up(self.slot_bytes, PAGE_SIZE)

    def algorithm_for(self, nbytes: int) -> Algorithm:
        """The table's algorithm for a message of ``nbytes``
        (:func:`~numaplan.ccl_abi.choose_algorithm`)."""
        return choose_algorithm(self.algorithms, nbytes)

    def segment_bytes(self) -> int:
        """Bytes of shared memory per node segment (the largest)."""
        return max(self.layout(i).size for i in range(len(self.nodes)))

    def layout(self, index: int) -> SegmentLayout:
        """The layout of the segment of the node at ``index`` in :attr:`nodes`."""
        groups = self.intra_node_groups
        return SegmentLayout(
            node_id=self.nodes[index], node_index=index, ranks=groups[index],
            slot_stride=self.slot_stride, mem_node=self.mem_node_of_rank[groups[index][0]],
            layout_hash=layout_hash(self.namespace, self.node_of_rank, self.slot_stride))

    # -- from a plan --------------------------------------------------------------------------
    @classmethod
    def from_plan(cls, plan: Plan, namespace: str, *, slot_bytes: int | None = None,
                  max_slot_bytes: int = MAX_SLOT_BYTES, **overrides: object) -> CommSpec:
        """The spec of a :class:`~numaplan.plan.schema.Plan`.

        Ranks are the plan's workers (``node_id``, ``mem_node_id``); the algorithm table is
        the plan's (:func:`~numaplan.ccl_abi.plan_algorithms`, which the compile pass uses
        too). The plan's ``segment_bytes`` sizes double-buffered per-rank slots for its largest
        (prefill) message on its fullest node, so one slot is
        ``segment_bytes / (2 x ranks per node)``, clamped to [64 KiB, ``max_slot_bytes``]
        (larger messages are chunked), unless ``slot_bytes`` is given.
        """
        workers = sorted(plan.workers, key=lambda w: w.worker_id)
        node_of_rank = tuple(w.node_id for w in workers)
        if slot_bytes is None:
            per_node = max((node_of_rank.count(n) for n in set(node_of_rank)), default=1)
            slot_bytes = plan.collectives.segment_bytes // (2 * per_node)
            slot_bytes = min(max(slot_bytes, MIN_PLAN_SLOT_BYTES), max_slot_bytes)
        fields: dict[str, object] = {
            "namespace": namespace, "node_of_rank": node_of_rank,
            "mem_node_of_rank": tuple(w.mem_node_id for w in workers),
            "slot_bytes": round_up(slot_bytes, PAGE_SIZE), "algorithms": plan_algorithms(plan)}
        fields.update(overrides)
        return cls(**fields)
