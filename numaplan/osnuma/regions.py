"""Memory a library allocated on its own: find its new mappings, place and prefault them.

Some memory is allocated inside code numaplan cannot pass a buffer to (TVM's paged KV cache is
created by the model library's own function). Its pages can still be placed and audited:

- :func:`anonymous_ranges` lists the process's private writable anonymous mappings
  (``/proc/<pid>/maps``: no file, or ``[heap]``), and :func:`added_ranges` the address ranges
  present after an allocation but not before (new mappings, and the grown part of a heap or of
  a malloc arena);
- :func:`populate` faults every page of a range in as if written (``MADV_POPULATE_WRITE``,
  Linux 5.14) without changing a byte, so pages a library allocated lazily get their node now,
  under the range's policy, and an audit sees them all.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Sequence
from pathlib import Path

from numaplan.errors import PlacementError

#: ``MADV_POPULATE_WRITE`` (include/uapi/asm-generic/mman-common.h); Python 3.11's mmap lacks it.
MADV_POPULATE_WRITE = 23

Range = tuple[int, int]  # [start, end) addresses


def anonymous_ranges(maps_text: str) -> list[Range]:
    """Private, readable and writable anonymous mappings of a ``/proc/<pid>/maps`` text.

    Examples
    --------
    >>> anonymous_ranges("1000-3000 rw-p 00000000 00:00 0 \\n"
    ...                  "5000-6000 rw-p 00000000 08:01 42 /lib/x.so\\n"
    ...                  "7000-9000 rw-p 00000000 00:00 0 [heap]\\n"
    ...                  "a000-b000 r--p 00000000 00:00 0 \\n")
    [(4096, 12288), (28672, 36864)]
    """
    out = []
    for line in maps_text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5 or not parts[1].startswith("rw") or parts[1][3] != "p":
            continue
        name = parts[5].strip() if len(parts) > 5 else ""
        if parts[4] != "0" or name not in ("", "[heap]"):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        out.append((lo, hi))
    return out


def read_anonymous_ranges(pid: int | str = "self") -> list[Range]:
    """:func:`anonymous_ranges` of a live process.

    Raises
    ------
    PlacementError
        When ``/proc/<pid>/maps`` cannot be read.
    """
    try:
        return anonymous_ranges(Path(f"/proc/{pid}/maps").read_text())
    except OSError as exc:
        raise PlacementError(f"cannot read /proc/{pid}/maps ({exc.strerror})") from None


def added_ranges(before: Sequence[Range], after: Sequence[Range]) -> list[Range]:
    """The parts of ``after``'s ranges that no range of ``before`` covers, merged and sorted.

    Examples
    --------
    >>> added_ranges([(0, 10), (20, 30)], [(0, 15), (20, 30), (40, 50)])
    [(10, 15), (40, 50)]
    """
    old = sorted(before)
    out: list[Range] = []
    for lo, hi in sorted(after):
        pos = lo
        for olo, ohi in old:
            if ohi <= pos or olo >= hi:
                continue
            if olo > pos:
                out.append((pos, olo))
            pos = max(pos, ohi)
            if pos >= hi:
                break
        if pos < hi:
            out.append((pos, hi))
    merged: list[Range] = []
    for lo, hi in out:
        if merged and merged[-1][1] == lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


_libc = None


def populate(address: int, length: int) -> bool:
    """Fault in every page of a range for writing, contents unchanged (``MADV_POPULATE_WRITE``).

    Returns
    -------
    bool
        ``False`` when the kernel does not support it (before 5.14: ``EINVAL``); the pages then
        stay as they are (an audit reports the absent ones).

    Raises
    ------
    PlacementError
        When the kernel refuses for another reason (``ENOMEM``: the node is full under a bind
        policy; ``EFAULT``: the range is not mapped).
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if _libc.madvise(address, length, MADV_POPULATE_WRITE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EINVAL:  # advice unknown to this kernel
        return False
    raise PlacementError(f"madvise(MADV_POPULATE_WRITE) of {length} bytes at {address:#x} "
                         f"failed ({os.strerror(err)})")
