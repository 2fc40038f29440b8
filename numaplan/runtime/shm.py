"""Helpers shared by the runtime's ``/dev/shm`` files (collective segments, shared weights).

Both follow one protocol: the creator builds the file under a temporary name and publishes it
with ``link(2)`` once it is complete; the other processes wait for the final name.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from pathlib import Path


def mapping_address(mm: mmap.mmap) -> int:
    """The address of a mapping (through a temporary ctypes export, dropped at once so that
    ``mm.close()`` is not blocked by it; the mapping never moves)."""
    anchor = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor


def open_when_published(path: Path, timeout_s: float, *, max_delay_s: float = 0.02) -> int:
    """Open ``path`` read-write once its creator has published it; returns the descriptor.

    Polls with a doubling delay (0.5 ms up to ``max_delay_s``).

    Raises
    ------
    FileNotFoundError
        It did not appear within ``timeout_s``.
    OSError
        Any other failure to open it.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.0005
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)
