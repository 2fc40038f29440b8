"""numaplan's CPU collective: shared memory, NUMA-aware, for W tensor-parallel ranks on one host.

The compiled model calls ``numaplan.ccl.allreduce / broadcast_from_worker0 / allgather /
scatter_from_worker0`` (see :mod:`numaplan.passes.lower_collectives`); each rank (a Disco worker:
rank 0 is a thread of the controller process, ranks 1..W-1 are subprocesses) owns one
:class:`Communicator` and :func:`numaplan.runtime.ccl_tvm.register_tvm_functions` routes those
calls to it.

Quick use::

    spec = CommSpec.from_plan(plan, new_namespace())  # or CommSpec(namespace=..., ...)
    with Communicator.create(spec, rank) as comm:        # after the rank's thread is pinned
        comm.allreduce(x, OP_SUM, out=out)
    cleanup(spec.namespace)                              # controller, at shutdown or after a crash

Shared memory
-------------
One segment per node of the communicator (``/dev/shm/<namespace>-node<N>``, mode 0600), created
by the node's first rank (its *leader*) after that rank is pinned, bound with mbind(2) to the
node's memory node before any page exists, then allocated, touched and audited with
move_pages(2) (:attr:`Communicator.creation_audits`). It holds every rank of the node's
sequence/descriptor/done words (one 128-byte line each) and two data slots per rank (double
buffer, by sequence parity), plus two node-level slots for the hierarchical algorithm's partial
sums. Every rank maps every segment. Layout: :mod:`numaplan.runtime.ccl_shm`.

Algorithms (``algorithm=`` argument, or ``"by_size"`` for the spec's table)
---------------------------------------------------------------------------
- ``one_shot``: every rank copies its input into its slot and publishes; each rank then reduces
  all W buffers itself. One synchronisation; best at decode sizes.
- ``two_shot``: reduce-scatter (rank r reduces slice r of every buffer, in place in its own
  slot, and publishes) then all-gather of the slices. Two synchronisations, 2/W of the traffic
  per rank; wins from about 1 MiB.
- ``hierarchical``: members hand their buffer to the node leader, which reduces the node's
  buffers into the node's partial slot; leaders read every other node's partial (the only data
  that crosses nodes: one message per node pair) and reduce in node order; each leader then
  publishes the result in its slot and the members copy it.

Every reduction runs in rank (or node) order on every rank, so all ranks get bit-identical
results, and accumulates float16/bfloat16 in float32 (ints in int64, float64 in float64).
Messages larger than the slot are processed in slot-sized chunks (one sequence step each).

Memory ordering (why sequence words are enough, and the double buffer is never overrun)
--------------------------------------------------------------------------------------
Each call has a sequence number s, incremented identically on every rank (chunks count as
calls). A publication is: write the data into ``slot[s % 2]``, write the call descriptor into
``line[1 + s % 2]``, then store ``line[0] = s`` with *release* semantics. A reader spins with
*acquire* loads until ``line[0] >= s``, checks the descriptor, then reads ``slot[s % 2]``:
release/acquire make the data visible before the word. Every rank also stores ``done = s``
(release) when it finishes call s.

Invariant (I): *when a rank completes call c, every rank has completed call c - 1.*
- one_shot, two_shot, allgather: a rank completes c only after seeing every peer's word of
  call c, which each peer stores when it starts c, i.e. after completing c - 1.
- hierarchical: a member completes c after its leader's ``fin`` of c, which the leader
  publishes after seeing every other leader's ``part`` of c, which each leader publishes after
  seeing its members' words of c: all ranks had started c.
- broadcast / scatter: the root would otherwise wait for nobody, so it first waits until every
  rank's ``done >= c - 1``; the others complete c after the root's word of c.

Consequences: (a) ranks are at most one call apart, so a reader of call s sees a word equal to
s or s + 1, and ``>=`` is the right test (a peer already in s + 1 writes the other parity);
(b) slot ``s % 2`` (and descriptor ``s % 2``) is next written at call s + 2 or later, by a rank
that has completed call s + 1 and therefore, by (I), only when every reader of call s has
completed call s: a fast rank can never overwrite a buffer a peer is still reading. In-place
reuse inside a call is safe too: two-shot writes the reduced slice r into its own slot while
peers read only *other* slices of it in that phase (slices are cache-line aligned), and the
hierarchical leader writes the node result into its own slot, which no one reads in that call
until ``fin``. No global barrier and no acknowledgement word are needed beyond ``done``.

Waiting spins with the CPU pause hint (``spin_us``), then yields (until ``yield_us``), then sleeps
with a doubling interval (up to ``sleep_max_us``), and gives up after ``timeout_s`` with a
:class:`CollectiveError` naming the peer that did not arrive. Every ``check_interval_s`` while
waiting it also checks whether that peer's process is dead (gone or zombie: error at once, no
need to wait for the timeout) and whether another rank aborted the communicator.

Failure and cleanup
-------------------
After an error the communicator is *broken*: it records the reason in node 0's segment and
raises the abort flag so that peers stop waiting too (they raise ``CollectiveError`` naming the
rank that aborted); every later call raises at once. :func:`cleanup` unlinks every segment of a
namespace whatever state the ranks are in; processes that still map them keep their memory
until they exit. The creator of a segment unlinks it on :meth:`Communicator.close` and, through
an ``atexit`` hook, at interpreter exit; a process killed with SIGKILL leaves its segments to
:func:`cleanup`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import itertools
import logging
import math
import os
import re
import secrets
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import computed_field, model_validator

from numaplan._base import Frozen
from numaplan.errors import CBuildError, CollectiveError, SegmentError
from numaplan.osnuma.audit import PageAudit
from numaplan.osnuma.mempolicy import PlacementOutcome
from numaplan.osnuma.system import PAGE_SIZE
from numaplan.runtime import ccl_shm
from numaplan.runtime.ccl_native import (
    ERR_ABORTED,
    ERR_ARG,
    ERR_DEAD,
    ERR_MISMATCH,
    ERR_TIMEOUT,
    MAX_NODES,
    MAX_RANKS,
    load_library,
    pid_namespace,
)
from numaplan.runtime.ccl_numpy import (
    DT_BF16,
    DT_F16,
    DT_F32,
    DT_F64,
    DT_I32,
    DT_I64,
    DTYPE_SIZES,
    CEngine,
    NumpyEngine,
    Wiring,
)
from numaplan.runtime.ccl_shm import Segment, SegmentLayout

log = logging.getLogger(__name__)
_now = time.perf_counter_ns

Algorithm = Literal["one_shot", "two_shot", "hierarchical"]
KernelChoice = Literal["auto", "c", "numpy"]
ALGORITHMS: tuple[str, ...] = ("one_shot", "two_shot", "hierarchical")
ALGORITHM_CODES = {"one_shot": 0, "two_shot": 1, "hierarchical": 2}
#: Op codes, as TVM's ``relax.ccl`` numbers them.
OP_SUM, OP_PROD, OP_MIN, OP_MAX, OP_AVG = range(5)
OP_NAMES = ("sum", "prod", "min", "max", "avg")
#: One node: one-shot below this many bytes, two-shot from it (research/algorithms.md 3.2).
TWO_SHOT_FROM_BYTES = 1 << 20
DEFAULT_SLOT_BYTES = 1 << 20
MAX_SLOT_BYTES = 4 << 20
GROUP = "tp"
KINDS = ("allreduce", "broadcast_from_worker0", "allgather", "scatter_from_worker0")
_K_ALLREDUCE, _K_BCAST, _K_ALLGATHER, _K_SCATTER = range(4)
DTYPE_NAMES = {DT_F32: "float32", DT_F16: "float16", DT_BF16: "bfloat16", DT_I32: "int32",
               DT_F64: "float64", DT_I64: "int64"}
#: dtype name (numpy or TVM spelling) -> code; reductions support exactly these.
DTYPE_CODES = {v: k for k, v in DTYPE_NAMES.items()}
_NAMESPACE = re.compile(r"[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*")


# -- the spec -------------------------------------------------------------------------------------
class AlgorithmRule(Frozen):
    """Messages smaller than ``below_bytes`` (``None``: any size) use ``algorithm``."""

    below_bytes: int | None = None
    algorithm: Algorithm


def default_algorithms(node_of_rank: Sequence[int]) -> tuple[AlgorithmRule, ...]:
    """One node: one-shot below 1 MiB, two-shot above; several nodes: hierarchical."""
    if len(set(node_of_rank)) > 1:
        return (AlgorithmRule(algorithm="hierarchical"),)
    return (AlgorithmRule(below_bytes=TWO_SHOT_FROM_BYTES, algorithm="one_shot"),
            AlgorithmRule(algorithm="two_shot"))


def algorithms_from_choices(choices: Sequence[object], node_of_rank: Sequence[int]
                            ) -> tuple[AlgorithmRule, ...]:
    """Turn a plan's ``(message_bytes, algorithm)`` choices into size thresholds.

    Between two listed sizes with different algorithms the boundary is 1 MiB when it lies
    between them, else their geometric mean. Choices naming no real algorithm (``"none"`` for a
    single worker) are ignored; with none left the default table is used.
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


class CommSpec(Frozen):
    """Everything every rank must agree on to build the communicator.

    Attributes
    ----------
    namespace
        Unique per session (see :func:`new_namespace`): prefixes the ``/dev/shm`` names.
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
        :func:`default_algorithms`).
    timeout_s
        How long a rank waits for a peer before raising :class:`CollectiveError`.
    connect_timeout_s
        How long :meth:`Communicator.create` waits for other nodes' segments (default
        ``timeout_s``).
    kernel
        ``c`` (compiled at first use), ``numpy`` or ``auto`` (C when it can be built).
    allow_placement_fallback
        If mbind is refused, degrade bind -> preferred -> nothing (recorded in
        :attr:`Communicator.placements`) instead of failing.
    spin_us, yield_us, sleep_max_us, check_interval_s
        The waiting policy (see the module docstring).
    """

    namespace: str
    world_size: int
    node_of_rank: tuple[int, ...]
    mem_node_of_rank: tuple[int, ...]
    slot_bytes: int = DEFAULT_SLOT_BYTES
    algorithms: tuple[AlgorithmRule, ...]
    timeout_s: float = 30.0
    connect_timeout_s: float | None = None
    kernel: KernelChoice = "auto"
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
        if not _NAMESPACE.fullmatch(self.namespace) or len(self.namespace) > 200:
            raise ValueError(f"namespace {self.namespace!r} must be 1-200 characters of letters, "
                             f"digits, '_', '.', and single '-' between them")
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
        return ccl_shm.segment_path(self.namespace, node_id)

    @property
    def slot_stride(self) -> int:
        return ccl_shm.round_up(self.slot_bytes, PAGE_SIZE)

    def algorithm_for(self, nbytes: int) -> Algorithm:
        """The table's algorithm for a message of ``nbytes``."""
        for rule in self.algorithms:
            if rule.below_bytes is None or nbytes < rule.below_bytes:
                return rule.algorithm
        raise AssertionError("validated: the last rule has no bound")

    def segment_bytes(self) -> int:
        """Bytes of shared memory per node segment (the largest)."""
        return max(self._layout(i).size for i in range(len(self.nodes)))

    def _layout(self, index: int) -> SegmentLayout:
        groups = self.intra_node_groups
        return SegmentLayout(
            node_id=self.nodes[index], node_index=index, ranks=groups[index],
            slot_stride=self.slot_stride, mem_node=self.mem_node_of_rank[groups[index][0]],
            layout_hash=ccl_shm.layout_hash(self.namespace, self.node_of_rank,
                                            self.slot_stride))

    # -- from a plan --------------------------------------------------------------------------
    @classmethod
    def from_plan(cls, plan: object, namespace: str, *, slot_bytes: int | None = None,
                  max_slot_bytes: int = MAX_SLOT_BYTES, **overrides: object) -> CommSpec:
        """The spec of a :class:`~numaplan.plan.schema.Plan`.

        Ranks are the plan's workers (``node_id``, ``mem_node_id``); the algorithm table comes
        from ``plan.collectives.choices`` (:func:`algorithms_from_choices`). The plan's
        ``segment_bytes`` sizes double-buffered per-rank slots for its largest (prefill)
        message on its fullest node, so one slot is ``segment_bytes / (2 x ranks per node)``,
        clamped to [64 KiB, ``max_slot_bytes``] (larger messages are chunked), unless
        ``slot_bytes`` is given.
        """
        workers = sorted(plan.workers, key=lambda w: w.worker_id)  # type: ignore[attr-defined]
        node_of_rank = tuple(w.node_id for w in workers)
        mem = tuple(w.mem_node_id for w in workers)
        coll = plan.collectives  # type: ignore[attr-defined]
        if slot_bytes is None:
            per_node = max((node_of_rank.count(n) for n in set(node_of_rank)), default=1)
            slot_bytes = coll.segment_bytes // (2 * per_node)
            slot_bytes = min(max(slot_bytes, 64 << 10), max_slot_bytes)
        fields: dict[str, object] = {
            "namespace": namespace, "node_of_rank": node_of_rank, "mem_node_of_rank": mem,
            "slot_bytes": ccl_shm.round_up(slot_bytes, PAGE_SIZE),
            "algorithms": algorithms_from_choices(coll.choices, node_of_rank)}
        fields.update(overrides)
        return cls(**fields)


def new_namespace(prefix: str = "numaplan") -> str:
    """A fresh namespace: ``<prefix>-<pid>-<random hex>``."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"


# -- stats ----------------------------------------------------------------------------------------
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
    """

    rank: int
    world_size: int
    kernel: Literal["c", "numpy"]
    calls: int
    bytes: int
    time_s: float
    per_kind: dict[str, CallKindStats]
    allreduce_algorithms: dict[str, int]
    bytes_read: int
    cross_node_bytes_read: int
    remote_memory_bytes_read: int
    wait_s: float

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


# -- helpers --------------------------------------------------------------------------------------
_DTYPES: dict[np.dtype, int] = {np.dtype(np.float32): DT_F32, np.dtype(np.float16): DT_F16,
                                np.dtype(np.int32): DT_I32, np.dtype(np.float64): DT_F64,
                                np.dtype(np.int64): DT_I64}


def dtype_code(dtype: object) -> int:
    """The kernel's code of a numpy dtype or dtype name (``bfloat16`` included)."""
    code = _DTYPES.get(dtype) if isinstance(dtype, np.dtype) else None  # type: ignore[call-overload]
    if code is not None:
        return code
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))
    if name in DTYPE_CODES:
        code = DTYPE_CODES[name]
        if isinstance(dtype, np.dtype):
            _DTYPES[dtype] = code
        return code
    raise CollectiveError(f"allreduce does not support dtype {name}; use one of "
                          f"{', '.join(DTYPE_CODES)} (bfloat16 may be passed as a uint16 array "
                          f"with dtype='bfloat16')")


_ADDRESSES: dict[int, tuple[weakref.ref, int, int]] = {}


def address_of(a: np.ndarray) -> int:
    """The address of an array's first byte.

    Getting it from numpy costs 0.5-1.5 us (``ctypes.c_char.from_buffer``, ``a.ctypes.data``),
    as much as a small all-reduce; callers that reuse their arrays (a model's buffers) hit a
    small cache keyed by the array object, validated by a weak reference (the same live object)
    and its size (a live array's data moves only when ``resize`` changes its size).
    """
    hit = _ADDRESSES.get(id(a))
    if hit is not None and hit[0]() is a and hit[1] == a.size:
        return hit[2]
    try:
        anchor = ctypes.c_char.from_buffer(a)
        address = ctypes.addressof(anchor)
        del anchor
    except (TypeError, ValueError):  # read-only or empty
        address = a.ctypes.data
    try:
        ref = weakref.ref(a)
    except TypeError:
        return address
    if len(_ADDRESSES) >= 1024:
        _ADDRESSES.clear()
    _ADDRESSES[id(a)] = (ref, a.size, address)
    return address


def _desc(kind: int, algo: int, dt: int, op: int, coll_id: int, nbytes: int) -> int:
    return ((nbytes & 0xFFFFFFFF) | ((coll_id & 0xFFFF) << 32) | ((op & 0xF) << 48)
            | ((dt & 0xF) << 52) | ((kind & 0xF) << 56) | ((algo & 0xF) << 60))


def describe_desc(desc: int) -> str:
    """``allreduce one_shot sum float16 of 16384 bytes (collective id 3)``."""
    kind = (desc >> 56) & 0xF
    name = KINDS[kind] if kind < len(KINDS) else f"kind {kind}"
    nbytes, cid = desc & 0xFFFFFFFF, (desc >> 32) & 0xFFFF
    if kind == _K_ALLREDUCE:
        algo = (desc >> 60) & 0xF
        op, dt = (desc >> 48) & 0xF, (desc >> 52) & 0xF
        name += (f" {ALGORITHMS[algo] if algo < 3 else algo} "
                 f"{OP_NAMES[op] if op < 5 else op} {DTYPE_NAMES.get(dt, dt)}")
    return f"{name} of {nbytes} bytes (collective id {cid})"


_CREATED: dict[str, int] = {}  # segment path -> pid of the process that created it
_LIVE: set[Communicator] = set()
_LIVE_LOCK = threading.Lock()
_ATEXIT = False


def _at_exit() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for comm in live:
        with contextlib.suppress(Exception):
            comm.close()
    me = os.getpid()
    for path, pid in list(_CREATED.items()):
        if pid == me:
            with contextlib.suppress(OSError):
                os.unlink(path)
            _CREATED.pop(path, None)


def _register_atexit() -> None:
    global _ATEXIT
    if not _ATEXIT:
        atexit.register(_at_exit)
        _ATEXIT = True


def cleanup(namespace: str) -> list[str]:
    """Unlink every shared-memory segment of ``namespace``; return the paths removed.

    Works whatever state the ranks are in (alive, mid-call, dead). Call it from the controller
    at shutdown and after a worker crash.
    """
    removed = ccl_shm.cleanup_segments(namespace)
    for p in removed:
        _CREATED.pop(p, None)
    return removed


# -- the communicator -----------------------------------------------------------------------------
class Communicator:
    """One rank's endpoint of the collective. Create with :meth:`create`; one thread at a time.

    Attributes
    ----------
    spec, rank, world_size
        What it was built from.
    kernel
        ``"c"`` or ``"numpy"``.
    kernel_note
        Why the numpy fallback is used, or ``""``.
    """

    def __init__(self, spec: CommSpec, rank: int, segments: dict[int, Segment],
                 engine: CEngine | NumpyEngine, kernel_note: str) -> None:
        self.spec = spec
        self.rank = rank
        self.world_size = spec.world_size
        self._segments = segments
        self._engine = engine
        self.kernel: Literal["c", "numpy"] = engine.kind  # type: ignore[assignment]
        self.kernel_note = kernel_note
        self._seq = 0
        self._broken: CollectiveError | None = None
        self._closed = False
        self._unusable_now = False  # broken or closed (one test on the hot path)
        self._stats = [[0, 0, 0] for _ in KINDS]
        self._algo_counts = [0, 0, 0]
        self._by_size: dict[int, int] = {}
        self._chunk_elems = {dt: spec.slot_stride // es for dt, es in DTYPE_SIZES.items()}
        node0 = segments[spec.nodes[0]]
        self._abort_address = node0.address + ccl_shm.ABORT_OFFSET
        self._node0 = node0

    # -- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def create(cls, spec: CommSpec, rank: int, *, kernel: KernelChoice | None = None
               ) -> Communicator:
        """Join the communicator as ``rank``: create this node's segment if ``rank`` leads
        the node, map every segment (waiting for the other nodes' leaders), build the engine.

        Call it from the rank's own thread after pinning it: the leader's segment is bound to
        the spec's memory node and first-touched here.

        Raises
        ------
        CollectiveError
            Bad rank, a segment cannot be created/found, or ``kernel="c"`` cannot be built.
        """
        if not 0 <= rank < spec.world_size:
            raise CollectiveError(f"rank {rank} is outside 0..{spec.world_size - 1}",
                                  rank=rank, reason="setup")
        kernel = kernel or spec.kernel
        engine_lib = None
        note = ""
        if kernel in ("auto", "c"):
            try:
                engine_lib = load_library()
            except CBuildError as exc:
                if kernel == "c":
                    raise CollectiveError(f"rank {rank}: {exc}", rank=rank, reason="setup"
                                          ) from None
                note = str(exc)
                log.warning("collective falls back to numpy: %s", exc)
        else:
            note = "numpy kernel requested"
        _register_atexit()
        my_node = spec.node_of_rank[rank]
        segments: dict[int, Segment] = {}
        try:
            for i, node in enumerate(spec.nodes):
                layout = spec._layout(i)
                path = spec.segment_path(node)
                if node == my_node and layout.ranks[0] == rank:
                    seg = Segment.create(path, layout, spec.world_size,
                                         allow_fallback=spec.allow_placement_fallback)
                    _CREATED[str(path)] = os.getpid()
                    segments[node] = seg
            for i, node in enumerate(spec.nodes):
                if node not in segments:
                    layout = spec._layout(i)
                    segments[node] = Segment.open(
                        spec.segment_path(node), layout, spec.world_size,
                        spec.connect_timeout_s or spec.timeout_s, creator_rank=layout.ranks[0])
            wiring = cls._wire(spec, rank, segments)
            engine: CEngine | NumpyEngine
            if engine_lib is not None:
                engine = CEngine(engine_lib, wiring)
            else:
                try:
                    engine = NumpyEngine(wiring)
                except OSError as exc:
                    raise CollectiveError(str(exc), rank=rank, reason="setup") from None
            engine.store(wiring.done_line[rank] + 16, pid_namespace())
            engine.store(wiring.done_line[rank] + 8, os.getpid())
        except SegmentError as exc:
            cls._release(segments)
            raise CollectiveError(f"rank {rank}: {exc}", rank=rank, reason="setup") from None
        except BaseException:
            cls._release(segments)
            raise
        comm = cls(spec, rank, segments, engine, note)
        with _LIVE_LOCK:
            _LIVE.add(comm)
        return comm

    @staticmethod
    def _release(segments: dict[int, Segment]) -> None:
        for seg in segments.values():
            seg.close()
            _CREATED.pop(str(seg.path), None)

    @staticmethod
    def _wire(spec: CommSpec, rank: int, segments: dict[int, Segment]) -> Wiring:
        nodes, groups = spec.nodes, spec.intra_node_groups
        index = {n: i for i, n in enumerate(nodes)}
        layouts = [segments[n].layout for n in nodes]
        me = index[spec.node_of_rank[rank]]
        my_mem = spec.mem_node_of_rank[rank]
        w = Wiring(
            world=spec.world_size, rank=rank, n_nodes=len(nodes), my_node=me,
            leader=groups[me][0], members=groups[me][1:],
            node_leader=tuple(g[0] for g in groups),
            node_of=tuple(index[n] for n in spec.node_of_rank),
            inter_rank=tuple(int(index[n] != me) for n in spec.node_of_rank),
            remote_rank=tuple(int(layouts[index[n]].mem_node != my_mem)
                              for n in spec.node_of_rank),
            inter_node=tuple(int(k != me) for k in range(len(nodes))),
            remote_node=tuple(int(lay.mem_node != my_mem) for lay in layouts),
            slot_bytes=spec.slot_stride,
            abort_line=segments[nodes[0]].address + ccl_shm.ABORT_OFFSET,
            timeout_ns=int(spec.timeout_s * 1e9), spin_ns=int(spec.spin_us * 1e3),
            yield_ns=int(spec.yield_us * 1e3), sleep_max_ns=int(spec.sleep_max_us * 1e3),
            check_ns=int(spec.check_interval_s * 1e9))
        for q in range(spec.world_size):
            k = index[spec.node_of_rank[q]]
            lay, base = layouts[k], segments[nodes[k]].address
            i = groups[k].index(q)
            w.in_line.append(base + lay.in_line(i))
            w.red_line.append(base + lay.red_line(i))
            w.done_line.append(base + lay.done_line(i))
            w.in_slot.append((base + lay.in_slot(i, 0), base + lay.in_slot(i, 1)))
        for k, n in enumerate(nodes):
            lay, base = layouts[k], segments[n].address
            w.part_line.append(base + lay.part_line())
            w.fin_line.append(base + lay.fin_line())
            w.part_slot.append((base + lay.part_slot(0), base + lay.part_slot(1)))
        return w

    def close(self) -> None:
        """Unmap every segment and unlink the ones this rank created. Idempotent.

        Peers that still map a segment keep their mapping; new ranks can no longer join.
        """
        if self._closed:
            return
        self._closed = True
        self._unusable_now = True
        self._release(self._segments)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("broken" if self._broken else f"call {self._seq}")
        return (f"<Communicator {self.spec.namespace} rank {self.rank}/{self.world_size} "
                f"{self.kernel} {state}>")

    # -- placement ----------------------------------------------------------------------------
    @property
    def creation_audits(self) -> dict[int, PageAudit]:
        """node id -> move_pages audit of each segment this rank created, right after creation.
        """
        return {n: s.audit for n, s in self._segments.items() if s.audit is not None}

    @property
    def placements(self) -> dict[int, PlacementOutcome]:
        """node id -> the mbind outcome of each segment this rank created."""
        return {n: s.placement for n, s in self._segments.items() if s.placement is not None}

    def audit(self, max_pages: int | None = None) -> dict[int, PageAudit]:
        """node id -> where each segment's pages are now, seen from this process."""
        self._check_open()
        return {n: s.audit_now(max_pages) for n, s in self._segments.items()}

    @property
    def segment_paths(self) -> tuple[str, ...]:
        return tuple(str(s.path) for s in self._segments.values())

    # -- failure ------------------------------------------------------------------------------
    def set_timeout(self, seconds: float) -> None:
        """Change how long this rank waits for peers (e.g. longer during warm-up)."""
        self._engine.set_timeout(seconds)

    def abort(self, reason: str) -> None:
        """Mark the communicator failed for every rank: peers waiting in a call raise
        :class:`CollectiveError` naming this rank within ``check_interval_s``."""
        if self._closed:
            return
        if self._engine.load(self._abort_address) == 0:
            self._node0.write_reason(f"rank {self.rank}: {reason}")
            self._engine.store(self._abort_address, self.rank + 1)
        if self._broken is None:
            self._broken = CollectiveError(f"rank {self.rank} aborted the communicator: "
                                           f"{reason}", rank=self.rank, reason="aborted")
        self._unusable_now = True

    def _check_open(self) -> None:
        if self._closed:
            raise CollectiveError(f"rank {self.rank}: the communicator is closed",
                                  rank=self.rank, reason="closed")

    def _unusable(self) -> CollectiveError:
        if self._closed:
            return CollectiveError(f"rank {self.rank}: the communicator is closed",
                                   rank=self.rank, reason="closed")
        b = self._broken
        assert b is not None
        return CollectiveError(f"rank {self.rank}: the communicator is broken by an earlier "
                               f"failure: {b.message}", rank=self.rank, peer=b.peer,
                               reason="broken")

    def _fail(self, kind: int, coll_id: int, seq: int, desc: int) -> CollectiveError:
        code, peer, seen, their = self._engine.err
        what = f"{KINDS[kind]} (collective id {coll_id}, call {seq})"
        timeout = self._engine_timeout()
        if code == ERR_TIMEOUT:
            msg = (f"rank {self.rank}: {what} timed out after {timeout:g} s waiting for rank "
                   f"{peer}, which did not arrive (it is at call {seen}); worker {peer} may have "
                   f"died or hung")
            reason = "timeout"
        elif code == ERR_DEAD:
            msg = (f"rank {self.rank}: {what} failed: rank {peer} (pid {seen}) died; worker "
                   f"{peer} is gone")
            reason = "dead"
        elif code == ERR_ABORTED:
            why = self._node0.read_reason()
            msg = f"rank {self.rank}: {what} failed: rank {peer} aborted the communicator ({why})"
            reason = "aborted"
        elif code == ERR_MISMATCH:
            msg = (f"rank {self.rank}: {what}: rank {peer} called a different collective: it "
                   f"published {describe_desc(their)} while rank {self.rank} called "
                   f"{describe_desc(desc)}")
            reason = "mismatch"
        elif code == ERR_ARG:
            msg = (f"rank {self.rank}: {what}: invalid arguments for the kernel "
                   f"({describe_desc(desc)})")
            reason = "usage"
        else:
            msg = f"rank {self.rank}: {what} failed with code {code}"
            reason = "usage"
        err = CollectiveError(msg, rank=self.rank, peer=peer, reason=reason)
        if code != ERR_ARG:
            self._broken = err
            self._unusable_now = True
            if code != ERR_ABORTED:
                with contextlib.suppress(Exception):
                    self.abort(msg)
        return err

    def _engine_timeout(self) -> float:
        e = self._engine
        ns = e._ctx.timeout_ns if isinstance(e, CEngine) else e.w.timeout_ns
        return ns / 1e9

    # -- arguments ----------------------------------------------------------------------------
    def _algorithm(self, algorithm: str, nbytes: int) -> int:
        code = ALGORITHM_CODES.get(algorithm)
        if code is not None:
            return code
        if algorithm in ("by_size", "none", ""):
            code = self._by_size.get(nbytes)
            if code is None:
                code = ALGORITHM_CODES[self.spec.algorithm_for(nbytes)]
                if len(self._by_size) < 4096:
                    self._by_size[nbytes] = code
            return code
        raise CollectiveError(f"unknown all-reduce algorithm {algorithm!r}; use one of "
                              f"{', '.join(ALGORITHMS)} or by_size", rank=self.rank)

    def _group(self, group: str) -> None:
        if group not in (GROUP, ""):
            raise CollectiveError(f"unknown collective group {group!r}: only {GROUP!r} (all "
                                  f"tensor-parallel ranks) exists", rank=self.rank)

    @staticmethod
    def _contiguous(a: object, what: str) -> np.ndarray:
        arr = np.asarray(a)
        if not arr.flags.c_contiguous:
            raise CollectiveError(f"{what} must be C-contiguous")
        return arr

    def _out(self, out: object, shape: tuple[int, ...], dtype: np.dtype, what: str
             ) -> np.ndarray:
        if out is None:
            return np.empty(shape, dtype)
        o = np.asarray(out)
        if not o.flags.c_contiguous or not o.flags.writeable:
            raise CollectiveError(f"{what}: out must be C-contiguous and writable")
        if o.dtype.itemsize * o.size != dtype.itemsize * math.prod(shape):
            raise CollectiveError(f"{what}: out has {o.nbytes} bytes, expected "
                                  f"{dtype.itemsize * math.prod(shape)} (shape {shape}, {dtype})")
        return o

    # -- collectives (numpy) ------------------------------------------------------------------
    def allreduce(self, x: object, op_code: int = OP_SUM, coll_id: int = 0, group: str = GROUP,
                  algorithm: str = "by_size", out: object = None, *,
                  dtype: str | None = None) -> np.ndarray:
        """Reduce ``x`` over all ranks into ``out`` (allocated when ``None``) and return it.

        Parameters
        ----------
        x
            This rank's contiguous array (float32, float16, bfloat16, int32, float64, int64).
        op_code
            0 sum, 1 prod, 2 min, 3 max, 4 avg (integer avg truncates toward zero).
        coll_id
            The call site (errors and mismatch checks use it).
        group
            ``"tp"``.
        algorithm
            ``one_shot``, ``two_shot``, ``hierarchical`` or ``by_size`` (the spec's table).
        out
            Same size and dtype as ``x``; may be ``x`` itself.
        dtype
            Override the element type, e.g. ``"bfloat16"`` for a ``uint16`` view.
        """
        # fast path: ndarrays of one supported dtype, contiguous, writable output
        if (dtype is None and type(x) is np.ndarray and type(out) is np.ndarray
                and x.dtype is out.dtype and x.size == out.size):
            dt = _DTYPES.get(x.dtype)
            fx, fo = x.flags, out.flags
            if dt is not None and fx.c_contiguous and fo.c_contiguous and fo.writeable:
                if x.size:
                    self.allreduce_raw(address_of(x), address_of(out), x.size, dt, op_code,
                                       coll_id, group, algorithm)
                return out
        xa = self._contiguous(x, "allreduce: x")
        o = self._out(out, xa.shape, xa.dtype, "allreduce")
        if o.dtype != xa.dtype and dtype is None:
            raise CollectiveError(f"allreduce: out is {o.dtype}, x is {xa.dtype}")
        if not xa.dtype.isnative:
            raise CollectiveError(f"allreduce: x has non-native byte order ({xa.dtype.str})")
        dt = dtype_code(dtype if dtype is not None else xa.dtype)
        if DTYPE_SIZES[dt] != xa.dtype.itemsize:
            raise CollectiveError(f"allreduce: dtype {DTYPE_NAMES[dt]} does not match the "
                                  f"{xa.dtype.itemsize}-byte elements of x")
        if xa.size:
            self.allreduce_raw(address_of(xa), address_of(o), xa.size, dt, op_code, coll_id,
                               group, algorithm)
        return o

    def broadcast_from_worker0(self, x: object, coll_id: int = 0, group: str = GROUP,
                               out: object = None) -> np.ndarray:
        """Rank 0's ``x`` into every rank's ``out`` (other ranks' ``x`` is ignored)."""
        xa = self._contiguous(x, "broadcast_from_worker0: x")
        o = self._out(out, xa.shape, xa.dtype, "broadcast_from_worker0")
        if xa.nbytes:
            self.broadcast_raw(address_of(xa), address_of(o), xa.nbytes, coll_id, group)
        return o

    def allgather(self, x: object, coll_id: int = 0, group: str = GROUP, out: object = None
                  ) -> np.ndarray:
        """Concatenate every rank's ``x`` along axis 0 into ``out`` (W times ``x``'s size)."""
        xa = self._contiguous(x, "allgather: x")
        shape = (xa.shape[0] * self.world_size, *xa.shape[1:]) if xa.ndim else \
            (self.world_size,)
        o = self._out(out, shape, xa.dtype, "allgather")
        if xa.nbytes:
            self.allgather_raw(address_of(xa), address_of(o), xa.nbytes, coll_id, group)
        return o

    def scatter_from_worker0(self, x: object, axis: int = 0, coll_id: int = 0,
                             group: str = GROUP, out: object = None) -> np.ndarray:
        """Split rank 0's ``x`` into W equal parts along ``axis``; rank q receives part q.

        Other ranks' ``x`` only gives the shape and dtype (its contents are ignored).
        """
        xa = self._contiguous(x, "scatter_from_worker0: x")
        W = self.world_size
        if xa.ndim == 0:
            raise CollectiveError("scatter_from_worker0: x must have at least one dimension")
        axis = axis % xa.ndim
        if xa.shape[axis] % W:
            raise CollectiveError(f"scatter_from_worker0: axis {axis} of x has "
                                  f"{xa.shape[axis]} elements, not divisible by {W} ranks")
        shape = (*xa.shape[:axis], xa.shape[axis] // W, *xa.shape[axis + 1:])
        o = self._out(out, shape, xa.dtype, "scatter_from_worker0")
        if not o.nbytes:
            return o
        if self.rank == 0 and axis != 0:
            pre = math.prod(xa.shape[:axis])
            post = math.prod(xa.shape[axis + 1:])
            stream = np.ascontiguousarray(
                xa.reshape(pre, W, xa.shape[axis] // W, post).transpose(1, 0, 2, 3))
        else:
            stream = xa
        self.scatter_raw(address_of(stream) if self.rank == 0 else 0, address_of(o), o.nbytes,
                         coll_id, group)
        return o

    def barrier(self) -> None:
        """Return when every rank has entered the barrier (a one-shot all-reduce of 4 bytes)."""
        one = np.zeros(1, np.int32)
        self.allreduce(one, OP_SUM, 0xFFFF, GROUP, "one_shot", one)

    # -- collectives (raw addresses; the TVM path uses these) ---------------------------------
    def allreduce_raw(self, xa: int, oa: int, count: int, dt: int, op: int, coll_id: int = 0,
                      group: str = GROUP, algorithm: str = "by_size") -> None:
        """:meth:`allreduce` on raw addresses: ``count`` elements of dtype code ``dt``."""
        t0 = _now()
        if self._unusable_now:
            raise self._unusable()
        if group != GROUP:
            self._group(group)
        if not 0 <= op <= OP_AVG:
            raise CollectiveError(f"unknown op code {op}; use 0 sum, 1 prod, 2 min, 3 max, "
                                  f"4 avg", rank=self.rank)
        nbytes = count * DTYPE_SIZES[dt]
        algo = ALGORITHM_CODES.get(algorithm)
        if algo is None:
            algo = self._algorithm(algorithm, nbytes)
        if self.world_size == 1:
            if oa != xa:
                ctypes.memmove(oa, xa, nbytes)
        elif count <= self._chunk_elems[dt]:  # one chunk: the decode case
            seq = self._seq + 1
            desc = ((nbytes & 0xFFFFFFFF) | ((coll_id & 0xFFFF) << 32) | (op << 48) | (dt << 52)
                    | (algo << 60))  # == _desc(_K_ALLREDUCE, ...)
            self._seq = seq
            if self._engine.allreduce(xa, oa, count, dt, op, algo, seq, desc):
                raise self._fail(_K_ALLREDUCE, coll_id, seq, desc)
        else:
            es = DTYPE_SIZES[dt]
            per = self._chunk_elems[dt]
            done = 0
            while done < count:
                n = min(per, count - done)
                seq = self._seq + 1
                desc = _desc(_K_ALLREDUCE, algo, dt, op, coll_id, n * es)
                self._seq = seq
                if self._engine.allreduce(xa + done * es, oa + done * es, n, dt, op, algo, seq,
                                          desc):
                    raise self._fail(_K_ALLREDUCE, coll_id, seq, desc)
                done += n
        st = self._stats[_K_ALLREDUCE]
        st[0] += 1
        st[1] += nbytes
        st[2] += _now() - t0
        self._algo_counts[algo] += 1

    def broadcast_raw(self, xa: int, oa: int, nbytes: int, coll_id: int = 0,
                      group: str = GROUP) -> None:
        """:meth:`broadcast_from_worker0` on raw addresses."""
        self._rooted(_K_BCAST, xa, nbytes, oa, 0, nbytes, coll_id, group)

    def scatter_raw(self, stream_a: int, oa: int, piece_bytes: int, coll_id: int = 0,
                    group: str = GROUP) -> None:
        """Scatter on raw addresses: rank 0's ``stream_a`` holds the W pieces one after the
        other (``piece_bytes`` each); rank q receives piece q at ``oa``."""
        total = piece_bytes * self.world_size
        lo = self.rank * piece_bytes
        self._rooted(_K_SCATTER, stream_a, total, oa, lo, lo + piece_bytes, coll_id, group)

    def _rooted(self, kind: int, src: int, total: int, dst: int, lo: int, hi: int,
                coll_id: int, group: str) -> None:
        t0 = time.perf_counter_ns()
        if self._unusable_now:
            raise self._unusable()
        if group != GROUP:
            self._group(group)
        if self.world_size == 1:
            if dst != src + lo:
                ctypes.memmove(dst, src + lo, hi - lo)
        else:
            cap = self.spec.slot_stride
            eng = self._engine
            for c0 in range(0, total, cap):
                c1 = min(total, c0 + cap)
                a, b = max(lo, c0), min(hi, c1)
                if a >= b:
                    a = b = c0  # nothing of mine in this chunk: still take part
                seq = self._seq + 1
                desc = _desc(kind, 0, 0, 0, coll_id, c1 - c0)
                rc = eng.bcast(src + c0 if self.rank == 0 else 0, c1 - c0,
                               dst + (a - lo), a - c0, b - c0, seq, desc)
                self._seq = seq
                if rc:
                    raise self._fail(kind, coll_id, seq, desc)
        st = self._stats[kind]
        st[0] += 1
        st[1] += total
        st[2] += time.perf_counter_ns() - t0

    def allgather_raw(self, xa: int, oa: int, nbytes: int, coll_id: int = 0,
                      group: str = GROUP) -> None:
        """:meth:`allgather` on raw addresses: ``out + q * nbytes`` receives rank q's bytes."""
        t0 = time.perf_counter_ns()
        if self._unusable_now:
            raise self._unusable()
        if group != GROUP:
            self._group(group)
        if self.world_size == 1:
            if oa != xa:
                ctypes.memmove(oa, xa, nbytes)
        else:
            cap = self.spec.slot_stride
            eng = self._engine
            for c0 in range(0, nbytes, cap):
                n = min(cap, nbytes - c0)
                seq = self._seq + 1
                desc = _desc(_K_ALLGATHER, 0, 0, 0, coll_id, n)
                rc = eng.allgather(xa + c0, n, oa + c0, nbytes, seq, desc)
                self._seq = seq
                if rc:
                    raise self._fail(_K_ALLGATHER, coll_id, seq, desc)
        st = self._stats[_K_ALLGATHER]
        st[0] += 1
        st[1] += nbytes
        st[2] += time.perf_counter_ns() - t0

    # -- stats --------------------------------------------------------------------------------
    @property
    def sequence(self) -> int:
        """Calls (chunks) completed so far."""
        return self._seq

    def stats(self) -> CommStats:
        """What this rank did since creation or the last :meth:`reset_stats`."""
        read, inter, remote, wait_ns = self._engine.counters()
        return CommStats(
            rank=self.rank, world_size=self.world_size, kernel=self.kernel,
            calls=sum(s[0] for s in self._stats), bytes=sum(s[1] for s in self._stats),
            time_s=sum(s[2] for s in self._stats) / 1e9,
            per_kind={k: CallKindStats(calls=s[0], bytes=s[1], time_s=s[2] / 1e9)
                      for k, s in zip(KINDS, self._stats, strict=True)},
            allreduce_algorithms={a: n for a, n in zip(ALGORITHMS, self._algo_counts,
                                                       strict=True)},
            bytes_read=read, cross_node_bytes_read=inter, remote_memory_bytes_read=remote,
            wait_s=wait_ns / 1e9)

    def reset_stats(self) -> None:
        """Zero the counters."""
        self._stats = [[0, 0, 0] for _ in KINDS]
        self._algo_counts = [0, 0, 0]
        self._engine.reset_counters()


__all__ = [
    "ALGORITHMS",
    "OP_AVG",
    "OP_MAX",
    "OP_MIN",
    "OP_PROD",
    "OP_SUM",
    "AlgorithmRule",
    "CallKindStats",
    "CollectiveError",
    "CommSpec",
    "CommStats",
    "Communicator",
    "algorithms_from_choices",
    "cleanup",
    "default_algorithms",
    "describe_desc",
    "dtype_code",
    "new_namespace",
]
