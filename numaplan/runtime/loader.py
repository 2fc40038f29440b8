"""Load one worker's weights where the plan says, the way only that worker can.

First touch decides where a page lives, so each worker loads its own weights, after it is pinned,
into memory whose ranges are bound (``mbind``) to the plan's homes *before* anything is written:

1. :func:`plan_pieces` (pure): for every parameter, in the model's packed order, the worker's
   piece: its shape, dtype, and the homes of its bytes (from the plan's ``tensors``);
2. :func:`load_worker_params`: one page-aligned arena for all pieces, each piece's page range
   bound to its home node(s) (a page split between two homes goes with the first,
   :func:`~numaplan.runtime.shared_weights.home_pages`) and faulted in; the shard files are
   memory-mapped and each piece is cut out with MLC's shard rules
   (:func:`numaplan.model.slice_shard`), so only the pages of the worker's own rows / columns are
   read; ``f32-to-bf16`` weights are widened on the way (:mod:`numaplan.runtime.widen`); the
   worker's CPUs share the faulting and the copying; then every page is audited with
   ``move_pages`` against the home it was bound to (:func:`audit_pieces`).

Replicated tensors that several workers read from the same homes are loaded once, by the lowest
of those workers, into a shared segment the others map (:mod:`numaplan.runtime.shared_weights`):
the plan budgets one copy per home, and so does the runtime.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import Field

from numaplan._base import Frozen
from numaplan.errors import ModelFormatError, PlacementError
from numaplan.model import Workload
from numaplan.osnuma import Downgrade, NodeBuffer, PlacementOutcome, page_nodes
from numaplan.osnuma.regions import populate
from numaplan.plan.schema import Plan
from numaplan.runtime.shared_weights import (
    TAIL_SLACK,
    SharedPiece,
    SharedSegment,
    bind_pages,
    copy_groups,
    create_segment,
    home_pages,
    open_segment,
    segment_path,
)
from numaplan.runtime.widen import widen_bf16

PAGE = 4096
ALIGN = PAGE  # every piece starts on a page: its own mbind range, and >= DLPack's 64 B


class Piece(Frozen):
    """Where one parameter of one worker goes."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    mem_nbytes: int
    offset: int
    homes: tuple[tuple[int, int], ...]


class SharedCopies(Frozen):
    """Share replicated tensors between the workers of one session (see the module doc)."""

    namespace: str
    timeout_s: float = 60.0


class WeightMemory:
    """The memory of one worker's weights: its private arena and the shared segments it maps.

    Keep it alive as long as the arrays; :meth:`close` unmaps everything (numpy views first).
    """

    def __init__(self, arena: NodeBuffer | None, segments: list[SharedSegment]) -> None:
        self.arena = arena
        self.segments = segments

    def close(self) -> None:
        """Unmap the arena and the segments; idempotent."""
        if self.arena is not None:
            self.arena.close()
        for seg in self.segments:
            seg.close()


class LoadReport(Frozen):
    """What loading did, measured.

    ``bytes_loaded`` is what this worker wrote (its pieces, and the shared copies it owns);
    ``bytes_shared_mapped`` what it maps from shared copies another worker wrote.
    """

    worker_id: int
    pieces: int
    bytes_loaded: int
    bytes_read_from_files: int
    load_s: float
    bytes_on_planned_node: int
    bytes_audited: int
    pages_per_node: dict[int, int]
    misplaced: tuple[str, ...]

    bytes_shared_mapped: int = 0
    shared_segments: tuple[str, ...] = ()
    #: Placement calls refused under ``allow_fallback`` and what was done instead.
    downgrades: tuple[Downgrade, ...] = ()
    #: The pages were audited (``False``: not asked, or move_pages refused under fallback).
    audited: bool = True
    #: Seconds per phase, in order: ``shared_fill`` (create the shared copies this worker
    #: owns), ``arena`` (map and bind its own memory), ``fault`` (fault it in), ``copy`` (read
    #: the files and write the pieces, widening bf16), ``shared_map`` (map the other workers'
    #: copies), ``audit`` (move_pages; not part of ``load_s``).
    phases_s: dict[str, float] = Field(default_factory=dict)

    @property
    def on_planned_fraction(self) -> float:
        """Share of the worker's weight bytes found on their planned node."""
        return self.bytes_on_planned_node / self.bytes_audited if self.bytes_audited else 0.0


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_pieces(workload: Workload, plan: Plan, worker_id: int, names: Sequence[str]
                ) -> tuple[list[Piece], int]:
    """Pieces of ``names`` (packed-params order) for ``worker_id`` and the arena size.

    Raises
    ------
    ModelFormatError
        When a name is neither in the model's index nor in the plan.
    """
    W = plan.request.tensor_parallel_shards
    by_name = {t.name: t for t in workload.tensors}
    planned = {t.name: t for t in plan.tensors}
    pieces: list[Piece] = []
    offset = 0
    for name in names:
        if name not in by_name or name not in planned:
            raise ModelFormatError(f"the library's parameter {name!r} is not in the model's "
                                   "tensor index or the plan")
        t = by_name[name]
        homes = tuple((h.node_id, h.nbytes) for h in plan.tensor_homes(planned[name], worker_id))
        pieces.append(Piece(name=name, shape=t.shard_shape(W), dtype=t.dtype,
                            mem_nbytes=t.shard_mem_nbytes(W), offset=offset, homes=homes))
        offset += _align(max(t.shard_mem_nbytes(W), 1))
    return pieces, max(offset, PAGE)


def _read_piece(dest: np.ndarray, t, W: int, worker_id: int, mm: np.memmap) -> int:
    """Copy the worker's piece of tensor ``t`` out of the mapped shard file; bytes touched."""
    # MLC labels every record "f32-to-bf16" but only float32 data is converted (stored as the
    # upper 16 bits); other dtypes are raw. bfloat16 has no numpy dtype: move its bits as uint16.
    widen = t.format == "f32-to-bf16" and t.dtype == "float32"
    enc = np.uint16 if widen or t.dtype == "bfloat16" else np.dtype(t.dtype)
    raw = mm[t.byte_offset:t.byte_offset + t.nbytes].view(enc).reshape(t.shape)
    touched = 0
    for dst_sl, src_sl in _piece_slices(t.shape, t.shard_rule, W, worker_id) if t.is_split \
            else [((), ())]:
        src = raw[src_sl]
        if widen:
            widen_bf16(src, dest.view(np.uint32)[dst_sl])
        elif t.dtype == "bfloat16":
            dest.view(np.uint16)[dst_sl] = src
        else:
            dest[dst_sl] = src
        touched += src.nbytes
    return touched


def _drop_mapped(mm: np.memmap, t) -> None:
    """Drop the shard file's pages of tensor ``t`` from this process once its piece is copied.

    Mapped file pages count in the process's resident set until unmapped: without this, a
    worker's peak RSS during load is its weights plus every shard page it read (seen: 430 MB
    peak for 355 MB held). ``MADV_DONTNEED`` on a read-only file mapping only drops this
    process's mapping of the pages; the page cache keeps them for the other workers.
    """
    start = t.byte_offset // PAGE * PAGE
    end = min(-(-(t.byte_offset + t.nbytes) // PAGE) * PAGE, len(mm))
    if end > start:
        with contextlib.suppress(OSError, ValueError):  # an old kernel: only memory is lost
            mm._mmap.madvise(mmap.MADV_DONTNEED, start, end - start)


def _piece_slices(shape: tuple[int, ...], rule, W: int, w: int):
    """``(dest index, source index)`` pairs that assemble worker ``w``'s piece in place.

    MLC's rule (``numaplan.model.slice_shard``, which the tests compare against): along the
    split dim, worker w takes the w-th contiguous 1/W of every segment, the pieces concatenated
    in segment order.
    """
    dim = rule.dim
    out = []
    start = dst = 0
    for seg in rule.segments:
        part = seg // W
        src_idx = [slice(None)] * len(shape)
        dst_idx = [slice(None)] * len(shape)
        src_idx[dim] = slice(start + w * part, start + (w + 1) * part)
        dst_idx[dim] = slice(dst, dst + part)
        out.append((tuple(dst_idx), tuple(src_idx)))
        start += seg
        dst += part
    return out


def load_worker_params(model_dir: str | Path, workload: Workload, plan: Plan, worker_id: int,
                       names: Sequence[str], *, allow_fallback: bool = False,
                       audit: bool = True, bind_override: int | None = None,
                       page_query=None, bind: bool = True, shared: SharedCopies | None = None,
                       threads: int | None = None
                       ) -> tuple[WeightMemory, list[np.ndarray], LoadReport]:
    """Load the worker's parameters into node-bound memory and audit them.

    Parameters
    ----------
    model_dir
        The MLC model directory (shard files).
    workload
        Its index (``load_workload``).
    plan
        The placement plan.
    worker_id
        This worker.
    names
        Parameter names in packed order (``_metadata.params``).
    allow_fallback
        Continue (and record it) when the kernel refuses a binding.
    audit
        Check every page with move_pages afterwards.
    bind_override
        Fault injection for tests: bind every piece to this node instead of its planned home
        (the audit still checks against the plan, so it must report the misplacement).
    page_query
        Replaces move_pages(2) in the audit (see :func:`audit_pieces`).
    bind
        Bind the pieces to their homes (off: first touch decides; the audit still reports).
    shared
        Share replicated tensors with the session's other workers (every worker of the session
        must be loading at the same time); ``None``: this worker holds its own copies.
    threads
        Threads that fault in and copy the arena (default: one per CPU this thread may run
        on, at most 8).

    Returns
    -------
    (memory, arrays, report)
        Keep ``memory`` alive as long as the arrays (they are views of it).
    """
    t0 = time.perf_counter()
    phases: dict[str, float] = {}

    def lap(name: str) -> None:
        now = time.perf_counter()
        phases[name] = round(now - sum(phases.values()) - t0, 4)

    W = plan.request.tensor_parallel_shards
    groups = [g for g in copy_groups(workload, plan, names) if worker_id in g.members] \
        if shared is not None else []
    in_group = {p.name for g in groups for p in g.pieces}
    pieces, size = plan_pieces(workload, plan, worker_id,
                               [n for n in names if n not in in_group])
    by_name = {t.name: t for t in workload.tensors}
    maps: dict[str, np.memmap] = {}
    read_bytes: list[int] = []
    placements: list[PlacementOutcome] = []
    fallbacks: list[Downgrade] = []

    def source(name: str) -> np.memmap:
        t = by_name[name]
        if t.data_path not in maps:
            path = Path(model_dir) / t.data_path
            try:
                maps[t.data_path] = np.memmap(path, dtype=np.uint8, mode="r")
            except (OSError, ValueError) as exc:
                raise ModelFormatError(f"cannot map shard file: {exc}", path=path) from None
        return maps[t.data_path]

    def fill(dest_bytes: np.ndarray, name: str, shape: tuple[int, ...], dtype: str) -> int:
        """Write one piece; the file bytes it read."""
        dt = np.dtype(dtype if dtype != "bfloat16" else "uint16")
        mm = source(name)
        n = _read_piece(dest_bytes.view(dt).reshape(shape), by_name[name], W, worker_id, mm)
        _drop_mapped(mm, by_name[name])
        return n

    # Owners fill their shared copies first: the other members wait for them.
    memory = WeightMemory(None, [])
    seg_of: dict[int, SharedSegment] = {}  # copy group index -> its mapped segment
    try:
        for g in groups:
            if g.owner == worker_id:
                seg_of[g.index] = create_segment(
                    segment_path(shared.namespace, g), g,
                    lambda view, p: read_bytes.append(fill(
                        view, p.name, by_name[p.name].shard_shape(W), by_name[p.name].dtype)),
                    bind=bind, bind_override=bind_override, allow_fallback=allow_fallback)
                memory.segments.append(seg_of[g.index])
                placements += seg_of[g.index].placements
        lap("shared_fill")
        # Transparent huge pages: 512x fewer first-touch faults for the weights (the arena is
        # bound before it is touched, so huge pages too land on the planned node).
        arena = NodeBuffer(size + TAIL_SLACK, huge_pages=size >= (8 << 20))
        memory.arena = arena
        if bind:
            placements += bind_pages(
                (r for p in pieces for r in home_pages(
                    arena.address + p.offset,
                    p.homes if bind_override is None else ((bind_override, p.mem_nbytes),))),
                allow_fallback=allow_fallback)
        lap("arena")
        raw = arena.array(np.uint8)
        for p in pieces:
            source(p.name)  # map every shard file now: the threads below only read the dict
        parts = _split(pieces, threads or _load_threads())

        def fault_in(part: list[Piece]) -> None:
            # One call per part, on the bound nodes, instead of one trap per (huge) page while
            # copying: faulting (the kernel zeroes every fresh page) is the largest part.
            lo = part[0].offset
            populate(arena.address + lo, part[-1].offset + part[-1].mem_nbytes - lo)

        def copy(part: list[Piece]) -> int:
            return sum(fill(raw[p.offset:p.offset + p.mem_nbytes], p.name, p.shape, p.dtype)
                       for p in part)

        # The worker's CPUs share the work (threads inherit its memory policy and CPUs; the
        # page zeroing and the copy both release the GIL).
        with ThreadPoolExecutor(max(1, len(parts))) as pool:
            list(pool.map(fault_in, parts))
            lap("fault")
            read_bytes += pool.map(copy, parts)
        own = {p.name: _typed(raw[p.offset:p.offset + p.mem_nbytes], p.shape, p.dtype)
               for p in pieces}
        for m in maps.values():
            m._mmap.close()  # unmap the shard files now, not when the GC gets to them
        maps.clear()
        lap("copy")
        mapped = 0
        for g in groups:
            if g.owner != worker_id:
                seg_of[g.index] = open_segment(segment_path(shared.namespace, g), g,
                                               shared.timeout_s)
                memory.segments.append(seg_of[g.index])
                mapped += sum(p.mem_nbytes for p in g.pieces)
        shared_arrays: dict[str, tuple[np.ndarray, SharedSegment, SharedPiece]] = {}
        for g in groups:
            seg = seg_of[g.index]
            sraw = seg.array()
            for p in g.pieces:
                t = by_name[p.name]
                shared_arrays[p.name] = (_typed(sraw[p.offset:p.offset + p.mem_nbytes],
                                                t.shard_shape(W), t.dtype), seg, p)
            del sraw
        arrays = [own[n] if n in own else shared_arrays[n][0] for n in names]
        lap("shared_map")
    except BaseException:
        for m in maps.values():
            m._mmap.close()
        raise
    load_s = time.perf_counter() - t0
    where = [(p.name, arena.address + p.offset, p.mem_nbytes, p.homes) for p in pieces] + \
        [(sp.name, seg.address + sp.offset, sp.mem_nbytes, sp.homes)
         for _, seg, sp in shared_arrays.values()]
    result = None
    if audit:
        try:
            result = audit_pieces(where, page_query=page_query)
        except PlacementError as exc:
            if not allow_fallback or exc.call is None:
                raise
            fallbacks.append(Downgrade.of(exc, f"audit of worker {worker_id}'s weights",
                                          "not audited"))
    if result is None:
        on, total, per_node, bad = 0, 0, {}, []
    else:
        on, total, per_node, bad = result
    if audit:
        lap("audit")
    downgrades = [d for o in placements for d in [o.downgrade(f"weights of worker {worker_id}")]
                  if d is not None] + fallbacks
    report = LoadReport(worker_id=worker_id, pieces=len(names),
                        bytes_loaded=sum(p.mem_nbytes for p in pieces) + sum(
                            p.mem_nbytes for g in groups if g.owner == worker_id
                            for p in g.pieces),
                        bytes_read_from_files=sum(read_bytes), load_s=round(load_s, 4),
                        bytes_on_planned_node=on, bytes_audited=total,
                        pages_per_node=dict(sorted(per_node.items())), misplaced=tuple(bad[:20]),
                        bytes_shared_mapped=mapped,
                        shared_segments=tuple(s.path.name for s in memory.segments),
                        downgrades=tuple(downgrades), audited=result is not None,
                        phases_s=phases)
    return memory, arrays, report


def audit_pieces(pieces: Sequence[tuple[str, int, int, tuple[tuple[int, int], ...]]], *,
                 page_query=None) -> tuple[int, int, dict[int, int], list[str]]:
    """Where the pages of the weights are, against their homes, in one move_pages pass.

    Each page is checked against the home it was bound to (:func:`home_pages`: a page split
    between two homes belongs to the first) and weighs the bytes of its piece it holds.

    Parameters
    ----------
    pieces
        ``(name, address, bytes, homes)`` of every piece (``homes``: ``(node, nbytes)``).
    page_query
        Replaces move_pages(2) (see :func:`numaplan.osnuma.audit_range`).

    Returns
    -------
    (bytes on their planned node, bytes audited, pages per node, misplaced pieces)

    Raises
    ------
    PlacementError
        When move_pages is refused (``call`` and ``errno_name`` set), or ``page_query``
        answers for the wrong number of pages.
    """
    addrs, want, weight, owner = [], [], [], []
    for i, (_, address, nbytes, homes) in enumerate(pieces):
        for node, lo, hi in home_pages(address, homes):
            pages = np.arange(lo, hi, PAGE, dtype=np.uint64)
            # bytes of the piece in each page: the first and last pages may hold less
            held = np.minimum(pages + PAGE, address + nbytes).astype(np.int64) - \
                np.maximum(pages, address).astype(np.int64)
            addrs.append(pages)
            want.append(np.full(pages.size, node, dtype=np.int64))
            weight.append(np.clip(held, 0, PAGE))
            owner.append(np.full(pages.size, i, dtype=np.int64))
    if not addrs:
        return 0, 0, {}, []
    pages = np.concatenate(addrs)
    status = np.asarray(page_query(pages) if page_query is not None else page_nodes(pages),
                        dtype=np.int64)
    if status.size != pages.size:
        raise PlacementError(f"page query returned {status.size} statuses for {pages.size} "
                             "pages")
    want_a, weight_a, owner_a = (np.concatenate(x) for x in (want, weight, owner))
    on_page = status == want_a
    on_bytes = np.bincount(owner_a, weights=weight_a * on_page, minlength=len(pieces))
    all_bytes = np.bincount(owner_a, weights=weight_a, minlength=len(pieces))
    nodes, counts = np.unique(status[status >= 0], return_counts=True)
    bad = []
    for i, (name, _, _, homes) in enumerate(pieces):
        if on_bytes[i] < all_bytes[i]:
            planned = ",".join(str(n) for n in dict.fromkeys(n for n, b in homes if b > 0))
            bad.append(f"{name}: {100 * on_bytes[i] / all_bytes[i]:.1f}% on node {planned}")
    return (int(on_bytes.sum()), int(all_bytes.sum()),
            {int(n): int(c) for n, c in zip(nodes, counts, strict=True)}, bad)


def _load_threads() -> int:
    """One loading thread per CPU of this worker (its affinity), at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


def _split(pieces: Sequence[Piece], n: int) -> list[list[Piece]]:
    """At most ``n`` runs of consecutive pieces of about equal bytes (none empty)."""
    total = sum(p.mem_nbytes for p in pieces) or 1
    parts: list[list[Piece]] = [[]]
    done = 0
    for p in pieces:
        if parts[-1] and done >= total * len(parts) / n:
            parts.append([])
        parts[-1].append(p)
        done += p.mem_nbytes
    return [q for q in parts if q]


def _typed(dest: np.ndarray, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A byte view as the parameter's array (bfloat16 as uint16 bits: numpy has no bf16)."""
    return dest.view(np.dtype(dtype if dtype != "bfloat16" else "uint16")).reshape(shape)


def check_placement(report: LoadReport, *, strict: bool) -> None:
    """Raise in strict mode when any audited byte is off its planned node, or when the weights
    could not be audited (move_pages refused under ``allow_fallback``)."""
    if strict and not report.audited:
        raise PlacementError(f"worker {report.worker_id}: strict placement, but the weights "
                             "could not be audited (move_pages refused)")
    if strict and report.bytes_audited and report.bytes_on_planned_node < report.bytes_audited:
        raise PlacementError(
            f"worker {report.worker_id}: {100 * report.on_planned_fraction:.2f}% of weight bytes "
            f"on their planned node ({'; '.join(report.misplaced[:3])})")
