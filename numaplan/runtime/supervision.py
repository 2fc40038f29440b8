"""Worker supervision: notice a dead worker, stop the others, clean up, name what happened.

A :class:`Supervisor` follows the worker processes of one session. Its watchdog thread checks
them every ``interval_s``; when one dies (gone, or a zombie), it aborts the collective of this
process's worker (worker 0, a thread of the controller) so that the survivors stop waiting,
kills the other workers, and removes the session's shared memory. Every Disco call runs under
:meth:`Supervisor.guard`, which turns whatever error a death causes into
:class:`~numaplan.errors.WorkerDiedError` naming the worker and the phase.

The rest of the module handles TVM's Disco teardown, which aborts the controller process
whenever a message goes to a dead worker's pipe (:func:`keep_forever`, :func:`release_workers`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from numaplan.errors import NumaplanError, WorkerDiedError
from numaplan.runtime.ccl.registry import cleanup as cleanup_collective
from numaplan.runtime.protocol import SHUTDOWN, WorkerFailure
from numaplan.runtime.shared_weights import cleanup_weight_segments

log = logging.getLogger(__name__)
T = TypeVar("T")


class Supervisor:
    """Follows the worker processes of the session whose ``/dev/shm`` files are ``namespace``.

    Attributes
    ----------
    pids
        worker id -> pid of each worker process (worker 0, a thread of this process, is not
        one).
    phase
        What the session is doing (``start``, ``setup``, ``load``, ``ready``, ``decode``):
        errors name it.
    dead
        ``(worker id, pid)`` of the first worker found dead, or ``None``.
    """

    def __init__(self, namespace: str, *, interval_s: float) -> None:
        self.namespace = namespace
        self.interval_s = interval_s
        self.pids: dict[int, int] = {}
        self.phase = "start"
        self.dead: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- watching -----------------------------------------------------------------------------
    def watch(self, pids: dict[int, int]) -> None:
        """Start the watchdog over ``pids`` (worker id -> pid)."""
        self.pids = dict(pids)

        def run() -> None:
            while not self._stop.wait(self.interval_s):
                if self.check():
                    return

        self._thread = threading.Thread(target=run, name="numaplan-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watchdog (at shutdown)."""
        self._stop.set()

    def check(self) -> bool:
        """Whether a worker is dead; the first death found stops everything (see the module
        doc)."""
        for wid, pid in self.pids.items():
            if not alive(pid):
                if self.dead is None:
                    self.dead = (wid, pid)
                    self._on_death()
                return True
        return False

    def wait_for_death(self, seconds: float) -> bool:
        """Whether a worker is (or, within ``seconds``, turns out to be) dead."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.dead is not None or self.check():
                return True
            time.sleep(0.02)
        return self.dead is not None

    def _on_death(self) -> None:
        """Stop everything the dead worker's peers may be blocked on."""
        wid = self.dead[0] if self.dead else "?"
        log.error("worker %s (pid %s) died during %s", *(self.dead or ()), self.phase)
        from numaplan.runtime.worker import abort_collective  # worker 0 lives here

        abort_collective(f"worker {wid} died")
        self.kill_workers()
        self.cleanup_shm()

    # -- errors -------------------------------------------------------------------------------
    def guard(self, fn: Callable[[], T]) -> T:
        """Run a Disco call; a dead worker turns any resulting error into WorkerDiedError."""
        try:
            out = fn()
        except Exception as exc:
            if self.wait_for_death(2.0):
                raise self.died() from None
            if isinstance(exc, NumaplanError):
                raise
            raise NumaplanError(f"worker error during {self.phase}: {exc}") from None
        if self.dead is not None:
            raise self.died()
        return out

    def died(self) -> WorkerDiedError:
        """The error that names the dead worker and the phase."""
        wid, pid = self.dead or (-1, -1)
        return WorkerDiedError(f"worker {wid} (pid {pid}) died during {self.phase}; the other "
                               f"workers were stopped and the shared memory removed")

    def worker_error(self, worker_id: int, failure: WorkerFailure) -> NumaplanError:
        """The error a worker reported, as an exception of the controller.

        A user error keeps its class (a :class:`~numaplan.errors.PlacementError` for strict
        placement...), so that callers can tell them apart across the process boundary; the
        message names the worker once. Anything else is a bug of the worker: its traceback
        goes to the debug log.
        """
        if failure.user:
            msg = failure.message
            if not msg.startswith(f"worker {worker_id}:"):
                msg = f"worker {worker_id}: {msg}"
            return failure.error(msg)
        log.debug("worker %d traceback:\n%s", worker_id, failure.trace)
        return NumaplanError(f"worker {worker_id} failed during {self.phase}: "
                             f"{failure.type}: {failure.message}")

    # -- teardown -----------------------------------------------------------------------------
    def kill_workers(self) -> None:
        """SIGKILL every worker process and reap the ones already gone."""
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in self.pids.values():
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)

    def wait_exit(self, seconds: float) -> None:
        """Wait up to ``seconds`` for every worker process to exit."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(alive(p) for p in self.pids.values()):
            time.sleep(0.02)

    def cleanup_shm(self) -> None:
        """Remove every ``/dev/shm`` file of the session (collective segments, weights)."""
        with contextlib.suppress(Exception):
            cleanup_collective(self.namespace)
        with contextlib.suppress(Exception):
            cleanup_weight_segments(self.namespace)


def alive(pid: int) -> bool:
    """Alive and not a zombie (a dead child stays a zombie until it is reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def release_workers(sess: Any) -> None:
    """Ask every worker to free its communicator and weights (no handle outlives the call)."""
    with contextlib.suppress(Exception):
        f = sess.get_global_func(SHUTDOWN)
        ref = sess.call_packed(f)
        sess._sync_all()
        del ref, f


def keep_forever(obj: Any) -> None:
    """Never destroy a session whose worker died: TVM's destructor writes a shutdown message
    to the dead worker's pipe, gets EPIPE and calls std::terminate, killing this process."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


@contextlib.contextmanager
def single_threaded_children() -> Iterator[None]:
    """Workers inherit the environment: one BLAS/OpenMP thread each (TVM's pool does the
    parallel work, on the plan's CPUs)."""
    keys = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
