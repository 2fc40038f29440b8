"""Helpers shared by the runtime's ``/dev/shm`` files (collective segments, shared weights).

Every file of a session is named ``<namespace>-<what><index>`` (``-node0``, ``-weights3``), the
namespace being unique per session (:func:`new_namespace`), so that the controller can remove
them all whatever state the workers are in. Both kinds follow one protocol: the creator builds
the file under a temporary name and publishes it with ``link(2)`` once it is complete; the other
processes wait for the final name.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import secrets
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*")
_NAMESPACE_MAX = 200


def new_namespace(prefix: str = "numaplan") -> str:
    """A fresh namespace: ``<prefix>-<pid>-<random hex>``."""
    return f"{prefix}-{os.getpid()}-{secrets.token_hex(4)}"


def check_namespace(namespace: str) -> str:
    """``namespace`` if it can prefix file names in ``/dev/shm``.

    Raises
    ------
    ValueError
        It is empty, too long, or has characters other than letters, digits, ``_``, ``.``
        and single ``-`` between them (so no path separator).
    """
    if not _NAMESPACE.fullmatch(namespace) or len(namespace) > _NAMESPACE_MAX:
        raise ValueError(f"namespace {namespace!r} must be 1-{_NAMESPACE_MAX} characters of "
                         f"letters, digits, '_', '.', and single '-' between them")
    return namespace


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
