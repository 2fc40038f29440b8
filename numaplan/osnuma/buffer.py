"""An anonymous, page-aligned memory buffer whose pages are placed on chosen nodes.

The order matters (docs/background.md 4.1, "first touch"): map, set the range policy with
mbind(2), advise huge pages if wanted, *then* write every page. A page gets its node when it is
first written; reading memory never written maps the shared zero page and measures nothing real.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from numaplan.errors import PlacementError
from numaplan.osnuma.audit import MovePagesQuery, PageAudit, audit_range
from numaplan.osnuma.backend import NumaBackend
from numaplan.osnuma.mempolicy import ModeName, PlacementOutcome, bind_range
from numaplan.osnuma.system import HUGE_PAGE_SIZE, PAGE_SIZE


class NodeBuffer:
    """Anonymous private memory (``mmap``) that can be bound to NUMA nodes before first touch.

    Parameters
    ----------
    nbytes
        Requested size; rounded up to whole pages (to whole 2 MiB huge pages when
        ``huge_pages``).
    huge_pages
        Call ``madvise(MADV_HUGEPAGE)`` (effective when THP is in ``always`` or ``madvise``
        mode); whether huge pages were really used can be read with
        :func:`~numaplan.osnuma.audit.huge_page_bytes`.

    Notes
    -----
    Use as a context manager or call :meth:`close`. Numpy views from :meth:`array` keep the
    mapping exported; delete them before closing (``close`` refuses otherwise).
    """

    def __init__(self, nbytes: int, *, huge_pages: bool = False) -> None:
        if nbytes <= 0:
            raise PlacementError(f"buffer size must be positive, got {nbytes}")
        unit = HUGE_PAGE_SIZE if huge_pages else PAGE_SIZE
        self.nbytes = -(-nbytes // unit) * unit
        try:
            self._mm: mmap.mmap | None = mmap.mmap(
                -1, self.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise PlacementError(f"mmap of {self.nbytes} bytes failed ({exc.strerror}); "
                                 f"ask for less memory") from None
        # The address of the mapping: take it through a temporary ctypes export and drop the
        # export at once, so close() is not blocked by it. The mapping never moves.
        anchor = ctypes.c_char.from_buffer(self._mm)
        self.address = ctypes.addressof(anchor)
        del anchor
        self.huge_pages = False
        if huge_pages:
            self.advise_huge_pages()
        self.bound: PlacementOutcome | None = None

    # -- placement ----------------------------------------------------------------------------
    def advise_huge_pages(self) -> bool:
        """``madvise(MADV_HUGEPAGE)`` on the whole buffer; ``False`` when unsupported."""
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is None:
            return False
        try:
            self._live().madvise(advice)
        except OSError:
            return False  # THP compiled out or disabled: small pages, still correct
        self.huge_pages = True
        return True

    def bind(self, node_ids: int | Iterable[int], *, mode: ModeName = "bind",
             strict: bool = True, move: bool = True, allow_fallback: bool = False,
             backend: NumaBackend | str | None = None) -> PlacementOutcome:
        """Set the buffer's memory policy with mbind(2); call before :meth:`touch`.

        Parameters
        ----------
        node_ids
            Target node(s).
        mode
            ``bind`` (default), ``interleave``, ``preferred``, ``preferred-many``.
        strict, move
            ``MPOL_MF_STRICT`` / ``MPOL_MF_MOVE`` (see :func:`~numaplan.osnuma.mempolicy.mbind`).
        allow_fallback
            Degrade bind -> preferred -> nothing instead of raising; the outcome says what
            happened and is kept in :attr:`bound`.

        Raises
        ------
        PlacementError
            When refused and ``allow_fallback`` is ``False``.
        """
        self._live()
        self.bound = bind_range(self.address, self.nbytes, node_ids, mode=mode, strict=strict,
                                move=move, allow_fallback=allow_fallback, backend=backend)
        return self.bound

    def touch(self, value: int = 1) -> None:
        """Write one byte in every page, so that every page is allocated (on the node its policy
        says) and none is the shared zero page."""
        view = self.array(np.uint8)
        try:
            view[::PAGE_SIZE] = value
        finally:
            del view

    # -- access -------------------------------------------------------------------------------
    def array(self, dtype: npt.DTypeLike = np.uint8) -> np.ndarray:
        """A writable numpy view of the whole buffer (delete it before :meth:`close`)."""
        return np.frombuffer(self._live(), dtype=dtype)

    def audit(self, node_ids: int | Iterable[int], *, max_pages: int | None = None,
              query: MovePagesQuery | None = None,
              backend: NumaBackend | str | None = None) -> PageAudit:
        """Audit where the buffer's pages are (see :func:`~numaplan.osnuma.audit.audit_range`)."""
        self._live()
        return audit_range(self.address, self.nbytes, node_ids, max_pages=max_pages,
                           query=query, backend=backend)

    # -- lifetime -----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether the mapping has been released."""
        return self._mm is None

    def close(self) -> None:
        """Unmap the buffer (munmap(2)); idempotent.

        Raises
        ------
        BufferError
            When numpy views of the buffer are still alive.
        """
        if self._mm is None:
            return
        try:
            self._mm.close()
        except BufferError:
            raise BufferError("NodeBuffer.close(): numpy views of the buffer are still alive; "
                              "delete them first") from None
        self._mm = None

    def _live(self) -> mmap.mmap:
        if self._mm is None:
            raise PlacementError("the buffer is closed")
        return self._mm

    def __enter__(self) -> NodeBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.nbytes

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"at {self.address:#x}"
        return f"<NodeBuffer {self.nbytes} bytes {state}>"
