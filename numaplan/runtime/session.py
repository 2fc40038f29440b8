"""The controller: start pinned Disco workers, load local shards, generate, report, clean up.

:class:`NumaRuntime` is the Python API behind ``numaplan run``. It reads the plan compiled into
the library (``_numaplan_plan``), refuses a plan that is stale for the model directory or the
machine (``force`` overrides staleness, never missing nodes or CPUs), starts a Disco
``ProcessSession`` whose workers run :mod:`numaplan.runtime.disco_worker`, and drives the
worker-side functions of :mod:`numaplan.runtime.worker`. A watchdog thread follows the worker
processes: when one dies, the others are stopped, shared memory is removed, and the caller gets
:class:`WorkerDiedError` naming the worker and the phase.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from numaplan._base import Frozen
from numaplan.errors import (
    NumaplanError,
    PlacementError,
    StalePlanError,
    WorkerDiedError,
    error_class,
)
from numaplan.plan.io import plan_from_dict, read_plan
from numaplan.plan.schema import Plan
from numaplan.runtime.shared_weights import cleanup_weight_segments
from numaplan.runtime.shm import new_namespace
from numaplan.topology import Topology, parse_cpulist, read_sysfs

log = logging.getLogger(__name__)

class RunOptions(Frozen):
    """How to run.

    Attributes
    ----------
    enforce_placement
        Pin workers, bind their memory and their weights as the plan says. Off is plain tensor
        parallelism (``numa_tensor_parallel=False``): workers run where the OS puts them and
        pages land where first touch puts them; the audit still reports where that was.
    strict_placement
        Refuse to run when any weight byte is found off its planned node (default: report it).
    allow_fallback
        Continue when the kernel refuses a placement (a container without CAP_SYS_NICE), and
        record the degradation.
    force
        Run a stale plan (fingerprints differ); missing nodes or CPUs are still refused.
    collective_timeout_s
        How long a rank waits for a peer inside a collective before it reports it missing.
    max_seq_len
        KV-cache rows (default: the model's context window).
    share_replicated
        Workers that read a replicated tensor from the same node share one copy of it in
        ``/dev/shm`` (the plan budgets one copy per node). Off: every worker holds its own.
    """

    enforce_placement: bool = True
    strict_placement: bool = False
    allow_fallback: bool = False
    force: bool = False
    collective_timeout_s: float = 30.0
    max_seq_len: int | None = None
    share_replicated: bool = True
    watchdog_interval_s: float = 0.1
    #: Fault injection for tests of the audit: ``{worker_id: node_id}`` binds that worker's
    #: weights to the wrong node while the audit still checks them against the plan.
    inject_misplacement: dict[int, int] = Field(default_factory=dict)
    #: Fault injection for tests of crash handling: ``{"load": seconds}`` makes every worker
    #: sleep that long at the start of loading, so a test can kill one mid-load.
    inject_delay_s: dict[str, float] = Field(default_factory=dict)


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


class RuntimeStats(Frozen):
    """Measured, not assumed: placement audit, load times, collective traffic and time."""

    workers: tuple[WorkerStats, ...]
    weight_local_percentage: float
    collective_calls: int
    collective_bytes: int
    collective_cross_node_bytes: int
    inter_node_percentage: float
    collective_s_per_step: float | None
    decode_s_per_step: float | None
    tokens_per_s: float | None
    load_s: float | None


class GenerationResult(Frozen):
    """Tokens of one greedy generation (and, if asked, the logits of every step)."""

    prompt_ids: tuple[int, ...]
    tokens: tuple[int, ...]
    prefill_s: float
    step_s: tuple[float, ...]
    logits: tuple[tuple[float, ...], ...] = ()
    collective: dict[str, float] = Field(default_factory=dict)


def read_library_plan(lib_path: str | Path) -> tuple[Plan, dict[str, Any]]:
    """The plan and MLC-style ``_metadata`` compiled into a library.

    Raises
    ------
    NumaplanError
        When the library has no numaplan plan (not built by ``numaplan compile``).
    """
    import tvm
    from tvm import relax

    from numaplan.runtime.ccl.tvm_functions import register_placeholders

    register_placeholders()
    path = Path(lib_path)
    if not path.exists():
        raise NumaplanError("library not found", path=path)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    try:
        plan_text = str(vm["_numaplan_plan"]())
    except (AttributeError, tvm.error.TVMError, RuntimeError):
        raise NumaplanError("the library carries no numaplan plan (build it with "
                            "`numaplan compile`)", path=path) from None
    meta = json.loads(str(vm["_metadata"]())) if _has(vm, "_metadata") else {}
    return plan_from_dict(json.loads(plan_text), source=str(path)), meta


def _has(vm: Any, name: str) -> bool:
    try:
        vm[name]
        return True
    except Exception:
        return False


def check_plan_applies(plan: Plan, model_fingerprint: str, topology: Topology, *,
                       force: bool) -> list[str]:
    """Reasons a plan must not run here; raises when it cannot, returns warnings when forced.

    Raises
    ------
    StalePlanError
        Fingerprints differ and ``force`` is off.
    PlacementError
        The plan needs nodes or CPUs this machine (or cpuset) does not offer.
    """
    problems = []
    if model_fingerprint != plan.model.fingerprint:
        problems.append("the model directory's index differs from the one the plan was made for")
    used = topology.restricted_to(plan.request.numa_nodes) if plan.request.numa_nodes \
        else topology
    if used.fingerprint() != plan.topology.fingerprint:
        problems.append(f"this machine differs from the one the plan was made for "
                        f"({plan.topology.source})")
    allowed = set(topology.allowed_cpus)
    for w in plan.workers:
        if w.node_id not in topology.node_ids:
            raise PlacementError(f"the plan puts worker {w.worker_id} on node {w.node_id}, "
                                 f"which this machine does not have")
        missing = set(parse_cpulist(w.cpus)) - allowed
        if missing:
            raise PlacementError(f"worker {w.worker_id} needs CPUs {sorted(missing)[:8]} that "
                                 f"this process may not use")
        if w.mem_node_id not in topology.allowed_mem_node_ids:
            raise PlacementError(f"worker {w.worker_id} needs memory of node {w.mem_node_id}, "
                                 f"which this process may not use")
    if problems and not force:
        raise StalePlanError("stale plan: " + "; ".join(problems) + " (re-plan with `numaplan "
                             "compile`, or pass --force)")
    return problems


class NumaRuntime:
    """Run a numaplan-compiled model with pinned, NUMA-local tensor-parallel workers.

    Parameters
    ----------
    model_dir
        The MLC model directory (weights).
    lib_path
        The library built by ``numaplan compile`` (the plan is read from it).
    plan_path
        Optionally the plan file; it must equal the plan inside the library.
    options
        :class:`RunOptions`.
    topology
        The machine (default: read from sysfs).

    Examples
    --------
    >>> with NumaRuntime("out/m", "out/m/m-numa-llvm.so") as rt:  # doctest: +SKIP
    ...     rt.generate([1, 2, 3], 8).tokens
    """

    def __init__(self, model_dir: str | Path, lib_path: str | Path, *,
                 plan_path: str | Path | None = None, options: RunOptions | None = None,
                 topology: Topology | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.lib_path = Path(lib_path)
        self.plan_path = plan_path
        self.options = options or RunOptions()
        self.topology = topology
        self.plan: Plan | None = None
        self.metadata: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.namespace = new_namespace()
        self._sess: Any = None
        self._mod: Any = None
        self._pids: dict[int, int] = {}
        self._phase = "start"
        self._dead: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._infos: list[dict[str, Any]] = []
        # Disco handles of the call in flight: after a worker death, destroying any handle
        # sends a "free register" message into the dead pipe and TVM aborts the process, so
        # those handles are then kept alive for good (see _keep_forever).
        self._inflight: list[Any] = []
        self._load_s: float | None = None
        self._last: GenerationResult | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> NumaRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> NumaRuntime:
        """Validate, start the workers, place them, load their shards."""
        from numaplan.model import load_workload
        from numaplan.runtime.disco import import_disco

        plan, meta = read_library_plan(self.lib_path)
        if self.plan_path is not None and read_plan(self.plan_path).digest() != plan.digest():
            raise StalePlanError("the plan file differs from the plan compiled into the library",
                                 path=self.plan_path)
        workload = load_workload(self.model_dir)
        topo = self.topology or read_sysfs("/")
        self.warnings = check_plan_applies(plan, workload.fingerprint, topo,
                                           force=self.options.force)
        W = plan.request.tensor_parallel_shards
        if meta and meta.get("tensor_parallel_shards", W) != W:
            raise NumaplanError(f"the library was built for tensor_parallel_shards="
                                f"{meta['tensor_parallel_shards']}, the plan says {W}",
                                path=self.lib_path)
        self.plan, self.metadata = plan, meta
        disco = import_disco()
        import numaplan.runtime.worker  # noqa: F401  (worker 0 runs in this process)

        with _single_threaded_children():
            self._sess = disco.ProcessSession(W, entrypoint="numaplan.runtime.disco_worker")
        try:
            self._phase = "setup"
            spec = json.dumps({"plan": plan.to_json(), "namespace": self.namespace,
                               "enforce_placement": self.options.enforce_placement,
                               "strict_placement": self.options.strict_placement,
                               "allow_fallback": self.options.allow_fallback,
                               "share_replicated": self.options.share_replicated,
                               "collective_timeout_s": self.options.collective_timeout_s,
                               "inject_delay_s": dict(self.options.inject_delay_s),
                               "inject_misplacement": {str(k): v for k, v in
                                                       self.options.inject_misplacement.items()}})
            self._infos = self._gather(self._call("numaplan.runtime.setup", spec))
            self._pids = {i: int(info["pid"]) for i, info in enumerate(self._infos)
                          if int(info["pid"]) != os.getpid()}
            self._start_watchdog()
            self._phase = "load"
            self._mod = self._guard(lambda: self._sess.load_vm_module(str(self.lib_path)))
            self._inflight.clear()
            names = [p["name"] for p in meta.get("params", [])] or \
                [t.name for t in plan.tensors]
            t0 = time.perf_counter()
            self._gather(self._call("numaplan.runtime.load_params", str(self.model_dir),
                                    json.dumps(names)))
            self._load_s = time.perf_counter() - t0
            # Every worker has mapped the shared copies: the names can go (the mappings keep
            # the memory), so nothing of the weights is left in /dev/shm whatever happens next.
            cleanup_weight_segments(self.namespace)
            self._phase = "ready"
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the workers and remove every shared-memory segment of the session."""
        self._stop.set()
        sess, self._sess = self._sess, None
        if sess is not None and self._dead is None:
            _release_workers(sess)
            self._inflight.clear()  # free the handles while the workers can still answer
            # No sess.shutdown(): TVM's destructor shuts the workers down again, into pipes
            # that are then closed, and aborts the process. Dropping the last reference (the
            # module handle holds one) shuts them down exactly once.
            self._mod = None
            # TVM's wrapper caches functions that point back at the session (Session._cache ->
            # DPackedFunc.session), a cycle the GC cannot collect (FFI objects take no part in
            # it): break it, so the destructor runs now, while the workers are alive to
            # receive its shutdown message. A worker killed first makes that shutdown write
            # into a dead pipe, and TVM aborts the process.
            with contextlib.suppress(AttributeError):
                sess._cache.clear()
            del sess
            gc.collect()
            self._wait_workers_exit(5.0)
        elif sess is not None:
            for handle in (sess, self._mod, *self._inflight):
                if handle is not None:
                    _keep_forever(handle)
            self._mod = None
            self._inflight.clear()
        self._kill_workers()
        self._cleanup_shm()

    def _wait_workers_exit(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(_alive(p) for p in self._pids.values()):
            time.sleep(0.02)

    # -- generation -----------------------------------------------------------------------
    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, *,
                 return_logits: bool = False) -> GenerationResult:
        """Greedy generation: ``max_new_tokens`` tokens after the prompt."""
        import tvm_ffi

        if self._sess is None or self.plan is None:
            raise NumaplanError("the runtime is not started")
        vocab = int(self.metadata.get("active_vocab_size") or self.metadata.get("vocab_size")
                    or 0)
        ids = [int(i) for i in prompt_ids]
        if not ids or (vocab and not all(0 <= i < vocab for i in ids)):
            raise NumaplanError(f"prompt ids must be a non-empty list in [0, {vocab})")
        if max_new_tokens < 1:
            raise NumaplanError("max_new_tokens must be >= 1")
        max_seq = self.options.max_seq_len or int(self.metadata.get("context_window_size", 0)) \
            or len(ids) + max_new_tokens
        if len(ids) + max_new_tokens > max_seq:
            raise NumaplanError(f"{len(ids)} prompt + {max_new_tokens} new tokens exceed the "
                                f"KV cache ({max_seq} rows)")
        self._phase = "decode"
        outs = self._gather(self._call("numaplan.runtime.generate", self._mod,
                                       tvm_ffi.Shape(ids), max_new_tokens, max_seq,
                                       int(return_logits)))
        self._phase = "ready"
        first = outs[0]
        for i, o in enumerate(outs[1:], start=1):
            if o["tokens"] != first["tokens"]:
                raise NumaplanError(f"worker {i} generated {o['tokens']} but worker 0 "
                                    f"{first['tokens']}: the workers diverged")
        res = GenerationResult(prompt_ids=tuple(ids), tokens=tuple(first["tokens"]),
                               prefill_s=first["prefill_s"], step_s=tuple(first["step_s"]),
                               logits=tuple(tuple(x) for x in first.get("logits", ())),
                               collective=first.get("collective", {}))
        self._last = res
        return res

    # -- statistics -----------------------------------------------------------------------
    def stats(self) -> RuntimeStats:
        """Measured placement, load and collective figures of every worker."""
        assert self.plan is not None and self._sess is not None
        reports = self._gather(self._call("numaplan.runtime.report"))
        workers = []
        calls = nbytes = cross = 0
        on = total = 0
        for i, rep in enumerate(reports):
            s = rep["setup"]
            load = rep.get("load", {})
            coll = rep.get("collective", {})
            planned = s["cpus_planned"]
            cpus = tuple(t.get("cpus", "?") for t in rep["threads"])
            workers.append(WorkerStats(
                worker_id=i, pid=s["pid"], node_id=s["node_id"], mem_node_id=s["mem_node_id"],
                cpus_planned=planned, thread_cpus=cpus,
                threads_on_planned_cpus=all(_within(c, planned) for c in cpus),
                mempolicy=s["mempolicy"], load_s=load.get("load_s"),
                weight_bytes=load.get("bytes_audited", 0),
                weight_bytes_on_planned_node=load.get("bytes_on_planned_node", 0),
                weight_bytes_loaded=load.get("bytes_loaded", 0),
                weight_bytes_shared_mapped=load.get("bytes_shared_mapped", 0),
                notes=tuple(s.get("notes", ()))))
            on += load.get("bytes_on_planned_node", 0)
            total += load.get("bytes_audited", 0)
            calls += int(coll.get("calls", 0))
            nbytes += int(coll.get("bytes_read", coll.get("bytes", 0)))
            cross += int(coll.get("cross_node_bytes_read", coll.get("cross_node_bytes", 0)))
        last = self._last
        steps = len(last.step_s) if last else 0
        coll_s = last.collective.get("time_s") if last else None
        return RuntimeStats(
            workers=tuple(workers),
            weight_local_percentage=100.0 * on / total if total else 0.0,
            collective_calls=calls, collective_bytes=nbytes, collective_cross_node_bytes=cross,
            inter_node_percentage=100.0 * cross / nbytes if nbytes else 0.0,
            collective_s_per_step=(coll_s / (steps + 1)) if coll_s is not None and last else None,
            decode_s_per_step=(sum(last.step_s) / steps) if steps else None,
            tokens_per_s=(steps / sum(last.step_s)) if steps and sum(last.step_s) > 0 else None,
            load_s=self._load_s)

    # -- plumbing -------------------------------------------------------------------------
    def _call(self, name: str, *args: Any) -> Any:
        def run() -> Any:
            f = self._sess.get_global_func(name)
            self._inflight.append(f)
            ref = self._sess.call_packed(f, *args)
            self._inflight.append(ref)
            return ref
        return self._guard(run)

    def _gather(self, ref: Any) -> list[Any]:
        """Every worker's answer to a call (worker order); a worker's error is raised here."""
        assert self.plan is not None
        outs = []
        for i in range(self.plan.request.tensor_parallel_shards):
            doc = json.loads(str(self._guard(lambda i=i: ref.debug_get_from_remote(i))))
            if "error" in doc:
                if self._wait_for_death(0.5):
                    raise self._died()  # (every handle is kept: freeing one now aborts)
                # The workers are alive: free the call's handles now. The error's traceback
                # would otherwise hold this one past close(), and its destructor would then
                # write into the closed pipes, which makes TVM abort the process.
                del ref
                self._inflight.clear()
                raise self._worker_error(i, doc)
            outs.append(doc["ok"])
        self._inflight.clear()
        return outs

    def _worker_error(self, i: int, doc: dict[str, Any]) -> NumaplanError:
        """The error a worker reported, as an exception of the controller."""
        if doc.get("kind") == "user":
            # The worker's own error class (PlacementError for strict placement...), so that
            # callers can tell them apart across the process boundary.
            msg = str(doc["error"])
            if not msg.startswith(f"worker {i}:"):
                msg = f"worker {i}: {msg}"
            return error_class(str(doc.get("type")))(msg)
        log.debug("worker %d traceback:\n%s", i, doc.get("trace", ""))
        return NumaplanError(f"worker {i} failed during {self._phase}: "
                             f"{doc.get('type')}: {doc['error']}")

    def _guard(self, fn: Any) -> Any:
        """Run a Disco call; a dead worker turns any resulting error into WorkerDiedError."""
        try:
            out = fn()
        except Exception as exc:
            if self._wait_for_death(2.0):
                raise self._died() from None
            if isinstance(exc, NumaplanError):
                raise
            raise NumaplanError(f"worker error during {self._phase}: {exc}") from None
        if self._dead is not None:
            raise self._died()
        return out

    def _wait_for_death(self, seconds: float) -> bool:
        """Whether a worker is (or, within ``seconds``, turns out to be) dead."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._dead is not None:
                return True
            if self._check_pids():
                return True
            time.sleep(0.02)
        return self._dead is not None

    def _died(self) -> WorkerDiedError:
        wid, pid = self._dead or (-1, -1)
        return WorkerDiedError(f"worker {wid} (pid {pid}) died during {self._phase}; the other "
                               f"workers were stopped and the shared memory removed")

    def _check_pids(self) -> bool:
        for wid, pid in self._pids.items():
            if not _alive(pid):
                if self._dead is None:
                    self._dead = (wid, pid)
                    self._on_death()
                return True
        return False

    def _start_watchdog(self) -> None:
        def watch() -> None:
            while not self._stop.wait(self.options.watchdog_interval_s):
                if self._check_pids():
                    return
        self._watchdog = threading.Thread(target=watch, name="numaplan-watchdog", daemon=True)
        self._watchdog.start()

    def _on_death(self) -> None:
        """Stop everything the dead worker's peers may be blocked on."""
        log.error("worker %s (pid %s) died during %s", *(self._dead or ()), self._phase)
        from numaplan.runtime import worker

        comm = worker._STATE.comm
        if comm is not None and hasattr(comm, "abort"):
            with contextlib.suppress(Exception):
                comm.abort(f"worker {self._dead[0] if self._dead else '?'} died")
        self._kill_workers()
        self._cleanup_shm()

    def _kill_workers(self) -> None:
        for pid in self._pids.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for pid in self._pids.values():
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)

    def _cleanup_shm(self) -> None:
        with contextlib.suppress(Exception):
            from numaplan.runtime.ccl import cleanup

            cleanup(self.namespace)
        with contextlib.suppress(Exception):
            cleanup_weight_segments(self.namespace)


def _release_workers(sess: Any) -> None:
    """Ask every worker to free its communicator and weights (no handle outlives the call)."""
    with contextlib.suppress(Exception):
        f = sess.get_global_func("numaplan.runtime.shutdown")
        ref = sess.call_packed(f)
        sess._sync_all()
        del ref, f


def _within(cpus: str, planned: str) -> bool:
    try:
        return bool(cpus) and set(parse_cpulist(cpus)) <= set(parse_cpulist(planned))
    except ValueError:
        return False


def _alive(pid: int) -> bool:
    """Alive and not a zombie (a dead child stays a zombie until it is reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _keep_forever(obj: Any) -> None:
    """Never destroy a session whose worker died: TVM's destructor writes a shutdown message
    to the dead worker's pipe, gets EPIPE and calls std::terminate, killing this process."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


@contextlib.contextmanager
def _single_threaded_children():
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
