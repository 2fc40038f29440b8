"""Where pages really are: two independent audits.

1. move_pages(2) with ``nodes=NULL`` moves nothing and fills ``status[i]`` with the node of
   page ``i``, or a negative errno (``-ENOENT``: page not present, never touched; ``-EFAULT``:
   not mapped). This is exact per page and works for any address range of this process.
2. ``/proc/<pid>/numa_maps`` (proc(5), kernel ``Documentation/filesystems/proc.rst``) lists every
   mapping's policy and ``N<node>=<pages>`` counts. It is per mapping (VMA), so it cannot tell
   two buffers apart once the kernel merged their VMAs, but it needs no system call and reads
   other processes too.

The move_pages query is injectable (``query=``) so tests can feed a mocked answer and check that
a misplacement is reported.
"""

from __future__ import annotations

import errno as _errno
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import computed_field

from numaplan._base import Frozen
from numaplan.errors import PlacementError
from numaplan.osnuma.backend import (
    NumaBackend,
    NumaCallError,
    errno_name,
    get_backend,
    placement_error,
)
from numaplan.osnuma.system import PAGE_SIZE

#: ``query(addresses) -> statuses``: node id per page, or a negative errno.
MovePagesQuery = Callable[[np.ndarray], Sequence[int]]

# move_pages(2) takes any count, but the pointer and status arrays are ours to allocate: keep
# each call's arrays small for huge ranges.
_CHUNK_PAGES = 1 << 16


class PageAudit(Frozen):
    """The result of auditing an address range against its intended node(s).

    Attributes
    ----------
    source
        ``move_pages`` (exact, per page) or ``numa_maps`` (per mapping).
    target_node_ids
        The node(s) the pages should be on.
    address, length_bytes
        The range audited.
    pages_total
        Pages in the range.
    pages_checked
        Pages looked at (all, or an evenly spread sample).
    pages_on_target
        Checked pages found on a target node.
    pages_per_node
        ``(node, pages)`` for every node seen, sorted by node.
    pages_not_present
        Checked pages not backed by memory (``-ENOENT``: never touched, or swapped out).
    pages_failed
        ``(errno name, pages)`` for other negative statuses.
    """

    source: Literal["move_pages", "numa_maps"] = "move_pages"
    target_node_ids: tuple[int, ...]
    address: int
    length_bytes: int
    pages_total: int
    pages_checked: int
    pages_on_target: int
    pages_per_node: tuple[tuple[int, int], ...] = ()
    pages_not_present: int = 0
    pages_failed: tuple[tuple[str, int], ...] = ()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def on_target_fraction(self) -> float:
        """Share of checked pages on a target node (0.0 when nothing was checked)."""
        return self.pages_on_target / self.pages_checked if self.pages_checked else 0.0

    @property
    def nodes_seen(self) -> tuple[int, ...]:
        """Nodes holding at least one checked page."""
        return tuple(n for n, _ in self.pages_per_node)

    @property
    def complete(self) -> bool:
        """Every checked page is on a target node (and at least one page was checked)."""
        return self.pages_checked > 0 and self.pages_on_target == self.pages_checked

    def describe(self) -> str:
        """One line: ``pages on node 1: 99.2% (65012/65536), also on node 0: 524``."""
        tgt = ",".join(str(n) for n in self.target_node_ids)
        text = (f"pages on node {tgt}: {100 * self.on_target_fraction:.1f}% "
                f"({self.pages_on_target}/{self.pages_checked})")
        others = [f"node {n}: {c}" for n, c in self.pages_per_node
                  if n not in self.target_node_ids]
        if self.pages_not_present:
            others.append(f"not present: {self.pages_not_present}")
        others += [f"{name}: {c}" for name, c in self.pages_failed]
        return text + (f", elsewhere {', '.join(others)}" if others else "")


def page_count(address: int, length: int, page_size: int = PAGE_SIZE) -> int:
    """Number of pages that ``[address, address + length)`` touches."""
    if length <= 0:
        return 0
    first = address - address % page_size
    return -(-(address + length - first) // page_size)


def page_address_array(address: int, length: int, max_pages: int | None = None,
                       page_size: int = PAGE_SIZE) -> np.ndarray:
    """Like :func:`sample_page_addresses`, as a ``uint64`` numpy array (fast for big ranges)."""
    first = address - address % page_size
    n = page_count(address, length, page_size)
    if max_pages is None or max_pages >= n:
        idx = np.arange(n, dtype=np.uint64)
    elif max_pages <= 1:
        idx = np.zeros(1 if n else 0, dtype=np.uint64)
    else:
        idx = np.unique(np.round(np.linspace(0, n - 1, max_pages))).astype(np.uint64)
    return idx * np.uint64(page_size) + np.uint64(first)


def sample_page_addresses(address: int, length: int, max_pages: int | None = None,
                          page_size: int = PAGE_SIZE) -> tuple[int, ...]:
    """Start addresses of the pages of a range, or of at most ``max_pages`` spread evenly.

    The sample always includes the first and the last page.

    Examples
    --------
    >>> sample_page_addresses(0, 5 * 4096, 3, 4096)
    (0, 8192, 16384)
    """
    return tuple(int(a) for a in page_address_array(address, length, max_pages, page_size))


def page_nodes(addresses: Sequence[int] | np.ndarray, *, pid: int = 0,
               backend: NumaBackend | str | None = None) -> np.ndarray:
    """The node of each page (move_pages(2), ``nodes=NULL``), or ``-errno`` per page.

    Parameters
    ----------
    addresses
        Any addresses inside the pages of interest.
    pid
        0 for this process.

    Returns
    -------
    numpy.ndarray
        ``int32`` statuses, one per address.

    Raises
    ------
    PlacementError
        When the call itself fails (per-page problems are statuses, not errors).
    """
    be = get_backend(backend)
    addrs = np.ascontiguousarray(addresses, dtype=np.uint64)
    status = np.zeros(addrs.size, dtype=np.int32)
    for lo in range(0, addrs.size, _CHUNK_PAGES):
        hi = min(addrs.size, lo + _CHUNK_PAGES)
        try:
            be.move_pages(pid, addrs[lo:hi], None, status[lo:hi], 0)
        except NumaCallError as exc:
            raise placement_error(exc, f"query the node of {hi - lo} pages") from None
    return status


def audit_statuses(statuses: Sequence[int] | np.ndarray, target: Iterable[int], *,
                   address: int, length: int, pages_total: int) -> PageAudit:
    """Build a :class:`PageAudit` from move_pages statuses (node ids or ``-errno``)."""
    targets = tuple(sorted(set(target)))
    values, counts = np.unique(np.asarray(statuses, dtype=np.int64), return_counts=True)
    per_node = {int(v): int(c) for v, c in zip(values, counts, strict=True) if v >= 0}
    absent = sum(int(c) for v, c in zip(values, counts, strict=True) if v == -_errno.ENOENT)
    failed = {errno_name(-int(v)): int(c) for v, c in zip(values, counts, strict=True)
              if v < 0 and v != -_errno.ENOENT}
    return PageAudit(
        target_node_ids=targets,
        address=address,
        length_bytes=length,
        pages_total=pages_total,
        pages_checked=int(counts.sum()),
        pages_on_target=sum(per_node.get(t, 0) for t in targets),
        pages_per_node=tuple(sorted(per_node.items())),
        pages_not_present=absent,
        pages_failed=tuple(sorted(failed.items())),
    )


def audit_range(address: int, length: int, target: int | Iterable[int], *,
                max_pages: int | None = None, query: MovePagesQuery | None = None,
                backend: NumaBackend | str | None = None,
                page_size: int = PAGE_SIZE) -> PageAudit:
    """Check that the pages of ``[address, address + length)`` are on ``target``.

    Parameters
    ----------
    address, length
        The range (any alignment; whole pages are audited).
    target
        The intended node, or nodes (an interleaved range).
    max_pages
        Audit at most this many pages, spread evenly; ``None`` audits every page.
    query
        Replaces the move_pages(2) call: receives the page addresses (a ``uint64`` numpy
        array), returns one status per page (node id or ``-errno``). For tests, and for auditing
        through another channel.
    backend
        Backend for the real call.

    Returns
    -------
    PageAudit
        Counts per node; ``on_target_fraction`` is 1.0 when every checked page is on target.

    Raises
    ------
    PlacementError
        When move_pages itself fails, or ``query`` answers for the wrong number of pages.
    """
    targets = (target,) if isinstance(target, int) else tuple(target)
    pages = page_address_array(address, length, max_pages, page_size)
    statuses = query(pages) if query is not None else page_nodes(pages, backend=backend)
    if len(statuses) != len(pages):
        raise PlacementError(f"page query returned {len(statuses)} statuses for "
                             f"{len(pages)} pages")
    return audit_statuses(statuses, targets, address=address, length=length,
                          pages_total=page_count(address, length, page_size))


# -- /proc/<pid>/numa_maps -----------------------------------------------------------------------
_COUNTERS = ("anon", "dirty", "mapped", "mapmax", "swapcache", "active", "writeback")
_KINDS = ("heap", "stack", "huge")
_NODE_COUNT = re.compile(r"^N(\d+)=(\d+)$")


class NumaMapsEntry(Frozen):
    """One line of ``/proc/<pid>/numa_maps``: a mapping, its policy and pages per node.

    ``pages_per_node`` counts pages of ``page_size_bytes`` (``kernelpagesize_kB``); a transparent
    huge page counts as its base pages. ``end_address`` is filled from ``/proc/<pid>/maps`` when
    that was read, else ``None``.
    """

    start_address: int
    end_address: int | None = None
    policy: str
    file: str | None = None
    kinds: tuple[str, ...] = ()
    pages_per_node: tuple[tuple[int, int], ...] = ()
    counters: tuple[tuple[str, int], ...] = ()
    page_size_bytes: int = PAGE_SIZE

    @property
    def total_pages(self) -> int:
        """Pages resident on any node."""
        return sum(c for _, c in self.pages_per_node)

    def counter(self, name: str) -> int:
        """A counter such as ``anon`` or ``dirty`` (0 when absent)."""
        return dict(self.counters).get(name, 0)


def parse_numa_maps(text: str, maps_text: str | None = None) -> tuple[NumaMapsEntry, ...]:
    """Parse ``/proc/<pid>/numa_maps`` text.

    Parameters
    ----------
    text
        The numa_maps content, e.g. ``7f0c00000000 bind:1 anon=512 dirty=512 N1=512
        kernelpagesize_kB=4``.
    maps_text
        ``/proc/<pid>/maps`` content, to fill in each mapping's end address.

    Raises
    ------
    PlacementError
        On a line that is not numa_maps syntax, naming it.
    """
    ends: dict[int, int] = {}
    for line in (maps_text or "").splitlines():
        rng = line.split(" ", 1)[0]
        if "-" in rng:
            lo, hi = rng.split("-", 1)
            ends[int(lo, 16)] = int(hi, 16)
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        toks = line.split()
        if len(toks) < 2:
            raise PlacementError(f"numa_maps line {lineno} has no policy: {line!r}")
        try:
            start = int(toks[0], 16)
        except ValueError:
            raise PlacementError(f"numa_maps line {lineno} does not start with an address: "
                                 f"{line!r}") from None
        nodes: dict[int, int] = {}
        counters: list[tuple[str, int]] = []
        kinds: list[str] = []
        file = None
        page_kb = PAGE_SIZE >> 10
        for tok in toks[2:]:
            m = _NODE_COUNT.match(tok)
            if m:
                nodes[int(m.group(1))] = int(m.group(2))
            elif tok.startswith("file="):
                file = tok[5:]
            elif tok.startswith("kernelpagesize_kB="):
                page_kb = int(tok.split("=", 1)[1])
            elif "=" in tok:
                key, _, val = tok.partition("=")
                if key in _COUNTERS and val.isdigit():
                    counters.append((key, int(val)))
            elif tok in _KINDS:
                kinds.append(tok)
        out.append(NumaMapsEntry(start_address=start, end_address=ends.get(start),
                                 policy=toks[1], file=file, kinds=tuple(kinds),
                                 pages_per_node=tuple(sorted(nodes.items())),
                                 counters=tuple(counters), page_size_bytes=page_kb << 10))
    return tuple(out)


def read_numa_maps(pid: int | str = "self", root: str | Path = "/") -> tuple[NumaMapsEntry, ...]:
    """Read and parse ``/proc/<pid>/numa_maps`` (with end addresses from ``maps``).

    Raises
    ------
    PlacementError
        When the file cannot be read (no such process, kernel without NUMA).
    """
    base = Path(root) / f"proc/{pid}"
    try:
        text = (base / "numa_maps").read_text()
        maps = (base / "maps").read_text()
    except OSError as exc:
        raise PlacementError(f"cannot read {base}/numa_maps ({exc.strerror}); the process may "
                             f"have exited or the kernel lacks CONFIG_NUMA") from None
    return parse_numa_maps(text, maps)


def numa_maps_audit(address: int, length: int, target: int | Iterable[int], *,
                    pid: int | str = "self",
                    entries: Sequence[NumaMapsEntry] | None = None) -> PageAudit:
    """Audit a range from numa_maps: the pages of every mapping overlapping it.

    Coarser than :func:`audit_range`: a mapping may extend beyond the range (the kernel merges
    adjacent mappings with the same policy), and pages not present are not counted.

    Raises
    ------
    PlacementError
        When no mapping overlaps the range.
    """
    targets = (target,) if isinstance(target, int) else tuple(target)
    entries = read_numa_maps(pid) if entries is None else entries
    end = address + length
    per_node: Counter[int] = Counter()
    hit = False
    for e in entries:
        e_end = e.end_address if e.end_address is not None else e.start_address + 1
        if e.start_address < end and e_end > address:
            hit = True
            for n, c in e.pages_per_node:
                per_node[n] += c
    if not hit:
        raise PlacementError(f"no mapping of process {pid} overlaps {address:#x}+{length} in "
                             f"numa_maps")
    checked = sum(per_node.values())
    return PageAudit(source="numa_maps", target_node_ids=tuple(sorted(set(targets))),
                     address=address, length_bytes=length,
                     pages_total=page_count(address, length), pages_checked=checked,
                     pages_on_target=sum(per_node[t] for t in targets),
                     pages_per_node=tuple(sorted(per_node.items())))


def huge_page_bytes(address: int, length: int, pid: int | str = "self") -> int | None:
    """Bytes of transparent huge pages (``AnonHugePages`` in ``/proc/<pid>/smaps``) in the
    mappings overlapping a range; ``None`` when smaps is unreadable."""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return None
    end = address + length
    total = 0
    inside = False
    for line in text.splitlines():
        head = line.split(" ", 1)[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(x, 16) for x in head.split("-", 1))
            inside = lo < end and hi > address
        elif inside and line.startswith("AnonHugePages:"):
            total += int(line.split()[1]) << 10
    return total
