"""One rank's endpoint of the collective: :class:`Communicator`.

It joins the node segments (:mod:`~numaplan.runtime.ccl.segments`), wires the C kernel to them
(:mod:`~numaplan.runtime.ccl.engine`), and offers the collectives twice: on numpy arrays
(:meth:`Communicator.allreduce` ...) and on raw addresses (:meth:`Communicator.allreduce_raw`
..., what the TVM functions call). The raw calls share one body, :meth:`Communicator._run`:
check that the communicator is usable, cut the message into slot-sized chunks (one sequence
step each), run each in the kernel, count. How the ranks synchronise is told in
:mod:`numaplan.runtime.ccl`.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import time
import weakref
from collections.abc import Callable

import numpy as np

import numaplan.runtime.ccl.registry as registry
from numaplan.ccl_abi import (
    ALGORITHM_CODES,
    ALGORITHMS,
    ALLGATHER,
    ALLREDUCE,
    BROADCAST,
    BY_SIZE,
    DTYPE_CODES,
    DTYPE_SIZES,
    DTYPES,
    ERR_ABORTED,
    ERR_ARG,
    GROUP,
    ONE_SHOT,
    OP_AVG,
    OP_SUM,
    OPS,
    SCATTER,
    encode_desc,
)
from numaplan.errors import CBuildError, CollectiveError, SegmentError
from numaplan.osnuma.audit import PageAudit
from numaplan.osnuma.mempolicy import PlacementOutcome
from numaplan.runtime.ccl.engine import Engine
from numaplan.runtime.ccl.failure import collective_failure
from numaplan.runtime.ccl.kernel import load_library
from numaplan.runtime.ccl.segments import ABORT_OFFSET, Segment
from numaplan.runtime.ccl.spec import CommSpec
from numaplan.runtime.ccl.stats import CallKindStats, CommStats

_now = time.perf_counter_ns
_AR, _BC, _AG, _SC = (OPS[k] for k in (ALLREDUCE, BROADCAST, ALLGATHER, SCATTER))  # messages
#: Algorithm arguments that leave the choice to the spec's table ("none" is what a plan says
#: for a single worker; "" what an unset argument looks like).
_BY_SIZE_NAMES = (BY_SIZE, "none", "")


# -- arrays ---------------------------------------------------------------------------------------
# numpy dtypes of the reduction types (numpy has no bfloat16: it is passed as uint16 + dtype=).
_DTYPES: dict[np.dtype, int] = {np.dtype(n): c for n, c in DTYPE_CODES.items()
                                if n != "bfloat16"}


def dtype_code(dtype: object) -> int:
    """The kernel's code of a numpy dtype or dtype name (``bfloat16`` included).

    Raises
    ------
    CollectiveError
        The reductions do not support it.
    """
    code = _DTYPES.get(dtype) if isinstance(dtype, np.dtype) else None  # type: ignore[call-overload]
    if code is not None:
        return code
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))
    if name in DTYPE_CODES:
        code = DTYPE_CODES[name]
        if isinstance(dtype, np.dtype):
            _DTYPES[dtype] = code
        return code
    raise CollectiveError(f"{_AR} does not support dtype {name}; use one of "
                          f"{', '.join(DTYPES)} (bfloat16 may be passed as a uint16 array "
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


def _contiguous(a: object, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if not arr.flags.c_contiguous:
        raise CollectiveError(f"{what} must be C-contiguous")
    return arr


def _out(out: object, shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype)
    o = np.asarray(out)
    if not o.flags.c_contiguous or not o.flags.writeable:
        raise CollectiveError(f"{what}: out must be C-contiguous and writable")
    if o.dtype.itemsize * o.size != dtype.itemsize * math.prod(shape):
        raise CollectiveError(f"{what}: out has {o.nbytes} bytes, expected "
                              f"{dtype.itemsize * math.prod(shape)} (shape {shape}, {dtype})")
    return o


# -- the communicator -----------------------------------------------------------------------------
class Communicator:
    """One rank's endpoint of the collective. Create with :meth:`create`; one thread at a time.

    Attributes
    ----------
    spec, rank, world_size
        What it was built from.
    """

    def __init__(self, spec: CommSpec, rank: int, segments: dict[int, Segment],
                 engine: Engine) -> None:
        self.spec = spec
        self.rank = rank
        self.world_size = spec.world_size
        self._segments = segments
        self._engine = engine
        self._seq = 0
        self._broken: CollectiveError | None = None
        self._closed = False
        self._unusable_now = False  # broken or closed (one test on the hot path)
        self._stats = [[0, 0, 0] for _ in OPS]
        self._algo_counts = [0] * len(ALGORITHMS)
        self._by_size: dict[int, int] = {}
        # all-reduce descriptors (size 0) by (coll_id, op, dtype, algorithm): a model has a few
        # call sites, and encoding costs as much as a tenth of a small all-reduce
        self._descs: dict[tuple[int, int, int, int], int] = {}
        # the largest chunk of whole elements that fits a slot, per dtype code
        self._chunk_bytes = [spec.slot_stride // es * es for es in DTYPE_SIZES]
        node0 = segments[spec.nodes[0]]
        self._abort_address = node0.address + ABORT_OFFSET
        self._node0 = node0

    # -- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def create(cls, spec: CommSpec, rank: int) -> Communicator:
        """Join the communicator as ``rank``: create this node's segment if ``rank`` leads
        the node, map every segment (waiting for the other nodes' leaders), wire the kernel.

        Call it from the rank's own thread after pinning it: the leader's segment is bound to
        the spec's memory node and first-touched here.

        Raises
        ------
        CollectiveError
            Bad rank, a segment cannot be created/found, or the C kernel cannot be built
            (no compiler).
        """
        if not 0 <= rank < spec.world_size:
            raise CollectiveError(f"rank {rank} is outside 0..{spec.world_size - 1}",
                                  rank=rank, reason="setup")
        try:
            lib = load_library()
        except CBuildError as exc:
            raise CollectiveError(f"rank {rank}: {exc}", rank=rank, reason="setup") from None
        my_node = spec.node_of_rank[rank]
        segments: dict[int, Segment] = {}
        try:
            for i, node in enumerate(spec.nodes):
                layout = spec.layout(i)
                if node == my_node and layout.ranks[0] == rank:
                    path = spec.segment_path(node)
                    segments[node] = Segment.create(path, layout, spec.world_size,
                                                    allow_fallback=spec.allow_placement_fallback)
                    registry.created(str(path))
            for i, node in enumerate(spec.nodes):
                if node not in segments:
                    layout = spec.layout(i)
                    segments[node] = Segment.open(
                        spec.segment_path(node), layout, spec.world_size,
                        spec.connect_timeout_s or spec.timeout_s, creator_rank=layout.ranks[0])
            engine = Engine(lib, spec, rank, segments)
        except SegmentError as exc:
            cls._release(segments)
            raise CollectiveError(f"rank {rank}: {exc}", rank=rank, reason="setup") from None
        except BaseException:
            cls._release(segments)
            raise
        comm = cls(spec, rank, segments, engine)
        registry.track(comm)
        return comm

    @staticmethod
    def _release(segments: dict[int, Segment]) -> None:
        for seg in segments.values():
            seg.close()
            registry.released(str(seg.path))

    def close(self) -> None:
        """Unmap every segment and unlink the ones this rank created. Idempotent.

        Peers that still map a segment keep their mapping; new ranks can no longer join.
        """
        if self._closed:
            return
        self._closed = True
        self._unusable_now = True
        self._release(self._segments)
        registry.untrack(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Communicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("broken" if self._broken else f"call {self._seq}")
        return f"<Communicator {self.spec.namespace} rank {self.rank}/{self.world_size} {state}>"

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
        if self._closed:
            raise self._unusable()
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
        :class:`~numaplan.errors.CollectiveError` naming this rank within
        ``check_interval_s``."""
        if self._closed:
            return
        if self._engine.load(self._abort_address) == 0:
            self._node0.write_reason(f"rank {self.rank}: {reason}")
            self._engine.store(self._abort_address, self.rank + 1)
        if self._broken is None:
            self._broken = CollectiveError(f"rank {self.rank} aborted the communicator: "
                                           f"{reason}", rank=self.rank, reason="aborted")
        self._unusable_now = True

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
        """The error of a failed call; any failure but bad arguments breaks the communicator
        for every rank (see :meth:`abort`)."""
        err = self._engine.err
        code = err[0]
        exc = collective_failure(
            rank=self.rank, kind=kind, coll_id=coll_id, seq=seq, desc=desc, err=err,
            timeout_s=self._engine.timeout_s,
            abort_reason=self._node0.read_reason() if code == ERR_ABORTED else "")
        if code != ERR_ARG:
            self._broken = exc
            self._unusable_now = True
            if code != ERR_ABORTED:
                with contextlib.suppress(Exception):
                    self.abort(exc.message)
        return exc

    # -- arguments ----------------------------------------------------------------------------
    def _algorithm(self, algorithm: str, nbytes: int) -> int:
        code = ALGORITHM_CODES.get(algorithm)
        if code is not None:
            return code
        if algorithm in _BY_SIZE_NAMES:
            code = self._by_size.get(nbytes)
            if code is None:
                code = ALGORITHM_CODES[self.spec.algorithm_for(nbytes)]
                if len(self._by_size) < 4096:
                    self._by_size[nbytes] = code
            return code
        raise CollectiveError(f"unknown all-reduce algorithm {algorithm!r}; use one of "
                              f"{', '.join(ALGORITHMS)} or {BY_SIZE}", rank=self.rank)

    def _group(self, group: str) -> None:
        if group not in (GROUP, ""):
            raise CollectiveError(f"unknown collective group {group!r}: only {GROUP!r} (all "
                                  f"tensor-parallel ranks) exists", rank=self.rank)

    # -- collectives on arrays ----------------------------------------------------------------
    def allreduce(self, x: object, op_code: int = OP_SUM, coll_id: int = 0, group: str = GROUP,
                  algorithm: str = BY_SIZE, out: object = None, *,
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
        xa = _contiguous(x, f"{_AR}: x")
        o = _out(out, xa.shape, xa.dtype, _AR)
        if o.dtype != xa.dtype and dtype is None:
            raise CollectiveError(f"{_AR}: out is {o.dtype}, x is {xa.dtype}")
        if not xa.dtype.isnative:
            raise CollectiveError(f"{_AR}: x has non-native byte order ({xa.dtype.str})")
        dt = dtype_code(dtype if dtype is not None else xa.dtype)
        if DTYPE_SIZES[dt] != xa.dtype.itemsize:
            raise CollectiveError(f"{_AR}: dtype {DTYPES[dt]} does not match the "
                                  f"{xa.dtype.itemsize}-byte elements of x")
        if xa.size:
            self.allreduce_raw(address_of(xa), address_of(o), xa.size, dt, op_code, coll_id,
                               group, algorithm)
        return o

    def broadcast_from_worker0(self, x: object, coll_id: int = 0, group: str = GROUP,
                               out: object = None) -> np.ndarray:
        """Rank 0's ``x`` into every rank's ``out`` (other ranks' ``x`` is ignored)."""
        xa = _contiguous(x, f"{_BC}: x")
        o = _out(out, xa.shape, xa.dtype, _BC)
        if xa.nbytes:
            self.broadcast_raw(address_of(xa), address_of(o), xa.nbytes, coll_id, group)
        return o

    def allgather(self, x: object, coll_id: int = 0, group: str = GROUP, out: object = None
                  ) -> np.ndarray:
        """Concatenate every rank's ``x`` along axis 0 into ``out`` (W times ``x``'s size)."""
        xa = _contiguous(x, f"{_AG}: x")
        shape = (xa.shape[0] * self.world_size, *xa.shape[1:]) if xa.ndim else \
            (self.world_size,)
        o = _out(out, shape, xa.dtype, _AG)
        if xa.nbytes:
            self.allgather_raw(address_of(xa), address_of(o), xa.nbytes, coll_id, group)
        return o

    def scatter_from_worker0(self, x: object, axis: int = 0, coll_id: int = 0,
                             group: str = GROUP, out: object = None) -> np.ndarray:
        """Split rank 0's ``x`` into W equal parts along ``axis``; rank q receives part q.

        Other ranks' ``x`` only gives the shape and dtype (its contents are ignored).
        """
        xa = _contiguous(x, f"{_SC}: x")
        W = self.world_size
        if xa.ndim == 0:
            raise CollectiveError(f"{_SC}: x must have at least one dimension")
        axis = axis % xa.ndim
        if xa.shape[axis] % W:
            raise CollectiveError(f"{_SC}: axis {axis} of x has "
                                  f"{xa.shape[axis]} elements, not divisible by {W} ranks")
        shape = (*xa.shape[:axis], xa.shape[axis] // W, *xa.shape[axis + 1:])
        o = _out(out, shape, xa.dtype, _SC)
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
        self.allreduce(one, OP_SUM, 0xFFFF, GROUP, ALGORITHMS[ONE_SHOT], one)

    # -- collectives on raw addresses (the TVM path uses these) -------------------------------
    def allreduce_raw(self, xa: int, oa: int, count: int, dt: int, op: int, coll_id: int = 0,
                      group: str = GROUP, algorithm: str = BY_SIZE) -> None:
        """:meth:`allreduce` on raw addresses: ``count`` elements of dtype code ``dt``."""
        if not 0 <= op <= OP_AVG:
            raise CollectiveError(f"unknown op code {op}; use 0 sum, 1 prod, 2 min, 3 max, "
                                  f"4 avg", rank=self.rank)
        es = DTYPE_SIZES[dt]
        nbytes = count * es
        algo = ALGORITHM_CODES.get(algorithm)
        if algo is None:
            algo = self._algorithm(algorithm, nbytes)
        key = (coll_id, op, dt, algo)
        desc = self._descs.get(key)
        if desc is None:
            desc = self._descs[key] = encode_desc(ALLREDUCE, algo, dt, op, coll_id, 0)
        self._run(ALLREDUCE, coll_id, group, desc, nbytes, self._chunk_bytes[dt],
                  (xa, oa, nbytes), self._engine.allreduce, (xa, oa, es, dt, op, algo))
        self._algo_counts[algo] += 1

    def broadcast_raw(self, xa: int, oa: int, nbytes: int, coll_id: int = 0,
                      group: str = GROUP) -> None:
        """:meth:`broadcast_from_worker0` on raw addresses."""
        self._run(BROADCAST, coll_id, group, encode_desc(BROADCAST, 0, 0, 0, coll_id, 0),
                  nbytes, self.spec.slot_stride, (xa, oa, nbytes), self._engine.bcast,
                  (xa, oa, 0, nbytes))

    def scatter_raw(self, stream_a: int, oa: int, piece_bytes: int, coll_id: int = 0,
                    group: str = GROUP) -> None:
        """Scatter on raw addresses: rank 0's ``stream_a`` holds the W pieces one after the
        other (``piece_bytes`` each); rank q receives piece q at ``oa``."""
        lo = self.rank * piece_bytes
        self._run(SCATTER, coll_id, group, encode_desc(SCATTER, 0, 0, 0, coll_id, 0),
                  piece_bytes * self.world_size, self.spec.slot_stride,
                  (stream_a + lo, oa, piece_bytes), self._engine.bcast,
                  (stream_a, oa, lo, lo + piece_bytes))

    def allgather_raw(self, xa: int, oa: int, nbytes: int, coll_id: int = 0,
                      group: str = GROUP) -> None:
        """:meth:`allgather` on raw addresses: ``out + q * nbytes`` receives rank q's bytes."""
        self._run(ALLGATHER, coll_id, group, encode_desc(ALLGATHER, 0, 0, 0, coll_id, 0),
                  nbytes, self.spec.slot_stride, (xa, oa, nbytes), self._engine.allgather,
                  (xa, oa, nbytes))

    def _run(self, kind: int, coll_id: int, group: str, desc: int, total: int,
             chunk_bytes: int, local: tuple[int, int, int],
             chunk: Callable[..., int], args: tuple[int, ...]) -> None:
        """The one body of the raw calls: usable? then the message in chunks, then count.

        Each chunk of at most ``chunk_bytes`` of the ``total`` is one sequence step:
        ``chunk(*args, offset, nbytes, seq, desc | nbytes)`` (an :class:`Engine` method) runs it
        in the kernel and returns the kernel's code; ``desc`` is the call's descriptor with
        size 0 (:func:`~numaplan.ccl_abi.encode_desc`). With one rank there is nobody to wait
        for and no kernel call: ``local = (src, dst, nbytes)`` is what this rank copies.
        """
        t0 = _now()
        if self._unusable_now:
            raise self._unusable()
        if group != GROUP:
            self._group(group)
        if self.world_size == 1:
            src, dst, n = local
            if dst != src:
                ctypes.memmove(dst, src, n)
        elif total <= chunk_bytes:  # one chunk (every decode message): no loop to set up
            seq = self._seq = self._seq + 1
            if chunk(*args, 0, total, seq, desc | total):
                raise self._fail(kind, coll_id, seq, desc | total)
        else:
            for offset in range(0, total, chunk_bytes):
                n = min(chunk_bytes, total - offset)
                seq = self._seq = self._seq + 1
                if chunk(*args, offset, n, seq, desc | n):
                    raise self._fail(kind, coll_id, seq, desc | n)
        st = self._stats[kind]
        st[0] += 1
        st[1] += total
        st[2] += _now() - t0

    # -- stats --------------------------------------------------------------------------------
    @property
    def sequence(self) -> int:
        """Calls (chunks) completed so far."""
        return self._seq

    def stats(self) -> CommStats:
        """What this rank did since creation or the last :meth:`reset_stats`."""
        read, inter, remote, wait_ns = self._engine.counters()
        return CommStats(
            rank=self.rank, world_size=self.world_size,
            calls=sum(s[0] for s in self._stats), bytes=sum(s[1] for s in self._stats),
            time_s=sum(s[2] for s in self._stats) / 1e9,
            per_kind={k: CallKindStats(calls=s[0], bytes=s[1], time_s=s[2] / 1e9)
                      for k, s in zip(OPS, self._stats, strict=True)},
            allreduce_algorithms=dict(zip(ALGORITHMS, self._algo_counts, strict=True)),
            bytes_read=read, cross_node_bytes_read=inter, remote_memory_bytes_read=remote,
            wait_s=wait_ns / 1e9, kernel=self._engine.lib.describe(),
            segment_audits=tuple(self.creation_audits.values()),
            downgrades=tuple(d for s in self._segments.values() for d in s.downgrades))

    def reset_stats(self) -> None:
        """Zero the counters."""
        self._stats = [[0, 0, 0] for _ in OPS]
        self._algo_counts = [0] * len(ALGORITHMS)
        self._engine.reset_counters()
