"""The process's registry of communicators and of the segments it created, and cleanup.

A segment's creator unlinks it on :meth:`Communicator.close` and, through an ``atexit`` hook,
at interpreter exit (a process that forgot to close leaves nothing behind); a process killed
with SIGKILL leaves its segments to :func:`cleanup`, which the controller calls.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from typing import Protocol

from numaplan.runtime.ccl.segments import cleanup_segments


class _Closable(Protocol):
    def close(self) -> None: ...


_created: dict[str, int] = {}  # segment path -> pid of the process that created it
_live: set[_Closable] = set()
_lock = threading.Lock()
_hooked = False


def track(comm: _Closable) -> None:
    """Close ``comm`` at interpreter exit unless it is closed first (:func:`untrack`)."""
    with _lock:
        _hook()
        _live.add(comm)


def untrack(comm: _Closable) -> None:
    """``comm`` was closed: nothing to do at exit."""
    with _lock:
        _live.discard(comm)


def created(path: str) -> None:
    """This process created the segment at ``path``: unlink it at exit."""
    with _lock:
        _hook()
        _created[path] = os.getpid()


def released(path: str) -> None:
    """The segment at ``path`` was unlinked (or handed over): nothing to do at exit."""
    _created.pop(path, None)


def cleanup(namespace: str) -> list[str]:
    """Unlink every shared-memory segment of ``namespace``; return the paths removed.

    Works whatever state the ranks are in (alive, mid-call, dead). Call it from the controller
    at shutdown and after a worker crash.
    """
    removed = cleanup_segments(namespace)
    for p in removed:
        released(p)
    return removed


def _hook() -> None:
    global _hooked
    if not _hooked:
        atexit.register(_at_exit)
        _hooked = True


def _at_exit() -> None:
    with _lock:
        live = list(_live)
    for comm in live:
        with contextlib.suppress(Exception):
            comm.close()
    me = os.getpid()
    for path, pid in list(_created.items()):
        if pid == me:
            with contextlib.suppress(OSError):
                os.unlink(path)
            _created.pop(path, None)
