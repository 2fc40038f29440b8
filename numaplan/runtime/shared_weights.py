"""One copy of a replicated weight per home, shared by the workers that read it.

The plan places a replicated tensor (norms, the embedding, an untied ``lm_head``) as *copies*:
every worker reads a whole copy, and the planner counts one copy per home it chose, however many
workers on that node read it (``PlacementProblem``'s replicated groups). Workers are separate
processes, so without sharing each would hold its own copy and a node with k workers would hold
k copies the plan never budgeted. Here the workers whose piece of a replicated tensor has the
same homes share one file in ``/dev/shm``:

* :func:`copy_groups` (pure, identical in every worker): which workers share which replicated
  tensors, the layout of each shared segment, and its owner (the lowest worker id);
* :func:`create_segment` (the owner): create the file with mode 0600 under a temporary name, map
  it, ``mbind`` every piece's pages to the plan's homes *before* they exist, allocate them
  (``posix_fallocate``: a full ``/dev/shm`` is an error now, not a SIGBUS later), fill the
  pieces, and publish it under its final name with ``link(2)``;
* :func:`open_segment` (the other members): wait for the name, check the size, map it.

The controller unlinks the names once every worker has loaded (the mappings keep the memory)
and again at shutdown or after a crash (:func:`cleanup_weight_segments`). Pages of a shared
mapping are audited with ``move_pages`` like private ones.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from numaplan._base import Frozen
from numaplan.errors import PlacementError
from numaplan.model import Workload
from numaplan.osnuma import PlacementOutcome, bind_range
from numaplan.plan.schema import Plan
from numaplan.runtime.shm import SHM_DIR, mapping_address, open_when_published

PAGE = 4096
#: Readable bytes kept after the last weight of an arena or a shared segment. Compiled kernels
#: may load a few elements past the end of a weight in an unrolled loop (and discard them):
#: harmless in heap memory, where TVM's own allocator puts weights, but a fault when the weight
#: ends exactly at the end of an mmap'd region (seen in the QEMU tier: the last down_proj piece
#: of an arena, read 4 bytes past its end by the row-parallel matmul).
TAIL_SLACK = PAGE


class SharedPiece(Frozen):
    """One replicated tensor inside a shared segment."""

    name: str
    offset: int
    mem_nbytes: int
    homes: tuple[tuple[int, int], ...]


class CopyGroup(Frozen):
    """Workers that share one copy of some replicated tensors, and the segment holding them."""

    index: int
    members: tuple[int, ...]
    pieces: tuple[SharedPiece, ...]
    size: int

    @property
    def owner(self) -> int:
        """The worker that creates and fills the segment."""
        return self.members[0]


def _align(n: int) -> int:
    return -(-max(n, 1) // PAGE) * PAGE


def copy_groups(workload: Workload, plan: Plan, names: Sequence[str]) -> list[CopyGroup]:
    """The shared copies of a session: replicated tensors read by two or more workers from the
    same homes.

    Parameters
    ----------
    workload
        The model's tensor index.
    plan
        The placement plan (homes of every worker's pieces).
    names
        Parameters in packed order (only these are loaded).

    Returns
    -------
    list of CopyGroup
        Ordered by first appearance in ``names``; empty for one worker, or when no two workers
        read a replicated tensor from the same homes.
    """
    W = plan.request.tensor_parallel_shards
    if W < 2:
        return []
    by_name = {t.name: t for t in workload.tensors}
    planned = {t.name: t for t in plan.tensors}
    layout: dict[tuple[int, ...], list[SharedPiece]] = {}
    sizes: dict[tuple[int, ...], int] = {}
    for name in names:
        t = by_name.get(name)
        if t is None or name not in planned or t.is_split:
            continue
        by_homes: dict[tuple[tuple[int, int], ...], list[int]] = {}
        for w in range(W):
            homes = tuple((h.node_id, h.nbytes) for h in plan.tensor_homes(planned[name], w))
            by_homes.setdefault(homes, []).append(w)
        for homes, members in by_homes.items():
            if len(members) < 2:
                continue
            key = tuple(members)
            nbytes = t.shard_mem_nbytes(W)
            off = sizes.get(key, 0)
            layout.setdefault(key, []).append(
                SharedPiece(name=name, offset=off, mem_nbytes=nbytes, homes=homes))
            sizes[key] = off + _align(nbytes)
    return [CopyGroup(index=i, members=key, pieces=tuple(pieces), size=sizes[key] + TAIL_SLACK)
            for i, (key, pieces) in enumerate(layout.items())]


def segment_path(namespace: str, group: CopyGroup) -> Path:
    """``/dev/shm/<namespace>-weights<index>``."""
    return SHM_DIR / f"{namespace}-weights{group.index}"


def cleanup_weight_segments(namespace: str) -> list[str]:
    """Unlink every shared weight segment (and temporary file) of ``namespace``.

    Safe at any time: the memory stays until the last worker that maps it unmaps or exits.
    """
    pattern = re.compile(re.escape(namespace) + r"-weights\d+(\.tmp\d+)?")
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    removed = []
    for n in sorted(names):
        if pattern.fullmatch(n):
            with contextlib.suppress(FileNotFoundError):
                (SHM_DIR / n).unlink()
                removed.append(str(SHM_DIR / n))
    return removed


class SharedSegment:
    """A mapped shared weight segment (created or opened); :meth:`close` unmaps it."""

    def __init__(self, path: Path, mm: mmap.mmap, created: bool) -> None:
        self.path = path
        self._mm: mmap.mmap | None = mm
        self.created = created
        self.address = mapping_address(mm)
        #: The owner's mbind outcomes, one per range bound (empty for the other members).
        self.placements: list[PlacementOutcome] = []

    def array(self) -> np.ndarray:
        """A writable byte view of the whole segment."""
        assert self._mm is not None, "segment closed"
        return np.frombuffer(self._mm, dtype=np.uint8)

    def close(self) -> None:
        """Unmap (raises ``BufferError`` while numpy views are alive); idempotent."""
        if self._mm is not None:
            self._mm.close()
            self._mm = None


def home_pages(start: int, homes: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """The pages of each home of a piece: ``(node, first page address, end address)``.

    The piece's bytes start at address ``start`` and run through its homes (``(node, nbytes)``
    in order). A page shared by two homes belongs to the first (the home of its first byte): it
    is bound there and audited against it. A home whose bytes all fall in such a page gets no
    page of its own (and no entry).

    Examples
    --------
    >>> home_pages(0, [(1, 6000), (0, 6000)])
    [(1, 0, 8192), (0, 8192, 12288)]
    """
    out = []
    pos = 0
    for node, nbytes in homes:
        if nbytes > 0:
            lo = -(-(start + pos) // PAGE) * PAGE  # a page begun by the previous home stays
            if pos == 0:
                lo = start // PAGE * PAGE
            hi = -(-(start + pos + nbytes) // PAGE) * PAGE
            if hi > lo:
                out.append((node, lo, hi))
        pos += nbytes
    return out


def bind_pages(ranges: Iterable[tuple[int, int, int]], *, allow_fallback: bool = False
               ) -> list[PlacementOutcome]:
    """``mbind`` page ranges (``(node, start, end)``, from :func:`home_pages`) to their nodes,
    adjacent ranges of one node in one call (a worker's arena on one node is one call, not one
    per weight).

    Returns
    -------
    list of PlacementOutcome
        One per call (degraded ones only with ``allow_fallback``).
    """
    merged: list[list[int]] = []
    for node, lo, hi in ranges:
        if merged and merged[-1][0] == node and merged[-1][2] == lo:
            merged[-1][2] = hi
        else:
            merged.append([node, lo, hi])
    return [bind_range(lo, hi - lo, node, allow_fallback=allow_fallback, move=False)
            for node, lo, hi in merged]


def bind_homes(start: int, homes: Sequence[tuple[int, int]], *, allow_fallback: bool = False
               ) -> list[PlacementOutcome]:
    """``mbind`` the pages of each home of one piece (:func:`home_pages`) to its node."""
    return bind_pages(home_pages(start, homes), allow_fallback=allow_fallback)


def create_segment(path: Path, group: CopyGroup,
                   fill: Callable[[np.ndarray, SharedPiece], None], *, bind: bool = True,
                   bind_override: int | None = None, allow_fallback: bool = False
                   ) -> SharedSegment:
    """Create, bind, allocate, fill and publish one shared segment (the owner's part).

    Parameters
    ----------
    path
        Final name (:func:`segment_path`).
    group
        Its layout.
    fill
        Called with a writable byte view of each piece and the piece.
    bind, bind_override, allow_fallback
        As in :func:`numaplan.runtime.loader.load_worker_params`.

    Raises
    ------
    PlacementError
        The file cannot be created or allocated, a binding was refused, or the name exists.
    """
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise PlacementError(f"cannot create shared weight segment {tmp}: {exc.strerror}"
                             ) from None
    mm = None
    try:
        os.ftruncate(fd, group.size)
        mm = mmap.mmap(fd, group.size, flags=mmap.MAP_SHARED,
                       prot=mmap.PROT_READ | mmap.PROT_WRITE)
        seg = SharedSegment(path, mm, created=True)
        if bind:  # the shared policy must exist before any page does
            seg.placements += bind_pages(
                (r for p in group.pieces for r in home_pages(
                    seg.address + p.offset,
                    p.homes if bind_override is None else ((bind_override, p.mem_nbytes),))),
                allow_fallback=allow_fallback)
        try:
            os.posix_fallocate(fd, 0, group.size)
        except OSError as exc:
            raise PlacementError(f"cannot allocate {group.size} bytes for shared weight "
                                 f"segment {path.name} in {SHM_DIR} ({exc.strerror})") from None
        raw = seg.array()
        try:
            for p in group.pieces:
                fill(raw[p.offset:p.offset + p.mem_nbytes], p)
        finally:
            del raw
        try:
            os.link(tmp, path)
        except OSError as exc:
            raise PlacementError(f"cannot publish shared weight segment {path}: "
                                 f"{exc.strerror}") from None
        mm = None
        return seg
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.close(fd)
        if mm is not None:
            mm.close()


def open_segment(path: Path, group: CopyGroup, timeout_s: float) -> SharedSegment:
    """Map a segment its owner creates, waiting up to ``timeout_s`` for it to be published.

    Raises
    ------
    PlacementError
        It did not appear in time, or its size differs from the layout.
    """
    try:
        fd = open_when_published(path, timeout_s, max_delay_s=0.05)
    except FileNotFoundError:
        raise PlacementError(
            f"shared weight segment {path} did not appear within {timeout_s:g} s "
            f"(worker {group.owner} creates it)") from None
    except OSError as exc:
        raise PlacementError(f"cannot open shared weight segment {path}: {exc.strerror}"
                             ) from None
    try:
        size = os.fstat(fd).st_size
        if size != group.size:
            raise PlacementError(f"shared weight segment {path} has {size} bytes, the plan's "
                                 f"layout {group.size}")
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    # Map every page into this process now (a read maps the owner's page, allocates nothing):
    # move_pages reports pages a process has not touched as absent, and the first decode step
    # should not pay the faults.
    view = np.frombuffer(mm, dtype=np.uint8)
    try:
        int(view[::PAGE].sum())
    finally:
        del view
    return SharedSegment(path, mm, created=False)
