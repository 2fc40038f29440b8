"""What one rank's communicator measured: :class:`CommStats`."""

from __future__ import annotations

from pydantic import computed_field

from numaplan._base import Frozen
from numaplan.osnuma import Downgrade, PageAudit


class CallKindStats(Frozen):
    """Calls of one kind on one rank, as measured (wall clock of the whole call)."""

    calls: int
    bytes: int
    time_s: float

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mean_us(self) -> float:
        return 1e6 * self.time_s / self.calls if self.calls else 0.0


class CommStats(Frozen):
    """What one rank's communicator did since creation (or :meth:`Communicator.reset_stats`).

    ``calls``, ``bytes`` and ``time_s`` total every kind (``per_kind`` splits them; ``bytes``
    counts message bytes: the input of an all-reduce, broadcast or all-gather, rank 0's whole
    tensor for a scatter). ``bytes_read`` counts the bytes this rank read from other ranks'
    slots in shared memory (its own input and output are not counted);
    ``cross_node_bytes_read`` the part read from the segment of another node of the spec,
    ``remote_memory_bytes_read`` the part read from a segment bound to another memory node than
    this rank's. ``wait_s`` is the time spent waiting for peers (spinning included).

    ``kernel`` names the C kernel build that ran the calls (its library file and compiler
    flags); ``segment_audits`` are the move_pages audits of the segments this rank created
    (node leaders), right after creation; ``downgrades`` the placement calls refused while
    creating them under ``allow_fallback``.
    """

    rank: int
    world_size: int
    calls: int
    bytes: int
    time_s: float
    per_kind: dict[str, CallKindStats]
    allreduce_algorithms: dict[str, int]
    bytes_read: int
    cross_node_bytes_read: int
    remote_memory_bytes_read: int
    wait_s: float
    kernel: str = ""
    segment_audits: tuple[PageAudit, ...] = ()
    downgrades: tuple[Downgrade, ...] = ()

    @property
    def misplaced_segments(self) -> tuple[str, ...]:
        """One line per segment audited with pages off its memory node."""
        return tuple(f"collective segment for node {','.join(map(str, a.target_node_ids))}: "
                     f"{a.describe()}" for a in self.segment_audits if not a.complete)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def inter_node_percentage(self) -> float:
        """Share (%) of the bytes read from shared memory that crossed nodes."""
        if not self.bytes_read:
            return 0.0
        return 100.0 * self.cross_node_bytes_read / self.bytes_read

    @computed_field  # type: ignore[prop-decorator]
    @property
    def remote_memory_percentage(self) -> float:
        """Share (%) of the bytes read from shared memory homed on another memory node."""
        if not self.bytes_read:
            return 0.0
        return 100.0 * self.remote_memory_bytes_read / self.bytes_read
