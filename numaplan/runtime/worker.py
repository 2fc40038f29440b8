"""numaplan's worker-side functions, registered in every Disco worker (and in the controller,
where worker 0 runs as a thread).

The controller drives them through Disco (``sess.get_global_func("numaplan.runtime.*")``):

- ``numaplan.runtime.setup(spec_json)``: pin this worker's thread(s) to the plan's
  CPUs, bind its memory policy to its node, pin TVM's thread pool to the same CPUs
  (``runtime.config_threadpool``; TVM otherwise pins to CPUs 0..n-1 whatever the mask), attach
  the shared-memory collective and register ``numaplan.ccl.*`` for the compiled model;
- ``numaplan.runtime.load_params(model_dir, names_json)``: this worker's own shard, loaded by
  this worker into node-bound memory (:mod:`numaplan.runtime.loader`), audited, kept for the VM;
- ``numaplan.runtime.generate(vm, prompt, max_new, max_seq, want_logits)``: greedy decoding run
  inside every worker in lockstep (the collectives synchronise them, and the logits after the
  final all-reduce are identical on every worker, so each takes the same argmax);
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

from numaplan.errors import NumaplanError
from numaplan.osnuma import apply_mempolicy, get_affinity, get_mempolicy, set_affinity
from numaplan.osnuma.affinity import current_thread_id, read_thread_affinity
from numaplan.plan.schema import Plan
from numaplan.runtime.ccl.communicator import Communicator
from numaplan.runtime.ccl.spec import CommSpec
from numaplan.runtime.ccl.stats import CommStats
from numaplan.runtime.ccl.tvm_functions import register_tvm_functions
from numaplan.runtime.loader import LoadReport, SharedCopies, check_placement, load_worker_params
from numaplan.runtime.protocol import (
    GENERATE,
    LOAD_PARAMS,
    REPORT,
    SETUP,
    SHUTDOWN,
    GenerationResult,
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
        if enforce:
            outcome = apply_mempolicy("bind", [w.mem_node_id], allow_fallback=opts.allow_fallback)
            if outcome.degraded:
                notes.append(f"memory policy degraded: {'; '.join(outcome.reasons)}")
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
        st.setup = SetupReport(
            worker_id=wid, pid=os.getpid(), tid=current_thread_id(),
            node_id=w.node_id, mem_node_id=w.mem_node_id,
            cpus_planned=format_cpulist(cpus), cpus_thread=format_cpulist(get_affinity()),
            mempolicy=get_mempolicy().describe(),
            pool_threads=len(st.pool_tids) or int(tvm.get_global_func("runtime.NumThreads")()),
            notes=tuple(notes))
        _STATE.__dict__.update(st.__dict__)
        return st.setup


def _attach_collective(plan: Plan, spec: WorkerSpec, rank: int) -> Communicator | None:
    """Create this rank's communicator and register ``numaplan.ccl.*`` for the VM (a single
    worker's model has no collective)."""
    if plan.request.tensor_parallel_shards == 1:
        return None
    cs = CommSpec.from_plan(plan, spec.namespace, timeout_s=spec.options.collective_timeout_s)
    comm = Communicator.create(cs, rank)
    register_tvm_functions(comm)
    return comm


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


@tvm_ffi.register_global_func(GENERATE, override=True)
@reporting
def generate(vm: Any, prompt: Any, max_new: int, max_seq: int, want_logits: int
             ) -> GenerationResult:
    """Greedy decoding, run in lockstep by every worker; tokens and timings."""
    params = _STATE.params
    ids = np.asarray([int(x) for x in prompt], dtype=np.int32)
    embed, prefill, decode = vm["embed"], vm["prefill"], vm["decode"]
    kv = vm["create_kv_cache"](tvm_ffi.Shape([max_seq]))
    comm = _STATE.comm
    c0 = comm.stats() if comm is not None else None

    def hidden_of(token_ids: np.ndarray):
        h = embed(tvm.runtime.tensor(token_ids), params)
        arr = np.from_dlpack(h)
        return tvm.runtime.from_dlpack(arr.reshape(1, *arr.shape)), h

    t0 = time.perf_counter()
    x, keep = hidden_of(ids)
    logits, kv = prefill(x, kv, params)
    lg = np.from_dlpack(logits)[0, -1]
    tokens = [int(np.argmax(lg))]
    kept = [lg.tolist()] if want_logits else []
    prefill_s = time.perf_counter() - t0
    steps: list[float] = []
    pos = len(ids)
    for _ in range(max_new - 1):
        t1 = time.perf_counter()
        x, keep = hidden_of(np.asarray([tokens[-1]], dtype=np.int32))
        logits, kv = decode(x, kv, tvm_ffi.Shape([pos]), params)
        lg = np.from_dlpack(logits)[0, -1]
        tokens.append(int(np.argmax(lg)))
        if want_logits:
            kept.append(lg.tolist())
        pos += 1
        steps.append(time.perf_counter() - t1)
    del keep
    return GenerationResult(
        prompt_ids=tuple(int(i) for i in ids), tokens=tuple(tokens), prefill_s=prefill_s,
        step_s=tuple(steps), logits=tuple(tuple(row) for row in kept),
        collective=_stats_delta(c0, comm.stats()) if comm is not None and c0 is not None
        else {})


def _stats_delta(a: CommStats, b: CommStats) -> dict[str, float]:
    """Collective statistics of one generate call (difference of two snapshots)."""
    da, db = a.model_dump(), b.model_dump()
    out = {}
    for k, v in db.items():
        if isinstance(v, int | float) and k in da and isinstance(da[k], int | float):
            out[k] = v - da[k]
    return out


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
                        collective=st.comm.stats() if st.comm is not None else None)


@tvm_ffi.register_global_func(SHUTDOWN, override=True)
@reporting
def shutdown() -> int:
    """Release this worker's communicator and weights (the controller unlinks shared memory)."""
    with _LOCK:
        _release()
    return 0


def _release() -> None:
    st = _STATE
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
