"""CPU affinity of threads and processes: pin, read back, audit.

On Linux ``sched_setaffinity(0, ...)`` applies to the *calling thread*, not the whole process
(sched_setaffinity(2), NOTES: "the thread ID ... 0 means the calling thread"), which is what
per-thread pinning needs. Any thread of any process can be read back through
``/proc/<pid>/task/<tid>/status`` (``Cpus_allowed_list``, ``Mems_allowed_list``) and
``/proc/<pid>/task/<tid>/stat`` (field 39, the CPU it last ran on; proc(5)).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from numaplan._base import Frozen
from numaplan.errors import PlacementError
from numaplan.topology.cpulist import format_cpulist, parse_cpulist


class ThreadAffinity(Frozen):
    """Where one thread may run and allocate, as ``/proc`` reports it."""

    pid: int
    tid: int
    name: str
    cpus_allowed: tuple[int, ...]
    mems_allowed: tuple[int, ...]
    last_cpu: int | None = None


def current_thread_id() -> int:
    """The kernel thread id (tid) of the calling thread."""
    return threading.get_native_id()


def set_affinity(cpus: Iterable[int], pid: int = 0) -> tuple[int, ...]:
    """Pin a thread (``pid=0``: the calling thread) or process to ``cpus``.

    Parameters
    ----------
    cpus
        Logical CPU ids.
    pid
        0 for the calling thread, else a pid or tid.

    Returns
    -------
    tuple of int
        The affinity read back, equal to ``cpus``.

    Raises
    ------
    PlacementError
        When the kernel refuses (CPUs outside the cpuset or offline: EINVAL; another user's
        process: EPERM) or silently narrows the set; the previous affinity is restored then.
    """
    want = tuple(sorted(set(cpus)))
    if not want:
        raise PlacementError("cannot pin to an empty CPU set")
    who = "the calling thread" if pid == 0 else f"thread/process {pid}"
    try:
        before = os.sched_getaffinity(pid)
        os.sched_setaffinity(pid, want)
    except OSError as exc:
        hint = {
            errno.EINVAL: "the CPUs are offline or outside this process's cpuset "
                f"(Cpus_allowed_list {format_cpulist(_cpuset_hint())})",
            errno.EPERM: "changing another user's thread needs CAP_SYS_NICE",
            errno.ESRCH: "no such thread or process",
        }.get(exc.errno or 0, "see sched_setaffinity(2)")
        raise PlacementError(f"sched_setaffinity failed ({os.strerror(exc.errno or 0)}) while "
                             f"pinning {who} to CPUs {format_cpulist(want)}; {hint}") from None
    got = tuple(sorted(os.sched_getaffinity(pid)))
    if got != want:
        # The kernel intersects the request with the cpuset; a partial pin is not what was asked.
        os.sched_setaffinity(pid, before)
        missing = sorted(set(want) - set(got))
        raise PlacementError(f"pinning {who} to CPUs {format_cpulist(want)} gave "
                             f"{format_cpulist(got)}: CPUs {format_cpulist(missing)} are outside "
                             f"the cpuset; pick CPUs from Cpus_allowed_list")
    return got


def get_affinity(pid: int = 0) -> tuple[int, ...]:
    """The CPUs a thread (``pid=0``: the calling thread) or process may run on."""
    try:
        return tuple(sorted(os.sched_getaffinity(pid)))
    except OSError as exc:
        raise PlacementError(f"sched_getaffinity({pid}) failed: {os.strerror(exc.errno or 0)}"
                             ) from None


def _cpuset_hint() -> tuple[int, ...]:
    from numaplan.osnuma.system import allowed_cpus

    return allowed_cpus()


@contextlib.contextmanager
def pinned(cpus: Iterable[int]) -> Iterator[tuple[int, ...]]:
    """Pin the calling thread to ``cpus`` for the ``with`` block, then restore its affinity."""
    before = get_affinity(0)
    got = set_affinity(cpus, 0)
    try:
        yield got
    finally:
        os.sched_setaffinity(0, before)


def read_thread_affinity(tid: int | None = None, pid: int | None = None,
                         root: str | Path = "/") -> ThreadAffinity:
    """Read a thread's affinity from ``/proc/<pid>/task/<tid>/{status,stat}``.

    Parameters
    ----------
    tid
        Thread id; default the calling thread.
    pid
        Process id owning the thread; default this process.
    root
        Filesystem root (tests).

    Raises
    ------
    PlacementError
        When the thread does not exist (any more).
    """
    pid = os.getpid() if pid is None else pid
    tid = current_thread_id() if tid is None else tid
    task = Path(root) / f"proc/{pid}/task/{tid}"
    try:
        status = (task / "status").read_text()
    except OSError:
        raise PlacementError(f"no thread {tid} in process {pid} ({task}/status unreadable)"
                             ) from None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    last_cpu = None
    try:
        stat = (task / "stat").read_text()
        # comm (field 2) may contain spaces and parentheses: split after the last ')'.
        rest = stat.rsplit(")", 1)[1].split()
        last_cpu = int(rest[36])  # field 39 of proc(5); rest starts at field 3
    except (OSError, IndexError, ValueError):
        pass
    return ThreadAffinity(
        pid=pid,
        tid=tid,
        name=fields.get("Name", "").strip(),
        cpus_allowed=parse_cpulist(fields.get("Cpus_allowed_list", "")),
        mems_allowed=parse_cpulist(fields.get("Mems_allowed_list", "")),
        last_cpu=last_cpu,
    )


def process_thread_affinities(pid: int | None = None,
                              root: str | Path = "/") -> tuple[ThreadAffinity, ...]:
    """Affinity of every thread of a process (default: this one), sorted by tid.

    Threads that exit while being listed are skipped.
    """
    pid = os.getpid() if pid is None else pid
    task_dir = Path(root) / f"proc/{pid}/task"
    try:
        tids = sorted(int(t) for t in os.listdir(task_dir) if t.isdigit())
    except OSError:
        raise PlacementError(f"no process {pid} ({task_dir} unreadable)") from None
    out = []
    for tid in tids:
        with contextlib.suppress(PlacementError):
            out.append(read_thread_affinity(tid, pid, root))
    return tuple(out)
