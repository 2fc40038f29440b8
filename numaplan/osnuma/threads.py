"""A fixed set of worker threads, each pinned to its own CPUs, that run one job together.

The probe uses it to stream a buffer from every physical core of a node at once; the runtime can
use it for pinned helper threads. Each thread pins itself first thing (sched_setaffinity(2) with
pid 0 acts on the calling thread), so nothing it allocates or touches runs elsewhere even briefly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from numaplan.errors import PlacementError
from numaplan.osnuma.affinity import current_thread_id, set_affinity
from numaplan.osnuma.mempolicy import MemPolicy, set_mempolicy

T = TypeVar("T")
_STOP = object()


_PR_SET_NAME = 15  # prctl(2)
_libc: ctypes.CDLL | None = None


def set_native_thread_name(name: str) -> bool:
    """Name the calling thread in the kernel (prctl(2) ``PR_SET_NAME``, at most 15 bytes) so
    ``/proc/<pid>/task/<tid>/comm`` and thread audits show it; ``False`` if refused."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return _libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class PinnedThreads:
    """``len(cpus)`` daemon threads; thread ``k`` is pinned to ``cpus[k]``.

    Parameters
    ----------
    cpus
        One entry per thread: a CPU id or a set of CPU ids.
    name
        Thread name prefix; thread ``k`` is ``{name}-{k}``, also in the kernel (truncated to 15
        bytes) so ``/proc/<pid>/task/<tid>/comm`` and audits show which worker it is.
    mempolicy
        A memory policy each thread sets for itself after pinning (set_mempolicy(2) is
        per thread); ``None`` keeps the inherited one.

    Raises
    ------
    PlacementError
        When a thread cannot be pinned (or cannot set its memory policy).
    """

    def __init__(self, cpus: Sequence[int | Iterable[int]], *, name: str = "numaplan-pinned",
                 mempolicy: MemPolicy | None = None) -> None:
        if not cpus:
            raise PlacementError("a pinned thread set needs at least one CPU")
        self.cpus: tuple[tuple[int, ...], ...] = tuple(
            (c,) if isinstance(c, int) else tuple(sorted(c)) for c in cpus)
        self._jobs: list[queue.Queue] = [queue.Queue() for _ in self.cpus]
        self._results: queue.Queue = queue.Queue()
        ready: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._main, args=(k, ready, mempolicy),
                                          name=f"{name}-{k}", daemon=True)
                         for k in range(len(self.cpus))]
        for t in self._threads:
            t.start()
        tids: dict[int, int] = {}
        errors = []
        for _ in self._threads:
            k, tid, err = ready.get()
            tids[k] = tid
            if err is not None:
                errors.append(err)
        self.thread_ids: tuple[int, ...] = tuple(tids[k] for k in range(len(self.cpus)))
        if errors:
            self.close()
            raise errors[0]

    def __len__(self) -> int:
        return len(self.cpus)

    def _main(self, k: int, ready: queue.Queue, mempolicy: MemPolicy | None) -> None:
        err = None
        set_native_thread_name(threading.current_thread().name)
        try:
            set_affinity(self.cpus[k], 0)
            if mempolicy is not None:
                set_mempolicy(mempolicy.mode, mempolicy.node_ids)
        except PlacementError as exc:
            err = exc
        ready.put((k, current_thread_id(), err))
        if err is not None:
            return
        while True:
            job = self._jobs[k].get()
            if job is _STOP:
                return
            try:
                self._results.put((k, True, job(k)))
            except BaseException as exc:  # handed to the caller of run()
                self._results.put((k, False, exc))

    def run(self, fn: Callable[[int], T]) -> list[T]:
        """Call ``fn(k)`` on every thread ``k`` concurrently; return the results in order.

        Raises
        ------
        BaseException
            The first exception raised by any thread, after all threads finished.
        """
        return self._run(fn, range(len(self.cpus)))

    def run_one(self, k: int, fn: Callable[[int], T]) -> T:
        """Call ``fn(k)`` on thread ``k`` only and return its result."""
        return self._run(fn, [k])[0]

    def _run(self, fn: Callable[[int], Any], which: Iterable[int]) -> list[Any]:
        which = list(which)
        if not self._threads:
            raise PlacementError("the pinned thread set is closed")
        for k in which:
            self._jobs[k].put(fn)
        got: dict[int, Any] = {}
        failure: BaseException | None = None
        for _ in which:
            k, ok, value = self._results.get()
            if ok:
                got[k] = value
            elif failure is None:
                failure = value
        if failure is not None:
            raise failure
        return [got[k] for k in which]

    def close(self) -> None:
        """Stop and join the threads; idempotent."""
        for q in self._jobs:
            q.put(_STOP)
        for t in self._threads:
            t.join()
        self._threads = []

    def __enter__(self) -> PinnedThreads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
