"""The session's statistics: every worker's report, summed up (:func:`runtime_stats`)."""

from __future__ import annotations

from collections.abc import Sequence

from numaplan._base import Frozen
from numaplan.osnuma import Downgrade
from numaplan.osnuma.system import PAGE_SIZE
from numaplan.runtime.protocol import WorkerReport
from numaplan.topology import parse_cpulist


class WorkerStats(Frozen):
    """What one worker measured."""

    worker_id: int
    pid: int
    node_id: int
    mem_node_id: int
    cpus_planned: str
    thread_cpus: tuple[str, ...]
    threads_on_planned_cpus: bool
    mempolicy: str
    load_s: float | None
    weight_bytes: int
    weight_bytes_on_planned_node: int
    weight_bytes_loaded: int = 0
    weight_bytes_shared_mapped: int = 0
    notes: tuple[str, ...] = ()
    #: Every placement call refused under ``allow_fallback`` (setup, weights, collective).
    downgrades: tuple[Downgrade, ...] = ()
    #: The collective's kernel build (``None``: no collective).
    collective_kernel: str | None = None
    #: Audits of the collective segments this worker created, one line each.
    collective_segments: tuple[str, ...] = ()
    collective_segments_on_node: bool = True
    #: The KV cache's audit (``None``: no cache created yet); ``kv_bytes`` are its resident
    #: bytes when the worker reported.
    kv_cache: str | None = None
    kv_mapped_bytes: int = 0
    kv_bytes: int = 0
    kv_bytes_on_planned_node: int = 0


class RuntimeStats(Frozen):
    """Measured, not assumed: placement audit, load times, collective traffic and time."""

    workers: tuple[WorkerStats, ...]
    weight_local_percentage: float
    #: Resident KV-cache bytes on their worker's node, % (0.0 before any cache exists).
    kv_local_percentage: float = 0.0
    collective_calls: int
    collective_bytes: int
    collective_cross_node_bytes: int
    inter_node_percentage: float
    collective_s_per_step: float | None
    decode_s_per_step: float | None
    tokens_per_s: float | None
    load_s: float | None

    @property
    def downgrades(self) -> tuple[Downgrade, ...]:
        """Every worker's downgrades, in worker order."""
        return tuple(d for w in self.workers for d in w.downgrades)


def worker_stats(worker_id: int, report: WorkerReport) -> WorkerStats:
    """One worker's figures from its report."""
    s, load, coll, kv = report.setup, report.load, report.collective, report.kv
    cpus = tuple("?" if t.cpus is None else t.cpus for t in report.threads)
    return WorkerStats(
        worker_id=worker_id, pid=s.pid, node_id=s.node_id, mem_node_id=s.mem_node_id,
        cpus_planned=s.cpus_planned, thread_cpus=cpus,
        threads_on_planned_cpus=all(_within(c, s.cpus_planned) for c in cpus),
        mempolicy=s.mempolicy, load_s=load.load_s if load else None,
        weight_bytes=load.bytes_audited if load else 0,
        weight_bytes_on_planned_node=load.bytes_on_planned_node if load else 0,
        weight_bytes_loaded=load.bytes_loaded if load else 0,
        weight_bytes_shared_mapped=load.bytes_shared_mapped if load else 0,
        notes=s.notes,
        downgrades=s.downgrades + (load.downgrades if load else ())
        + (coll.downgrades if coll else ()) + (kv.downgrades if kv else ()),
        kv_cache=kv.describe() if kv else None,
        kv_mapped_bytes=kv.bytes_mapped if kv else 0,
        kv_bytes=kv.pages_resident * PAGE_SIZE if kv else 0,
        kv_bytes_on_planned_node=kv.pages_on_node * PAGE_SIZE if kv else 0,
        collective_kernel=coll.kernel if coll else None,
        collective_segments=tuple(a.describe() + ("" if a.complete else " (MISPLACED)")
                                  for a in coll.segment_audits) if coll else (),
        collective_segments_on_node=not coll or not coll.misplaced_segments)


def runtime_stats(reports: Sequence[WorkerReport], *, step_s: Sequence[float] | None,
                  collective_s: float | None, load_s: float | None) -> RuntimeStats:
    """The session's statistics.

    Parameters
    ----------
    reports
        Every worker's report, in worker order.
    step_s
        The decode steps of the last generation (``None``: nothing generated yet).
    collective_s
        Worker 0's collective time during that generation, prefill included (``None``: no
        collective).
    load_s
        How long loading the weights took (``None``: not loaded).
    """
    workers = tuple(worker_stats(i, rep) for i, rep in enumerate(reports))
    on = sum(w.weight_bytes_on_planned_node for w in workers)
    total = sum(w.weight_bytes for w in workers)
    kv_on = sum(w.kv_bytes_on_planned_node for w in workers)
    kv_all = sum(w.kv_bytes for w in workers)
    colls = [rep.collective for rep in reports if rep.collective is not None]
    calls = sum(c.calls for c in colls)
    nbytes = sum(c.bytes_read for c in colls)
    cross = sum(c.cross_node_bytes_read for c in colls)
    steps = len(step_s) if step_s is not None else 0
    decode_s = sum(step_s) if step_s else 0.0
    return RuntimeStats(
        workers=workers,
        weight_local_percentage=100.0 * on / total if total else 0.0,
        kv_local_percentage=100.0 * kv_on / kv_all if kv_all else 0.0,
        collective_calls=calls, collective_bytes=nbytes, collective_cross_node_bytes=cross,
        inter_node_percentage=100.0 * cross / nbytes if nbytes else 0.0,
        collective_s_per_step=(collective_s / (steps + 1))
        if collective_s is not None and step_s is not None else None,
        decode_s_per_step=decode_s / steps if steps else None,
        tokens_per_s=steps / decode_s if steps and decode_s > 0 else None,
        load_s=load_s)


def _within(cpus: str, planned: str) -> bool:
    try:
        return bool(cpus) and set(parse_cpulist(cpus)) <= set(parse_cpulist(planned))
    except ValueError:
        return False
