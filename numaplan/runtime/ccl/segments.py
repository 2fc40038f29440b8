"""Shared-memory segments of the collective: layout, creation on a NUMA node, mapping, cleanup.

One segment per node of the communicator, ``/dev/shm/<namespace>-node<N>``::

    offset 0            header page: magic, layout hash, world size, node, creator pid, size;
                        at ABORT_OFFSET the abort line (node 0's segment only is used) and the
                        abort reason text
    HEADER_BYTES        control lines, CONTROL_LINE (128) bytes each, so that no two words
                        written by different ranks share a cache line (or an adjacent-line
                        prefetch pair): per local rank i, its ``in`` line (sequence word +
                        one call descriptor per parity), ``red`` line (two-shot) and ``done``
                        line (last completed call, pid, pid namespace); then the node's
                        ``part`` and ``fin`` lines (hierarchical)
    data_offset         per local rank i: two data slots (parity 0 and 1) of ``slot_stride``
                        bytes; then the node's two ``part`` slots (hierarchical partial sums)

Creation (by the first rank of the node, after it is pinned): the file is created under a
temporary name with ``O_CREAT | O_EXCL`` and mode 0600, sized, mapped, bound with mbind(2)
(``MPOL_BIND`` to the segment's memory node) *before* any page exists, its pages allocated
(``posix_fallocate``: a full ``/dev/shm`` is an error here instead of a SIGBUS later) and
touched, audited with move_pages(2), the header written, and only then linked under its final
name (``link(2)`` fails if the name exists, like ``O_EXCL``). Peers therefore see no segment or a
complete one. mbind on a shared tmpfs mapping sets the file's shared policy, so the placement
holds for every process that maps it.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from numaplan.errors import PlacementError, SegmentError
from numaplan.osnuma.audit import PageAudit, audit_range
from numaplan.osnuma.mempolicy import Downgrade, PlacementOutcome, bind_range
from numaplan.osnuma.system import PAGE_SIZE
from numaplan.runtime.shm import SHM_DIR, mapping_address, open_when_published

MAGIC = 0x314C4343414D554E  # b"NUMACCL1" little-endian
LAYOUT_VERSION = 1
HEADER_BYTES = 4096
CONTROL_LINE = 128
LINES_PER_RANK = 3  # in, red, done
ABORT_OFFSET = 1024
REASON_OFFSET = ABORT_OFFSET + CONTROL_LINE
REASON_BYTES = 1024
_HEADER = struct.Struct("<6Q")  # magic, layout hash, world, node id, creator pid, size


def round_up(n: int, unit: int) -> int:
    """``n`` rounded up to a multiple of ``unit``."""
    return -(-n // unit) * unit


def segment_path(namespace: str, node_id: int) -> Path:
    """``/dev/shm/<namespace>-node<N>``."""
    return SHM_DIR / f"{namespace}-node{node_id}"


def segment_paths(namespace: str) -> list[Path]:
    """Every segment (and leftover temporary file) of ``namespace`` now in ``/dev/shm``."""
    pattern = re.compile(re.escape(namespace) + r"-node\d+(\.tmp\d+)?")
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(SHM_DIR / n for n in names if pattern.fullmatch(n))


def cleanup_segments(namespace: str) -> list[str]:
    """Unlink every segment of ``namespace``; return the paths removed.

    Safe at any time, including after ranks died in the middle of a call: unlinking removes
    the names, and the memory is freed when the last process that maps it exits or unmaps it.
    """
    removed = []
    for p in segment_paths(namespace):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(str(p))
    return removed


@dataclass(frozen=True)
class SegmentLayout:
    """Where everything is inside the segment of one node.

    Attributes
    ----------
    node_id
        The node (as the spec numbers it).
    node_index
        Its position among the communicator's nodes (sorted ids).
    ranks
        The ranks on the node, sorted: ``ranks[0]`` is the node's leader (creator).
    slot_stride
        Bytes per data slot (the spec's ``slot_bytes`` rounded up to pages).
    mem_node
        The memory node the segment is bound to.
    layout_hash
        Identifies the communicator layout; a peer refuses a segment with another one.
    """

    node_id: int
    node_index: int
    ranks: tuple[int, ...]
    slot_stride: int
    mem_node: int
    layout_hash: int

    @property
    def control_bytes(self) -> int:
        k = len(self.ranks)
        return round_up((LINES_PER_RANK * k + 2) * CONTROL_LINE, PAGE_SIZE)

    @property
    def data_offset(self) -> int:
        return HEADER_BYTES + self.control_bytes

    @property
    def size(self) -> int:
        return self.data_offset + (2 * len(self.ranks) + 2) * self.slot_stride

    def in_line(self, i: int) -> int:
        return HEADER_BYTES + LINES_PER_RANK * i * CONTROL_LINE

    def red_line(self, i: int) -> int:
        return self.in_line(i) + CONTROL_LINE

    def done_line(self, i: int) -> int:
        return self.in_line(i) + 2 * CONTROL_LINE

    def part_line(self) -> int:
        return HEADER_BYTES + LINES_PER_RANK * len(self.ranks) * CONTROL_LINE

    def fin_line(self) -> int:
        return self.part_line() + CONTROL_LINE

    def in_slot(self, i: int, parity: int) -> int:
        return self.data_offset + (2 * i + parity) * self.slot_stride

    def part_slot(self, parity: int) -> int:
        return self.data_offset + (2 * len(self.ranks) + parity) * self.slot_stride


def layout_hash(namespace: str, node_of_rank: tuple[int, ...], slot_stride: int) -> int:
    """A 63-bit digest of what the layout depends on."""
    text = f"{LAYOUT_VERSION}|{namespace}|{','.join(map(str, node_of_rank))}|{slot_stride}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


class Segment:
    """One node's segment, mapped into this process.

    Attributes
    ----------
    path, layout, address, size
        Where it is.
    created
        This process created it (and unlinks it on :meth:`close`).
    placement
        The mbind outcome (creator only).
    audit
        move_pages audit right after creation (creator only; ``None`` when move_pages was
        refused under ``allow_fallback``).
    downgrades
        Placement calls refused under ``allow_fallback`` while creating it (creator only).
    """

    def __init__(self, path: Path, layout: SegmentLayout, mm: mmap.mmap, created: bool,
                 placement: PlacementOutcome | None = None, audit: PageAudit | None = None,
                 downgrades: tuple[Downgrade, ...] = ()) -> None:
        self.path = path
        self.layout = layout
        self._mm: mmap.mmap | None = mm
        self.address = mapping_address(mm)
        self.size = layout.size
        self.created = created
        self.placement = placement
        self.audit = audit
        self.downgrades = downgrades

    # -- creation -----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, layout: SegmentLayout, world: int, *,
               allow_fallback: bool = False) -> Segment:
        """Create, bind, allocate, touch, audit and publish the segment (see module doc).

        Raises
        ------
        SegmentError
            The name exists already, ``/dev/shm`` is too small, or mbind was refused (and
            ``allow_fallback`` is off).
        """
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        size = layout.size
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SegmentError(f"cannot create shared-memory segment {tmp}: {exc.strerror}"
                               ) from None
        mm = None
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
            address = mapping_address(mm)
            try:
                placement = bind_range(address, size, layout.mem_node,
                                       allow_fallback=allow_fallback)
            except PlacementError as exc:
                raise SegmentError(f"cannot bind segment {path.name} to memory node "
                                   f"{layout.mem_node}: {exc}") from None
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                free = _shm_free_bytes()
                raise SegmentError(
                    f"cannot allocate {size} bytes for segment {path.name} in {SHM_DIR} "
                    f"({exc.strerror}; {free} bytes free there): lower slot_bytes or grow "
                    f"{SHM_DIR}") from None
            view = np.frombuffer(mm, dtype=np.uint8)
            try:
                view[::PAGE_SIZE] = 0  # map every page into this process (audit sees them)
            finally:
                del view
            what = f"collective segment of node {layout.node_id}"
            downgrades = [d for d in [placement.downgrade(what)] if d is not None]
            try:
                audit = audit_range(address, size, layout.mem_node)
            except PlacementError as exc:
                if not allow_fallback or exc.call is None:
                    raise SegmentError(f"cannot audit segment {path.name}: {exc}") from None
                audit = None
                downgrades.append(Downgrade.of(exc, f"audit of the {what}", "not audited"))
            _HEADER.pack_into(mm, 0, 0, layout.layout_hash, world, layout.node_id, os.getpid(),
                              size)
            struct.pack_into("<Q", mm, 0, MAGIC)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise SegmentError(
                    f"shared-memory segment {path} exists already: another communicator uses "
                    f"namespace {path.name.rsplit('-node', 1)[0]!r}, or a crashed one left it "
                    f"(remove it with numaplan.runtime.ccl.cleanup(namespace))") from None
            except OSError as exc:
                raise SegmentError(f"cannot publish segment {path}: {exc.strerror}") from None
            seg = cls(path, layout, mm, created=True, placement=placement, audit=audit,
                      downgrades=tuple(downgrades))
            mm = None
            return seg
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.close(fd)
            if mm is not None:
                mm.close()

    @classmethod
    def open(cls, path: Path, layout: SegmentLayout, world: int, timeout_s: float,
             creator_rank: int) -> Segment:
        """Map a segment another rank creates, waiting up to ``timeout_s`` for it to appear.

        Raises
        ------
        SegmentError
            It did not appear in time, or its size or layout differ from this rank's spec.
        """
        try:
            fd = open_when_published(path, timeout_s)
        except FileNotFoundError:
            raise SegmentError(
                f"rank {creator_rank} did not create shared-memory segment {path} "
                f"within {timeout_s:g} s (not started, or died)") from None
        except OSError as exc:
            raise SegmentError(f"cannot open segment {path}: {exc.strerror}") from None
        try:
            got = os.fstat(fd).st_size
            if got != layout.size:
                raise SegmentError(f"segment {path} has {got} bytes, this rank's spec needs "
                                   f"{layout.size}: the ranks were started with different "
                                   f"specs")
            mm = mmap.mmap(fd, layout.size, flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        magic, lhash, w, node, _pid, size = _HEADER.unpack_from(mm, 0)
        if magic != MAGIC or lhash != layout.layout_hash or w != world or size != layout.size:
            mm.close()
            raise SegmentError(f"segment {path} does not match this rank's spec (world {w}, "
                               f"node {node}, size {size}; expected world {world}, node "
                               f"{layout.node_id}, size {layout.size})")
        return cls(path, layout, mm, created=False)

    # -- access -------------------------------------------------------------------------------
    def audit_now(self, max_pages: int | None = None) -> PageAudit:
        """Where the segment's pages are now, seen from this process (move_pages)."""
        self._live()
        # Map every page in this process first: move_pages reports unmapped pages as absent.
        view = np.frombuffer(self._live(), dtype=np.uint8)
        try:
            int(view[::PAGE_SIZE].sum())
        finally:
            del view
        return audit_range(self.address, self.size, self.layout.mem_node, max_pages=max_pages)

    def write_reason(self, text: str) -> None:
        data = text.encode()[: REASON_BYTES - 1] + b"\0"
        self._live()[REASON_OFFSET:REASON_OFFSET + len(data)] = data

    def read_reason(self) -> str:
        raw = bytes(self._live()[REASON_OFFSET:REASON_OFFSET + REASON_BYTES])
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    def _live(self) -> mmap.mmap:
        if self._mm is None:
            raise SegmentError(f"segment {self.path} is closed")
        return self._mm

    @property
    def closed(self) -> bool:
        return self._mm is None

    def close(self, unlink: bool | None = None) -> None:
        """Unmap; unlink too when this process created it (or ``unlink=True``). Idempotent."""
        if self.created if unlink is None else unlink:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if self._mm is not None:
            mm, self._mm = self._mm, None
            try:
                mm.close()
            except BufferError:  # a view is alive somewhere: leave the mapping to the GC
                pass


def _shm_free_bytes() -> int:
    try:
        st = os.statvfs(SHM_DIR)
        return st.f_bavail * st.f_frsize
    except OSError:
        return -1
