"""``numaplan probe``: measure the read bandwidth and latency matrices of the running machine.

For every CPU node i (with usable CPUs) and memory node j (allowed, with memory), following
docs/background.md 4 (method and pitfalls):

1. **Placement.** Two anonymous buffers per memory node, each bound to node j with
   ``mbind(MPOL_BIND, MPOL_MF_STRICT | MPOL_MF_MOVE)`` *before* the first touch (mbind(2)), then
   written in full. Once a range is bound, its policy and not the writing thread decides where
   a page goes, so the buffers are written once per memory node, in parallel, by the pinned
   threads of a node *other than j* when there is one: 100% of the pages on j then proves that
   the binding, not first touch, placed them. Every cell is audited with move_pages(2) after it
   is measured; a cell whose pages are not all on j is still reported, with the audit and a
   loud warning.
2. **Bandwidth.** One thread per physical core of node i (inside the process's allowed CPUs),
   each pinned to its core, streams its slice of a buffer >= 4x the last-level cache with a
   vectorised read-sum loop (C through ctypes, which releases the GIL). A repeat is timed from
   the first thread's start to the last thread's end, between two barriers. After a warm-up
   (CPU frequency ramp), the **best** of the repeats is reported (STREAM's convention); the
   median goes into ``params``.
3. **Latency.** One pinned thread of node i follows a random cyclic permutation of 64-byte
   slots over a buffer much larger than the LLC (dependent loads defeat the prefetchers); the
   **median** ns per load over the repeats is reported.
4. **Familiar number.** On each CPU node a plain ``np.copyto`` between two node-local buffers,
   with the same pinned threads, counted as STREAM does (bytes read + bytes written) and as the
   read-only equivalent: ``numpy_copy_gbps_node<i>`` and ``numpy_copy_read_gbps_node<i>``.
   numpy copies through memcpy, and glibc's memcpy switches to non-temporal stores (no
   write-allocate read) once a copy exceeds a threshold tied to the cache size, so the figure
   jumps with the per-thread slice size; compare it at the default sizes.

Without a C compiler, numpy streams the buffer (``np.add.reduce`` releases the GIL) and a Python
loop chases the pointers; that latency is an upper bound and ``params`` says so. The calling
thread's CPU affinity and memory policy are restored afterwards: the probe runs inside the CLI.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from typing import Literal, TextIO

import numpy as np

from numaplan._base import Frozen
from numaplan.cost.model import CellAudit, CostModel, build_cost_model
from numaplan.errors import PlacementError
from numaplan.osnuma.affinity import get_affinity
from numaplan.osnuma.audit import PageAudit, huge_page_bytes, numa_maps_audit
from numaplan.osnuma.backend import NumaBackend, get_backend
from numaplan.osnuma.buffer import NodeBuffer
from numaplan.osnuma.kernels import KernelChoice, MemoryKernels, load_kernels, u64_view
from numaplan.osnuma.mempolicy import MemPolicy, get_mempolicy, restore_mempolicy
from numaplan.osnuma.system import (
    PAGE_SIZE,
    allowed_cpus,
    allowed_memory_nodes,
    cpu_jiffies,
    llc_bytes,
    load_average,
    node_free_bytes,
    numa_balancing,
    thp_mode,
)
from numaplan.osnuma.threads import PinnedThreads
from numaplan.topology import Topology

log = logging.getLogger(__name__)

MIB = 1 << 20
#: LLC size assumed for sizing when sysfs does not publish it (a large server L3).
ASSUMED_LLC_BYTES = 32 * MIB
_BARRIER_TIMEOUT_S = 120.0


class ProbeSettings(Frozen):
    """What a probe measures and how, as asked; unset fields follow the machine.

    Attributes
    ----------
    quick
        Smaller buffers (still >= 4x LLC) and fewer repeats: a few seconds per cell.
    buffer_bytes
        Bandwidth buffer size (default max(16 x LLC, 512 MiB); quick max(4 x LLC, 128 MiB));
        also the latency buffer size unless ``latency_buffer_bytes`` is given.
    latency_buffer_bytes
        Latency buffer size (default max(8 x LLC, 256 MiB); quick as the bandwidth buffer).
    threads_per_node
        Reader threads per CPU node; default one per physical core of the node.
    repeats
        Timed repeats for both bandwidth and latency (default 10 / 5; quick 5 / 3).
    warmup_s
        Streaming time before the timed repeats of each cell (default 1 s, quick 0.25 s).
    latency_loads
        Dependent loads per latency repeat (default 2M, quick 300k, /4 for the Python chase).
    kernel
        ``auto`` (C if a compiler works, else numpy), ``c`` or ``numpy``.
    huge_pages
        ``madvise(MADV_HUGEPAGE)`` the buffers; default when THP is ``always`` or ``madvise``.
    allow_fallback
        When mbind is refused (containers without CAP_SYS_NICE), place pages by first touch
        from a thread of the memory node instead of failing; the audit shows the result.
    numpy_copy
        Also measure the ``np.copyto`` figure per CPU node.
    seed
        Seed of the latency chains.
    """

    quick: bool = False
    buffer_bytes: int | None = None
    latency_buffer_bytes: int | None = None
    threads_per_node: int | None = None
    repeats: int | None = None
    warmup_s: float | None = None
    latency_loads: int | None = None
    kernel: KernelChoice = "auto"
    huge_pages: bool | None = None
    allow_fallback: bool = False
    numpy_copy: bool = True
    seed: int = 0


class ResolvedProbeSettings(Frozen):
    """The sizes and repeats of one probe run, every default applied (recorded in ``params``)."""

    quick: bool
    buffer_bytes: int
    latency_buffer_bytes: int
    bw_repeats: int
    lat_repeats: int
    warmup_s: float
    latency_loads: int
    huge_pages: bool


class ProbeEvent(Frozen):
    """Progress of a probe, for a display.

    ``stage`` is ``start`` when a cell begins and ``done`` when its figures are known.
    ``warning`` is set when the cell's pages were not all on the memory node (or placement had to
    fall back): the figure then mixes nodes and must not be trusted as is.

    Cells run memory node by memory node (each node's buffers are placed and written once and
    read by every CPU node in turn), so ``cell_index`` counts in that order.
    """

    cell_index: int
    cell_total: int
    reader_node_id: int
    mem_node_id: int
    stage: Literal["start", "done"]
    threads: int = 0
    read_bw_gbps: float | None = None
    lat_ns: float | None = None
    lat_upper_bound: bool = False
    audit: CellAudit | None = None
    warning: str | None = None


ProgressCallback = Callable[[ProbeEvent], None]


def format_event(event: ProbeEvent) -> str:
    """One line for a finished cell, e.g. ``[1/4] CPUs of node 0 -> memory of node 1: 12.1 GB/s
    read, 190 ns, pages on node 1: 100.0% (131072/131072)``; a warning follows on a second line.
    """
    head = (f"[{event.cell_index}/{event.cell_total}] CPUs of node {event.reader_node_id} -> "
            f"memory of node {event.mem_node_id}")
    if event.stage == "start":
        return f"{head}: measuring with {event.threads} threads..."
    parts = []
    if event.read_bw_gbps is not None:
        parts.append(f"{event.read_bw_gbps:.1f} GB/s read")
    if event.lat_ns is not None:
        bound = " (upper bound)" if event.lat_upper_bound else ""
        parts.append(f"{event.lat_ns:.0f} ns{bound}")
    a = event.audit
    if a is not None:
        parts.append(f"pages on node {a.mem_node_id}: {100 * a.on_target_fraction:.1f}% "
                     f"({a.pages_on_target}/{a.pages_checked})")
    line = f"{head}: {', '.join(parts)}"
    if event.warning:
        line += f"\n      WARNING: {event.warning}"
    return line


def print_progress(event: ProbeEvent, stream: TextIO | None = None) -> None:
    """Default progress display: one line per finished cell on stderr."""
    if event.stage == "done":
        print(format_event(event), file=stream or sys.stderr, flush=True)


# -- settings -------------------------------------------------------------------------------------
def resolve_probe_settings(settings: ProbeSettings, *, llc: int | None = None,
                           python_chase: bool = False) -> ResolvedProbeSettings:
    """Apply the defaults of :class:`ProbeSettings` for a machine.

    Defaults (LLC = last-level cache): bandwidth buffer max(16 x LLC, 512 MiB), latency buffer
    max(8 x LLC, 256 MiB), 10 bandwidth / 5 latency repeats, 1 s warm-up, 2M loads per latency
    run; ``quick``: max(4 x LLC, 128 MiB) for both, 5 / 3 repeats, 0.25 s warm-up, 300k loads.
    With the Python chase the load counts are divided by 4.

    Parameters
    ----------
    settings
        What was asked.
    llc
        Last-level cache bytes (default :data:`ASSUMED_LLC_BYTES`).
    python_chase
        Whether latency is measured by the Python loop (no C compiler).

    Raises
    ------
    PlacementError
        A buffer too small to measure memory, or fewer than one repeat.
    """
    llc = llc or ASSUMED_LLC_BYTES
    if settings.quick:
        bw = max(4 * llc, 128 * MIB)
        lat = bw
        bw_rep, lat_rep, warm, loads = 5, 3, 0.25, 300_000
    else:
        bw = max(16 * llc, 512 * MIB)
        lat = max(8 * llc, 256 * MIB)
        bw_rep, lat_rep, warm, loads = 10, 5, 1.0, 2_000_000
    if python_chase:
        loads //= 4
    if settings.buffer_bytes is not None:
        bw = settings.buffer_bytes
        lat = settings.buffer_bytes
    if settings.latency_buffer_bytes is not None:
        lat = settings.latency_buffer_bytes
    for name, v in (("buffer_bytes", bw), ("latency_buffer_bytes", lat)):
        if v < 64 * 1024:
            raise PlacementError(f"{name} of {v} bytes is too small to measure memory; use at "
                                 f"least 4x the last-level cache ({llc >> 20} MiB)")
    if settings.repeats is not None:
        if settings.repeats < 1:
            raise PlacementError(f"repeats must be at least 1, got {settings.repeats}")
        bw_rep = lat_rep = settings.repeats
    huge_pages = settings.huge_pages
    if huge_pages is None:
        huge_pages = thp_mode() in ("always", "madvise")
    return ResolvedProbeSettings(
        quick=settings.quick, buffer_bytes=bw, latency_buffer_bytes=lat, bw_repeats=bw_rep,
        lat_repeats=lat_rep, warmup_s=warm if settings.warmup_s is None else settings.warmup_s,
        latency_loads=settings.latency_loads or loads, huge_pages=huge_pages)


def reader_cpus(topology: Topology, node_id: int, threads: int | None = None,
                allowed: set[int] | None = None) -> tuple[int, ...]:
    """The CPUs the probe pins its threads of ``node_id`` to.

    One per physical core (the core's first allowed logical CPU), then SMT siblings if more
    threads are asked for than there are cores; never more than the allowed CPUs.
    """
    allowed = set(allowed_cpus()) if allowed is None else allowed
    cores = [tuple(c for c in core if c in allowed)
             for core in topology.physical_cores(node_id)]
    cores = [c for c in cores if c]
    first = [c[0] for c in cores]
    siblings = [c for core in cores for c in core[1:]]
    n = len(first) if threads is None else threads
    return tuple((first + siblings)[:max(n, 0)])


# -- measurements ----------------------------------------------------------------------------------
def _slices(address: int, nbytes: int, parts: int) -> list[tuple[int, int]]:
    # Page-aligned slices: no two threads share a page, and the C loop's 64-byte blocks align.
    per = max(PAGE_SIZE, nbytes // parts // PAGE_SIZE * PAGE_SIZE)
    out = []
    for k in range(parts):
        lo = min(k * per, nbytes)
        hi = nbytes if k == parts - 1 else min((k + 1) * per, nbytes)
        out.append((address + lo, hi - lo))
    return out


def _fill(pool: PinnedThreads, kern: MemoryKernels, buf: NodeBuffer) -> None:
    parts = _slices(buf.address, buf.nbytes, len(pool))
    pool.run(lambda k: kern.fill(parts[k][0], parts[k][1], (parts[k][0] - buf.address) // 8))


def _timed_parallel(pool: PinnedThreads, work: Callable[[int], object]) -> int:
    """Run ``work(k)`` on every thread between barriers; ns from first start to last end."""
    barrier = threading.Barrier(len(pool), timeout=_BARRIER_TIMEOUT_S)

    def job(k: int) -> tuple[int, int]:
        barrier.wait()
        t0 = time.perf_counter_ns()
        work(k)
        return t0, time.perf_counter_ns()

    spans = pool.run(job)
    return max(1, max(e for _, e in spans) - min(s for s, _ in spans))


def _repeat(pool: PinnedThreads, work: Callable[[int], object], warmup_s: float,
            repeats: int) -> list[int]:
    end = time.perf_counter() + warmup_s
    _timed_parallel(pool, work)  # at least one warm-up pass
    while time.perf_counter() < end:
        _timed_parallel(pool, work)
    return [_timed_parallel(pool, work) for _ in range(repeats)]


def measure_read_bandwidth(pool: PinnedThreads, kern: MemoryKernels, address: int,
                           nbytes: int, *, warmup_s: float, repeats: int) -> tuple[float, float]:
    """Sustained read bandwidth of ``pool`` streaming ``[address, address + nbytes)``.

    Returns
    -------
    (best, median) in GB/s (1e9 bytes/s).
    """
    parts = _slices(address, nbytes, len(pool))
    times = _repeat(pool, lambda k: kern.read(*parts[k]), warmup_s, repeats)
    rates = [nbytes / t for t in times]  # bytes per ns == GB/s
    return max(rates), statistics.median(rates)


def measure_latency(pool: PinnedThreads, kern: MemoryKernels, start: int, buf: NodeBuffer, *,
                    loads: int, repeats: int) -> float:
    """Median ns per dependent load of thread 0 of ``pool`` following the chain at ``start``."""
    def run(n: int) -> Callable[[int], int]:
        def job(_k: int) -> int:
            t0 = time.perf_counter_ns()
            kern.chase(start, n, address=buf.address, nbytes=buf.nbytes)
            return time.perf_counter_ns() - t0
        return job

    pool.run_one(0, run(max(1, loads // 4)))  # warm-up: TLB, frequency
    return statistics.median(pool.run_one(0, run(loads)) / loads for _ in range(repeats))


def measure_numpy_copy(pool: PinnedThreads, src: NodeBuffer, dst: NodeBuffer, *,
                       warmup_s: float, repeats: int) -> tuple[float, float]:
    """``np.copyto`` of ``src`` into ``dst`` by every thread of ``pool`` on its slice.

    Returns
    -------
    (copy, read) in GB/s: STREAM counting (bytes read + bytes written, write-allocate traffic
    not counted) and the read-only equivalent (bytes read), for the best repeat.
    """
    n = min(src.nbytes, dst.nbytes)
    s_parts = _slices(src.address, n, len(pool))
    d_parts = _slices(dst.address, n, len(pool))
    views = [(u64_view(*d), u64_view(*s)) for d, s in zip(d_parts, s_parts, strict=True)]
    times = _repeat(pool, lambda k: np.copyto(*views[k]), warmup_s, repeats)
    best = min(times)
    return 2 * n / best, n / best


# -- the probe -------------------------------------------------------------------------------------
def probe(topology: Topology, settings: ProbeSettings | None = None, *,
          progress: ProgressCallback | None = None,
          backend: NumaBackend | str | None = None) -> CostModel:
    """Measure the read bandwidth and latency from every CPU node to every memory node.

    Parameters
    ----------
    topology
        The running machine (``read_sysfs("/")``); only its usable CPU nodes and allowed memory
        nodes are measured, other cells are ``None``.
    settings
        What to measure and how (buffer sizes, repeats, threads, kernel, fallbacks); default
        :class:`ProbeSettings` ``()``: full-size buffers, defaults that follow the machine.
    progress
        Called with a :class:`ProbeEvent` when each cell starts and ends; see
        :func:`print_progress`.
    backend
        NUMA call backend (``libnuma`` / ``syscall``, or an instance); default auto.

    Returns
    -------
    CostModel
        ``method="probe"``, matrices over ``topology.node_ids``, one :class:`CellAudit` per
        measured cell, and ``params`` recording how the numbers were obtained.

    Raises
    ------
    PlacementError
        When there is nothing to measure, a node lacks the free memory for the buffers, or the
        OS refuses pinning or binding (and ``settings.allow_fallback`` is off).

    Examples
    --------
    >>> from numaplan.topology import read_sysfs                    # doctest: +SKIP
    >>> cost = probe(read_sysfs("/"), ProbeSettings(quick=True))     # doctest: +SKIP
    """
    settings = settings or ProbeSettings()
    t_begin = time.perf_counter()
    load_before, jiffies_before = load_average(), cpu_jiffies()
    be = get_backend(backend)
    kern = load_kernels(settings.kernel)
    llc = llc_bytes()
    cfg = resolve_probe_settings(settings, llc=llc, python_chase=kern.latency_upper_bound)
    readers, mems = _cells(topology, settings.threads_per_node)
    _check_free_memory(mems, max(cfg.buffer_bytes + cfg.latency_buffer_bytes,
                                 2 * cfg.buffer_bytes if settings.numpy_copy else 0))
    run = _Run(cfg=cfg, kern=kern, be=be, allow_fallback=settings.allow_fallback)

    saved_affinity = get_affinity(0)
    saved_policy: MemPolicy | None = None
    with suppress(PlacementError):  # unreadable policy (seccomp): nothing to restore
        saved_policy = get_mempolicy(backend=be)
    try:
        with ExitStack() as stack:
            pools = {i: stack.enter_context(PinnedThreads(cpus, name=f"np-probe-n{i}"))
                     for i, cpus in readers.items()}
            _measure_cells(run, pools, mems, settings.seed, progress)
            if settings.numpy_copy:
                _measure_copies(run, topology, pools, mems)
    finally:
        _restore(saved_affinity, saved_policy, be)

    params = _params(run, llc, readers, time.perf_counter() - t_begin)
    params.update(_load_context(load_before, jiffies_before))
    ids = topology.node_ids
    return build_cost_model(None, node_ids=ids, read_bw_gbps=_matrix(run.bw, ids),
                            lat_ns=_matrix(run.lat, ids), method="probe", params=params,
                            topology_fingerprint=topology.fingerprint(),
                            audit=tuple(run.audits))


@dataclass
class _Run:
    """How one probe measures (resolved settings, kernels, backend) and what it found so far."""

    cfg: ResolvedProbeSettings
    kern: MemoryKernels
    be: NumaBackend
    allow_fallback: bool
    bw: dict[tuple[int, int], float] = field(default_factory=dict)
    bw_median: dict[tuple[int, int], float] = field(default_factory=dict)
    lat: dict[tuple[int, int], float] = field(default_factory=dict)
    audits: list[CellAudit] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    copy_figures: dict[int, tuple[float, float, int]] = field(default_factory=dict)
    placements: set[str] = field(default_factory=set)
    thp_fractions: list[float] = field(default_factory=list)


def _cells(topology: Topology, threads_per_node: int | None
           ) -> tuple[dict[int, tuple[int, ...]], list[int]]:
    """The reader CPUs of every CPU node the process may use, and the allowed memory nodes."""
    live_cpus = set(allowed_cpus())
    live_mems = set(allowed_memory_nodes())
    readers = {i: reader_cpus(topology, i, threads_per_node, live_cpus)
               for i in topology.cpu_node_ids()}
    readers = {i: cpus for i, cpus in readers.items() if cpus}
    mems = [j for j in topology.memory_node_ids() if not live_mems or j in live_mems]
    if not readers or not mems:
        raise PlacementError(f"nothing to probe: CPU nodes with allowed CPUs {sorted(readers)}, "
                             f"allowed memory nodes {mems}; is this topology the running "
                             f"machine's (read_sysfs('/'))?")
    return readers, mems


def _measure_cells(run: _Run, pools: dict[int, PinnedThreads], mems: list[int], seed: int,
                   progress: ProgressCallback | None) -> None:
    """Every (CPU node, memory node) cell, memory node by memory node: each node's buffers are
    placed and written once, then read by every CPU node in turn."""
    cfg, kern = run.cfg, run.kern
    total = len(pools) * len(mems)
    cell = 0
    for j in mems:
        with NodeBuffer(cfg.buffer_bytes, huge_pages=cfg.huge_pages) as bw_buf, \
                NodeBuffer(cfg.latency_buffer_bytes, huge_pages=cfg.huge_pages) as lat_buf:
            how = _place(j, (bw_buf, lat_buf), pools, kern, run.be, run.allow_fallback)
            run.placements.add(how)
            start = kern.build_chain(lat_buf.address, lat_buf.nbytes, seed + j)
            run.thp_fractions.extend(_thp_fraction(b) for b in (bw_buf, lat_buf)
                                     if cfg.huge_pages)
            for i, pool in pools.items():
                cell += 1
                if progress:
                    progress(ProbeEvent(cell_index=cell, cell_total=total, reader_node_id=i,
                                        mem_node_id=j, stage="start", threads=len(pool)))
                done = _measure_cell(run, i, j, pool, (bw_buf, lat_buf), start, how,
                                     position=(cell, total))
                if progress:
                    progress(done)


def _measure_cell(run: _Run, i: int, j: int, pool: PinnedThreads,
                  bufs: tuple[NodeBuffer, NodeBuffer], start: int, how: str, *,
                  position: tuple[int, int]) -> ProbeEvent:
    """Bandwidth, latency and audit of CPU node ``i`` reading memory node ``j`` (``bufs``: the
    bandwidth and the latency buffer, placed by ``how``); the cell's ``done`` event."""
    cfg, kern = run.cfg, run.kern
    bw_buf, lat_buf = bufs
    best, med = measure_read_bandwidth(pool, kern, bw_buf.address, bw_buf.nbytes,
                                       warmup_s=cfg.warmup_s, repeats=cfg.bw_repeats)
    ns = measure_latency(pool, kern, start, lat_buf, loads=cfg.latency_loads,
                         repeats=cfg.lat_repeats)
    # Audit after measuring: it shows where the pages were when the cell ended, so a migration
    # during the measurement is caught too.
    audit, note = _audit_buffers(i, j, bufs, run.be, run.allow_fallback)
    warning = _audit_warning(audit, how, note)
    if warning:
        run.warnings.append(f"node {i} -> {j}: {warning}")
        log.warning("probe cell CPUs of node %d -> memory of node %d: %s", i, j, warning)
    run.bw[i, j], run.bw_median[i, j], run.lat[i, j] = best, med, ns
    run.audits.append(audit)
    return ProbeEvent(cell_index=position[0], cell_total=position[1], reader_node_id=i,
                      mem_node_id=j, stage="done", threads=len(pool), read_bw_gbps=best, lat_ns=ns,
                      lat_upper_bound=kern.latency_upper_bound, audit=audit, warning=warning)


def _measure_copies(run: _Run, topology: Topology, pools: dict[int, PinnedThreads],
                    mems: list[int]) -> None:
    """The ``np.copyto`` figure of every CPU node, on its nearest memory node."""
    cfg = run.cfg
    for i, pool in pools.items():
        j = _nearest_memory(topology, i, mems)
        with NodeBuffer(cfg.buffer_bytes, huge_pages=cfg.huge_pages) as src, \
                NodeBuffer(cfg.buffer_bytes, huge_pages=cfg.huge_pages) as dst:
            run.placements.add(_place(j, (src, dst), {i: pool}, run.kern, run.be,
                                      run.allow_fallback, prefer_remote_filler=False))
            copy, read = measure_numpy_copy(pool, src, dst, warmup_s=cfg.warmup_s,
                                            repeats=cfg.bw_repeats)
        run.copy_figures[i] = (copy, read, j)


def _matrix(values: dict[tuple[int, int], float], ids: tuple[int, ...]
            ) -> tuple[tuple[float | None, ...], ...]:
    return tuple(tuple(values.get((r, m)) for m in ids) for r in ids)


def _load_context(load_before: float | None, jiffies_before: tuple[int, int] | None
                  ) -> dict[str, str | float | int | bool]:
    """Context for judging noise: other load when the probe started, hypervisor steal during
    it."""
    out: dict[str, str | float | int | bool] = {}
    if load_before is not None:
        out["loadavg_1min"] = load_before
        ncpu = os.cpu_count() or 1
        if load_before > 0.5 * ncpu:
            out["load_warning"] = (f"1-min load average {load_before:g} on {ncpu} CPUs when "
                                   f"the probe started: other work competes for the cores "
                                   f"and memory bandwidth, figures may be low")
    jiffies_after = cpu_jiffies()
    if jiffies_before and jiffies_after and jiffies_after[0] > jiffies_before[0]:
        out["cpu_steal_pct"] = round(100 * (jiffies_after[1] - jiffies_before[1])
                                     / (jiffies_after[0] - jiffies_before[0]), 2)
    return out


def _check_free_memory(mems: list[int], need: int) -> None:
    # A BIND policy never spills: a node that runs out invokes the OOM killer (mbind(2) NOTES),
    # so refuse up front rather than take the process down.
    for j in mems:
        free = node_free_bytes(j)
        if free is not None and need > 0.9 * free:
            raise PlacementError(f"memory node {j} has {free >> 20} MiB free but the probe "
                                 f"needs {need >> 20} MiB there; pass a smaller buffer_bytes "
                                 f"(--buffer-mib)")


def _place(node: int, bufs: tuple[NodeBuffer, ...], pools: dict[int, PinnedThreads],
           kern: MemoryKernels, be: NumaBackend, allow_fallback: bool, *,
           prefer_remote_filler: bool = True) -> str:
    """Bind ``bufs`` to ``node`` and write them; return ``mbind`` or the fallback used."""
    how = "mbind"
    for b in bufs:
        try:
            outcome = b.bind(node, allow_fallback=allow_fallback, backend=be)
        except PlacementError as exc:
            raise PlacementError(f"{exc} (the probe binds its buffers to each memory node; "
                                 f"pass allow_fallback to place them by first touch instead)"
                                 ) from None
        if outcome.achieved is None:
            how = "first-touch"
        elif outcome.degraded and how == "mbind":
            how = outcome.achieved.mode
    if how == "mbind" and prefer_remote_filler:
        # The policy decides, so write from another node when possible: a 100% audit then
        # proves the binding worked rather than first touch.
        filler = next((p for i, p in pools.items() if i != node), pools.get(node))
    else:
        filler = pools.get(node) or next(iter(pools.values()))
    for b in bufs:
        _fill(filler or next(iter(pools.values())), kern, b)
    return how


def _thp_fraction(buf: NodeBuffer) -> float:
    huge = huge_page_bytes(buf.address, buf.nbytes)
    return 0.0 if huge is None else min(1.0, huge / buf.nbytes)


def _audit_buffers(reader: int, mem: int, bufs: tuple[NodeBuffer, ...], be: NumaBackend,
                   allow_fallback: bool) -> tuple[CellAudit, str | None]:
    """Audit with move_pages(2); if that is refused and fallback is allowed, with numa_maps."""
    try:
        return _cell_audit(reader, mem, [b.audit(mem, backend=be) for b in bufs]), None
    except PlacementError as exc:
        if not allow_fallback:
            raise
        first = str(exc)
    try:
        parts = [numa_maps_audit(b.address, b.nbytes, mem) for b in bufs]
        return _cell_audit(reader, mem, parts), f"move_pages refused ({first}); audited with " \
                                                f"numa_maps (per mapping)"
    except PlacementError as exc:
        empty = CellAudit(reader_node_id=reader, mem_node_id=mem, pages_checked=0,
                          pages_on_target=0, nodes_seen=())
        return empty, f"pages could not be audited ({first}; {exc})"


def _cell_audit(reader: int, mem: int, parts: list[PageAudit]) -> CellAudit:
    seen = sorted({n for a in parts for n in a.nodes_seen})
    return CellAudit(reader_node_id=reader, mem_node_id=mem,
                     pages_checked=sum(a.pages_checked for a in parts),
                     pages_on_target=sum(a.pages_on_target for a in parts),
                     nodes_seen=tuple(seen))


def _audit_warning(audit: CellAudit, how: str, note: str | None = None) -> str | None:
    notes = [note] if note else []
    if audit.pages_checked and audit.pages_on_target != audit.pages_checked:
        notes.append(f"only {100 * audit.on_target_fraction:.1f}% of the pages are on node "
                     f"{audit.mem_node_id} ({audit.pages_on_target}/{audit.pages_checked}, nodes "
                     f"seen {list(audit.nodes_seen)}): this figure mixes nodes")
    if how != "mbind":
        notes.append(f"mbind was refused; pages were placed by {how}")
    return "; ".join(notes) or None


def _nearest_memory(topology: Topology, node: int, mems: list[int]) -> int:
    if node in mems:
        return node
    return min(mems, key=lambda j: (topology.distance(node, j), j))


def _restore(affinity: tuple[int, ...], policy: MemPolicy | None, be: NumaBackend) -> None:
    if get_affinity(0) != affinity:
        os.sched_setaffinity(0, affinity)
    if policy is not None:
        with suppress(PlacementError):
            if get_mempolicy(backend=be) != policy:
                restore_mempolicy(policy, backend=be)


def _params(run: _Run, llc: int | None, readers: dict[int, tuple[int, ...]],
            duration_s: float) -> dict[str, str | float | int | bool]:
    cfg, kern, be = run.cfg, run.kern, run.be
    placements, thp_fractions, warnings = run.placements, run.thp_fractions, run.warnings
    bw_median, copy_figures = run.bw_median, run.copy_figures
    threads = {len(c) for c in readers.values()}
    p: dict[str, str | float | int | bool] = {
        "quick": cfg.quick,
        "buffer_bytes": cfg.buffer_bytes,
        "latency_buffer_bytes": cfg.latency_buffer_bytes,
        "threads_per_node": (threads.pop() if len(threads) == 1 else
                             ",".join(f"{i}:{len(c)}" for i, c in sorted(readers.items()))),
        "repeats": cfg.bw_repeats,
        "latency_repeats": cfg.lat_repeats,
        "latency_loads": cfg.latency_loads,
        "warmup_s": cfg.warmup_s,
        "bw_statistic": f"best of {cfg.bw_repeats} after {cfg.warmup_s:g} s warm-up",
        "lat_statistic": f"median of {cfg.lat_repeats}",
        "kernel": kern.kind,
        "backend": be.name,
        "placement": ",".join(sorted(placements)),
        "thp": cfg.huge_pages and bool(thp_fractions) and max(thp_fractions) > 0,
        "thp_mode": thp_mode() or "unknown",
        "numa_balancing": _numa_balancing_param(),
        "llc_bytes": llc if llc is not None else "unknown",
        "audit_incomplete_cells": len(warnings),
        "duration_s": round(duration_s, 2),
    }
    if thp_fractions:
        p["thp_fraction"] = round(min(thp_fractions), 3)
    if kern.latency_upper_bound:
        p["lat_upper_bound"] = True
        p["kernel_note"] = (f"{kern.note}; latency from a Python loop is an upper bound"
                            if kern.note else "latency from a Python loop is an upper bound")
    size_floor = 4 * (llc or ASSUMED_LLC_BYTES)
    small = [f"{name} {v >> 20} MiB" for name, v in
             (("bandwidth buffer", cfg.buffer_bytes), ("latency buffer", cfg.latency_buffer_bytes))
             if v < size_floor]
    if small:
        p["size_warning"] = (f"{' and '.join(small)} below 4x the LLC ({size_floor >> 20} MiB): "
                             f"cache-inflated figures")
    for (i, j), v in sorted(bw_median.items()):
        p[f"bw_median_gbps_n{i}_m{j}"] = round(v, 3)
    for i, (copy, read, j) in sorted(copy_figures.items()):
        p[f"numpy_copy_gbps_node{i}"] = round(copy, 3)
        p[f"numpy_copy_read_gbps_node{i}"] = round(read, 3)
        if j != i:
            p[f"numpy_copy_mem_node{i}"] = j
    if warnings:
        p["warning"] = " | ".join(warnings)
    return p


def _numa_balancing_param() -> int | str:
    value = numa_balancing()
    return "absent" if value is None else value


__all__ = [
    "ProbeEvent",
    "ProbeSettings",
    "ResolvedProbeSettings",
    "format_event",
    "measure_latency",
    "measure_numpy_copy",
    "measure_read_bandwidth",
    "print_progress",
    "probe",
    "reader_cpus",
    "resolve_probe_settings",
]
