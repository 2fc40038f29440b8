"""numaplan's worker-side functions, registered in every Disco worker (and in the controller,
where worker 0 runs as a thread).

The controller drives them through Disco (``sess.get_global_func("numaplan.runtime.*")``):

- ``numaplan.runtime.setup(spec_json) -> info_json``: pin this worker's thread(s) to the plan's
  CPUs, bind its memory policy to its node, pin TVM's thread pool to the same CPUs
  (``runtime.config_threadpool``; TVM otherwise pins to CPUs 0..n-1 whatever the mask), attach
  the shared-memory collective and register ``numaplan.ccl.*`` for the compiled model;
- ``numaplan.runtime.load_params(model_dir, names_json) -> [Tensor]``: this worker's own shard,
  loaded by this worker into node-bound memory (:mod:`numaplan.runtime.loader`), audited;
- ``numaplan.runtime.generate(vm, params, prompt, max_new, max_seq, want_logits) -> json``:
  greedy decoding run inside every worker in lockstep (the collectives synchronise them, and the
  logits after the final all-reduce are identical on every worker, so each takes the same argmax);
- ``numaplan.runtime.report() -> json``: what was measured (affinity of every thread read back
  from /proc, memory policy, load audit, collective statistics).

Module state holds one worker per process (a Disco worker process, or the controller for worker
0).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
import tvm_ffi

from numaplan.osnuma import apply_mempolicy, get_affinity, get_mempolicy, set_affinity
from numaplan.osnuma.affinity import current_thread_id, read_thread_affinity
from numaplan.plan.io import plan_from_dict
from numaplan.plan.schema import Plan
from numaplan.runtime.loader import SharedCopies, check_placement, load_worker_params
from numaplan.topology import format_cpulist, parse_cpulist

#: TVM's ThreadGroup affinity mode "kSpecifyOneCorePerThread" (threading_backend.h).
ONE_CORE_PER_THREAD = -2


@dataclass
class _State:
    plan: Plan | None = None
    worker_id: int = -1
    spec: dict[str, Any] = field(default_factory=dict)
    comm: Any = None
    arena: Any = None
    params: list[Any] = field(default_factory=list)
    load_report: Any = None
    setup_info: dict[str, Any] = field(default_factory=dict)
    pool_tids: list[int] = field(default_factory=list)
    placement: list[str] = field(default_factory=list)


_STATE = _State()
_LOCK = threading.Lock()


def _reporting(fn):
    """Run a worker function, returning its result or its error as JSON.

    An exception escaping a Python function on Disco's worker-0 thread reaches C++ and
    terminates the controller process; in a worker process it kills the worker. So nothing
    escapes: the controller reads ``{"error": ...}`` and raises there.
    """
    import functools
    import traceback

    @functools.wraps(fn)
    def wrapper(*args: Any) -> str:
        try:
            return json.dumps({"ok": fn(*args)})
        except Exception as exc:
            from numaplan.errors import NumaplanError

            kind = "user" if isinstance(exc, NumaplanError) else "internal"
            return json.dumps({"error": str(exc), "kind": kind, "type": type(exc).__name__,
                               "trace": traceback.format_exc(limit=6)})
    return wrapper


def _worker_id() -> int:
    return int(tvm_ffi.get_global_func("runtime.disco.worker_rank")())


def _task_ids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _in_controller() -> bool:
    return _worker_id() == 0


@tvm_ffi.register_global_func("numaplan.runtime.setup", override=True)
@_reporting
def setup(spec_json: str) -> dict[str, Any]:
    """Place this worker (see the module docstring); returns what it got, as JSON."""
    with _LOCK:
        _release()
        spec = json.loads(spec_json)
        plan = plan_from_dict(json.loads(spec["plan"]))
        wid = _worker_id()
        w = plan.workers[wid]
        cpus = parse_cpulist(w.cpus)
        st = _State(plan=plan, worker_id=wid, spec=spec)
        notes: list[str] = []
        enforce = bool(spec.get("enforce_placement", True))
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
            outcome = apply_mempolicy("bind", [w.mem_node_id],
                                      allow_fallback=bool(spec.get("allow_fallback")))
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
        st.placement = notes
        st.setup_info = {
            "worker_id": wid, "pid": os.getpid(), "tid": current_thread_id(),
            "node_id": w.node_id, "mem_node_id": w.mem_node_id,
            "cpus_planned": format_cpulist(cpus),
            "cpus_thread": format_cpulist(get_affinity()),
            "mempolicy": get_mempolicy().describe(),
            "pool_threads": len(st.pool_tids) or int(tvm.get_global_func("runtime.NumThreads")()),
            "notes": notes,
        }
        _STATE.__dict__.update(st.__dict__)
        return st.setup_info


def _attach_collective(plan: Plan, spec: dict[str, Any], rank: int) -> Any:
    """Create this rank's communicator and register ``numaplan.ccl.*`` for the VM (a single
    worker's model has no collective)."""
    if plan.request.tensor_parallel_shards == 1:
        return None
    from numaplan.runtime.ccl import CommSpec, Communicator
    from numaplan.runtime.ccl.tvm_functions import register_tvm_functions

    cs = CommSpec.from_plan(plan, spec["namespace"],
                            timeout_s=float(spec.get("collective_timeout_s", 30.0)))
    comm = Communicator.create(cs, rank)
    register_tvm_functions(comm)
    return comm


@tvm_ffi.register_global_func("numaplan.runtime.load_params", override=True)
@_reporting
def load_params(model_dir: str, names_json: str) -> dict[str, Any]:
    """Load this worker's parameters (packed order) into node-bound memory."""
    from numaplan.model import load_workload

    st = _STATE
    assert st.plan is not None, "numaplan.runtime.setup must run first"
    delay = float(st.spec.get("inject_delay_s", {}).get("load", 0.0))
    if delay:
        time.sleep(delay)  # fault injection (tests): a window to kill a worker mid-load
    names = json.loads(names_json)
    workload = load_workload(model_dir)
    wrong = st.spec.get("inject_misplacement", {}).get(str(st.worker_id))
    arena, arrays, report = load_worker_params(
        model_dir, workload, st.plan, st.worker_id, names,
        allow_fallback=bool(st.spec.get("allow_fallback")),
        bind_override=None if wrong is None else int(wrong),
        bind=bool(st.spec.get("enforce_placement", True)),
        shared=SharedCopies(namespace=st.spec["namespace"],
                            timeout_s=float(st.spec.get("collective_timeout_s", 30.0)))
        if st.spec.get("share_replicated", True) else None)
    check_placement(report, strict=bool(st.spec.get("strict_placement")))
    st.arena, st.load_report = arena, report
    # Zero-copy: the VM reads the memory the workers filled on the planned nodes.
    dtypes = {t.name: t.dtype for t in workload.tensors}
    st.params = vm_tensors(arrays, [dtypes[n] for n in names])
    return {"pieces": report.pieces, "bytes": report.bytes_loaded}


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


@tvm_ffi.register_global_func("numaplan.runtime.generate", override=True)
@_reporting
def generate(vm: Any, prompt: Any, max_new: int, max_seq: int, want_logits: int
             ) -> dict[str, Any]:
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
    out: dict[str, Any] = {"tokens": tokens, "prefill_s": prefill_s, "step_s": steps}
    if comm is not None:
        out["collective"] = _stats_delta(c0, comm.stats())
    if want_logits:
        out["logits"] = kept
    return out


def _stats_delta(a: Any, b: Any) -> dict[str, Any]:
    """Collective statistics of one generate call (difference of two snapshots)."""
    da, db = a.model_dump(), b.model_dump()
    out = {}
    for k, v in db.items():
        if isinstance(v, int | float) and k in da and isinstance(da[k], int | float):
            out[k] = v - da[k]
    return out


@tvm_ffi.register_global_func("numaplan.runtime.report", override=True)
@_reporting
def report() -> dict[str, Any]:
    """What this worker measured about itself."""
    st = _STATE
    if st.plan is None:
        return {}
    tids = [st.setup_info.get("tid"), *st.pool_tids] if _in_controller() else \
        sorted(_task_ids())
    threads = []
    for tid in tids:
        try:
            a = read_thread_affinity(tid=tid)
            threads.append({"tid": tid, "name": a.name, "cpus": format_cpulist(a.cpus_allowed)})
        except Exception as exc:  # a thread can exit between listing and reading
            threads.append({"tid": tid, "error": str(exc)})
    out: dict[str, Any] = {"setup": st.setup_info, "threads": threads}
    if st.load_report is not None:
        out["load"] = st.load_report.model_dump()
        out["load"]["on_planned_fraction"] = st.load_report.on_planned_fraction
    if st.comm is not None:
        out["collective"] = st.comm.stats().model_dump()
    return out


@tvm_ffi.register_global_func("numaplan.runtime.shutdown", override=True)
@_reporting
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
