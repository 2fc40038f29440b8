"""numaplan's worker-side functions, registered in every Disco worker (and in the controller,
where worker 0 runs as a thread).

The controller drives them through Disco (``sess.get_global_func("numaplan.runtime.*")``):

- ``numaplan.runtime.setup(spec_json)``: pin this worker's thread(s) to the plan's
  CPUs, bind its memory policy to its node, pin TVM's thread pool to the same CPUs
  (``runtime.config_threadpool``; TVM otherwise pins to CPUs 0..n-1 whatever the mask), attach
  the shared-memory collective and register ``numaplan.ccl.*`` for the compiled model;
- ``numaplan.runtime.load_params(model_dir, names_json)``: this worker's own shard, loaded by
  this worker into node-bound memory (:mod:`numaplan.runtime.loader`), audited, kept for the VM;
- ``numaplan.runtime.kv_init(vm, spec_json)``: this worker's paged KV cache
  (:class:`~numaplan.runtime.paged_kv.PagedKVModel`, MLC's function ABI);
- ``numaplan.runtime.kv_step(step_json)``: one step (add / remove sequences, prefill, decode),
  run by every worker in lockstep (the model's collectives synchronise them; ``embed``
  broadcasts worker 0's token ids); worker 0 keeps the logits for the controller
  (:func:`take_logits`), which samples the next tokens;
- ``numaplan.runtime.collective_stats()``: the collective's counters;
- ``numaplan.runtime.report()``: what was measured (affinity of every thread read back from
  /proc, memory policy, load audit, collective statistics);
- ``numaplan.runtime.shutdown()``: release the communicator and the weights.

Each takes and returns JSON documents of :mod:`numaplan.runtime.protocol` (a
:class:`~numaplan.runtime.protocol.Reply`). Module state holds one worker per process (a Disco
worker process, or the controller for worker 0); :func:`abort_collective` is how the controller
stops worker 0's collective from another thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
import tvm_ffi

from numaplan.errors import NumaplanError, PlacementError
from numaplan.osnuma import Downgrade, apply_mempolicy, get_affinity, get_mempolicy, set_affinity
from numaplan.osnuma.affinity import current_thread_id, read_thread_affinity
from numaplan.plan.schema import Plan
from numaplan.runtime.ccl.communicator import Communicator
from numaplan.runtime.ccl.spec import CommSpec
from numaplan.runtime.ccl.tvm_functions import register_tvm_functions
from numaplan.runtime.kv_placement import KVMemory, audit_kv, check_kv_placement, create_on_node
from numaplan.runtime.loader import LoadReport, SharedCopies, check_placement, load_worker_params
from numaplan.runtime.paged_kv import PagedKVModel
from numaplan.runtime.protocol import (
    COLLECTIVE_STATS,
    KV_INIT,
    KV_STEP,
    LOAD_PARAMS,
    REPORT,
    SETUP,
    SHUTDOWN,
    CollectiveCounters,
    KVCacheInfo,
    KVCacheSpec,
    KVStep,
    KVStepDone,
    LoadDone,
    SetupReport,
    ThreadReport,
    WorkerReport,
    WorkerSpec,
    reporting,
)
from numaplan.topology import format_cpulist, parse_cpulist

#: TVM's ThreadGroup affinity mode "kSpecifyOneCorePerThread" (threading_backend.h).
ONE_CORE_PER_THREAD = -2


@dataclass
class _State:
    plan: Plan | None = None
    worker_id: int = -1
    spec: WorkerSpec | None = None
    comm: Communicator | None = None
    arena: Any = None
    params: list[Any] = field(default_factory=list)
    load_report: LoadReport | None = None
    setup: SetupReport | None = None
    pool_tids: list[int] = field(default_factory=list)
    kv: PagedKVModel | None = None
    kv_memory: KVMemory | None = None
    logits: np.ndarray | None = None


_STATE = _State()
_LOCK = threading.Lock()


def _worker_id() -> int:
    return int(tvm_ffi.get_global_func("runtime.disco.worker_rank")())


def _task_ids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _in_controller() -> bool:
    return _worker_id() == 0


@tvm_ffi.register_global_func(SETUP, override=True)
@reporting
def setup(spec_json: str) -> SetupReport:
    """Place this worker (see the module docstring); returns what it got."""
    with _LOCK:
        _release()
        spec = WorkerSpec.model_validate_json(spec_json)
        opts = spec.options
        plan = spec.plan()
        wid = _worker_id()
        w = plan.workers[wid]
        cpus = parse_cpulist(w.cpus)
        st = _State(plan=plan, worker_id=wid, spec=spec)
        notes: list[str] = []
        enforce = opts.enforce_placement
        if not enforce:
            notes.append("placement not enforced (plain tensor parallelism)")
        elif wid == 0:
            # A thread of the controller: pin this thread only.
            set_affinity(cpus)
        else:
            # A process of its own: pin every thread it already has (numpy's BLAS threads
            # were started before the plan was known), new ones inherit.
            for tid in sorted(_task_ids()):
                try:
                    os.sched_setaffinity(tid, cpus)
                except OSError as exc:
                    notes.append(f"thread {tid}: {exc.strerror}")
        downgrades: list[Downgrade] = []
        if enforce:
            outcome = apply_mempolicy("bind", [w.mem_node_id], allow_fallback=opts.allow_fallback)
            downgrades += [d for d in [outcome.downgrade(f"memory of worker {wid}")] if d]
        before = _task_ids()
        if enforce:
            tvm.get_global_func("runtime.config_threadpool")(
                ONE_CORE_PER_THREAD, len(cpus), [str(c) for c in cpus])
        else:
            # Same thread count, no pinning (TVM would otherwise pin to CPUs 0..n-1).
            tvm.get_global_func("runtime.config_threadpool")(
                -3, len(cpus), [str(c) for c in sorted(os.sched_getaffinity(0))])
        st.pool_tids = sorted(_task_ids() - before)
        st.comm = _attach_collective(plan, spec, wid)
        if st.comm is not None:
            check_collective_placement(st.comm, wid, strict=opts.strict_placement)
        try:
            mempolicy = get_mempolicy().describe()
        except PlacementError as exc:
            if not opts.allow_fallback or exc.call is None:
                raise
            mempolicy = "unknown"
            downgrades.append(Downgrade.of(exc, f"read the memory policy of worker {wid}",
                                           "reported as unknown"))
        st.setup = SetupReport(
            worker_id=wid, pid=os.getpid(), tid=current_thread_id(),
            node_id=w.node_id, mem_node_id=w.mem_node_id,
            cpus_planned=format_cpulist(cpus), cpus_thread=format_cpulist(get_affinity()),
            mempolicy=mempolicy,
            pool_threads=len(st.pool_tids) or int(tvm.get_global_func("runtime.NumThreads")()),
            notes=tuple(notes), downgrades=tuple(downgrades))
        _STATE.__dict__.update(st.__dict__)
        return st.setup


def _attach_collective(plan: Plan, spec: WorkerSpec, rank: int) -> Communicator | None:
    """Create this rank's communicator and register ``numaplan.ccl.*`` for the VM (a single
    worker's model has no collective)."""
    if plan.request.tensor_parallel_shards == 1:
        return None
    cs = CommSpec.from_plan(plan, spec.namespace, timeout_s=spec.options.collective_timeout_s,
                            allow_placement_fallback=spec.options.allow_fallback)
    comm = Communicator.create(cs, rank)
    register_tvm_functions(comm)
    return comm


def check_collective_placement(comm: Communicator, worker_id: int, *, strict: bool) -> None:
    """In strict mode, refuse collective segments this worker created off their memory node,
    or that could not be audited (move_pages refused under ``allow_fallback``).

    Raises
    ------
    PlacementError
        Naming the segment and where its pages are.
    """
    if not strict:
        return
    stats = comm.stats()
    problems = list(stats.misplaced_segments) + [
        d.describe() for d in stats.downgrades if d.call == "move_pages"]
    if problems:
        comm.close()
        raise PlacementError(f"worker {worker_id}: strict placement refuses "
                             f"{'; '.join(problems)}")


def abort_collective(reason: str) -> None:
    """Abort this process's collective, if it has one: the peers waiting in a call raise
    instead of waiting for a worker that will not come. Safe from any thread; idempotent."""
    comm = _STATE.comm
    if comm is not None:
        with contextlib.suppress(Exception):
            comm.abort(reason)


@tvm_ffi.register_global_func(LOAD_PARAMS, override=True)
@reporting
def load_params(model_dir: str, names_json: str) -> LoadDone:
    """Load this worker's parameters (packed order) into node-bound memory."""
    from numaplan.model import load_workload

    st = _STATE
    assert st.plan is not None and st.spec is not None, f"{SETUP} must run first"
    opts = st.spec.options
    delay = opts.inject_delay_s.get("load", 0.0)
    if delay:
        time.sleep(delay)  # fault injection (tests): a window to kill a worker mid-load
    names = json.loads(names_json)
    workload = load_workload(model_dir)
    arena, arrays, report = load_worker_params(
        model_dir, workload, st.plan, st.worker_id, names,
        allow_fallback=opts.allow_fallback,
        bind_override=opts.inject_misplacement.get(st.worker_id),
        bind=opts.enforce_placement,
        shared=SharedCopies(namespace=st.spec.namespace, timeout_s=opts.collective_timeout_s)
        if opts.share_replicated else None)
    check_placement(report, strict=opts.strict_placement)
    st.arena, st.load_report = arena, report
    # Zero-copy: the VM reads the memory the workers filled on the planned nodes.
    dtypes = {t.name: t.dtype for t in workload.tensors}
    st.params = vm_tensors(arrays, [dtypes[n] for n in names])
    return LoadDone(pieces=report.pieces, bytes=report.bytes_loaded)


def vm_tensors(arrays: list[np.ndarray], dtypes: list[str]) -> list[Any]:
    """TVM tensors over the loaded arrays (no copy), with the parameters' own dtypes.

    numpy has no bfloat16, so the loader holds bfloat16 weights as their uint16 bits; the VM
    must see ``bfloat16`` (a VM function checks its parameters' dtypes), so those tensors are
    re-typed views of the same memory.

    Parameters
    ----------
    arrays
        The loader's arrays, packed order.
    dtypes
        The parameters' dtypes (the model's tensor index), same order.

    Returns
    -------
    list
        ``tvm.runtime.Tensor`` objects; each keeps its array's memory referenced.
    """
    out = []
    for a, dt in zip(arrays, dtypes, strict=True):
        t = tvm.runtime.from_dlpack(a)
        if dt == "bfloat16":
            if a.dtype != np.uint16:
                raise ValueError(f"bfloat16 parameter held as {a.dtype}, expected uint16 bits")
            t = t._create_view(tuple(a.shape), "bfloat16")
        out.append(t)
    return out


@tvm_ffi.register_global_func(KV_INIT, override=True)
@reporting
def kv_init(vm: Any, spec_json: str) -> KVCacheInfo:
    """Create this worker's paged KV cache with its pages bound to the worker's memory node,
    prefaulted and audited (:mod:`numaplan.runtime.kv_placement`); strict mode refuses a cache
    off its node."""
    spec = KVCacheSpec.model_validate_json(spec_json)
    st = _STATE
    if not st.params or st.plan is None or st.spec is None:
        raise NumaplanError("kv_init before load_params")
    opts = st.spec.options
    _STATE.kv = _STATE.kv_memory = None  # a new cache replaces the old one (and its memory)
    model, memory = create_on_node(
        lambda: PagedKVModel(vm, st.params, max_batch=spec.max_batch,
                             max_total_seq_len=spec.max_total_seq_len,
                             prefill_chunk=spec.prefill_chunk),
        st.plan.workers[st.worker_id].mem_node_id, bind=opts.enforce_placement,
        allow_fallback=opts.allow_fallback)
    check_kv_placement(audit_kv(memory, allow_fallback=opts.allow_fallback), st.worker_id,
                       strict=opts.strict_placement)
    _STATE.kv, _STATE.kv_memory = model, memory
    return KVCacheInfo(max_batch=model.max_batch, max_total_seq_len=model.max_total,
                       prefill_chunk=model.prefill_chunk, free_tokens=model.free_tokens,
                       context_window=model.context_window)


@tvm_ffi.register_global_func(KV_STEP, override=True)
@reporting
def kv_step(step_json: str) -> KVStepDone:
    """Run one step on this worker's cache, in lockstep with the others (the model's
    collectives synchronise them); worker 0 keeps the logits for the controller."""
    step = KVStep.model_validate_json(step_json)
    model = _STATE.kv
    if model is None:
        raise NumaplanError("kv_step before kv_init")
    t0 = time.perf_counter()
    logits = None
    if step.op == "add":
        for sid in step.seq_ids:
            model.add_sequence(sid)
    elif step.op == "remove":
        for sid in step.seq_ids:
            model.remove_sequence(sid)
    elif step.op == "popn":
        model.popn(step.seq_ids[0], step.n)
    elif step.op == "clear":
        model.clear()
    elif step.op == "prefill":
        logits = model.prefill(step.seq_ids, [list(t) for t in step.tokens])
    else:
        logits = model.decode(step.seq_ids, [int(t) for t in step.tokens])
    if logits is not None and _in_controller():
        _STATE.logits = logits
    return KVStepDone(lengths={sid: model.lengths[sid] for sid in step.seq_ids
                               if sid in model.lengths},
                      seconds=time.perf_counter() - t0)


def take_logits() -> np.ndarray:
    """The logits of worker 0's last prefill or decode step (the controller runs worker 0 as
    one of its threads; this hands them over without a copy through the session)."""
    logits, _STATE.logits = _STATE.logits, None
    if logits is None:
        raise NumaplanError("no logits: the last step was not a prefill or decode")
    return logits


@tvm_ffi.register_global_func(COLLECTIVE_STATS, override=True)
@reporting
def collective_stats() -> CollectiveCounters:
    """This worker's collective counters (the controller takes differences)."""
    comm = _STATE.comm
    if comm is None:
        return CollectiveCounters()
    return CollectiveCounters(counters={k: float(v) for k, v in comm.stats().model_dump().items()
                                        if isinstance(v, int | float)
                                        and not isinstance(v, bool)})


@tvm_ffi.register_global_func(REPORT, override=True)
@reporting
def report() -> WorkerReport:
    """What this worker measured about itself."""
    st = _STATE
    if st.setup is None:
        raise NumaplanError(f"{REPORT}: the worker is not set up")
    tids = [st.setup.tid, *st.pool_tids] if _in_controller() else sorted(_task_ids())
    threads = []
    for tid in tids:
        try:
            a = read_thread_affinity(tid=tid)
            threads.append(ThreadReport(tid=tid, name=a.name,
                                        cpus=format_cpulist(a.cpus_allowed)))
        except Exception as exc:  # a thread can exit between listing and reading
            threads.append(ThreadReport(tid=tid, error=str(exc)))
    return WorkerReport(setup=st.setup, threads=tuple(threads), load=st.load_report,
                        collective=st.comm.stats() if st.comm is not None else None,
                        kv=audit_kv(st.kv_memory, allow_fallback=st.spec.options.allow_fallback)
                        if st.kv_memory is not None and st.spec is not None else None)


@tvm_ffi.register_global_func(SHUTDOWN, override=True)
@reporting
def shutdown() -> int:
    """Release this worker's communicator and weights (the controller unlinks shared memory)."""
    with _LOCK:
        _release()
    return 0


def _release() -> None:
    st = _STATE
    st.kv = None  # the cache and its VM before the weights they reference
    st.logits = None
    st.params = []
    if st.comm is not None:
        try:
            st.comm.close()
        except Exception:  # closing must not mask the original error
            pass
    if st.arena is not None:
        try:
            st.arena.close()
        except Exception:  # a view may still hold it; the process exit frees it
            pass
    _STATE.__dict__.update(_State().__dict__)
