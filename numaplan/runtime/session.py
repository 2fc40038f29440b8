"""The controller: start pinned Disco workers, load local shards, generate, report, clean up.

:class:`NumaRuntime` is the Python API behind ``numaplan run``. It admits the plan compiled into
the library (:mod:`numaplan.runtime.admission`: refused when stale for the model directory or
the machine, unless forced; never with missing nodes or CPUs), starts a Disco
``ProcessSession`` whose workers run :mod:`numaplan.runtime.disco_worker`, and drives the
worker-side functions of :mod:`numaplan.runtime.worker` with the documents of
:mod:`numaplan.runtime.protocol`. A :class:`~numaplan.runtime.supervision.Supervisor` follows
the worker processes: when one dies, the others are stopped, shared memory is removed, and the
caller gets :class:`~numaplan.errors.WorkerDiedError` naming the worker and the phase.
:meth:`NumaRuntime.stats` sums up what the workers measured (:mod:`numaplan.runtime.stats`).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from numaplan.errors import NumaplanError, RequestError
from numaplan.plan.schema import Plan
from numaplan.runtime.admission import (
    check_library_metadata,
    check_plan_applies,
    check_plan_file,
    read_library_plan,
)
from numaplan.runtime.protocol import (
    COLLECTIVE_STATS,
    KV_INIT,
    KV_STEP,
    LOAD_PARAMS,
    REPORT,
    SETUP,
    CollectiveCounters,
    GenerationResult,
    KVCacheInfo,
    KVCacheSpec,
    KVStep,
    KVStepDone,
    LoadDone,
    Reply,
    RunOptions,
    SetupReport,
    WorkerReport,
    WorkerSpec,
)
from numaplan.runtime.shared_weights import cleanup_weight_segments
from numaplan.runtime.shm import new_namespace
from numaplan.runtime.stats import RuntimeStats, WorkerStats, runtime_stats
from numaplan.runtime.supervision import (
    Supervisor,
    keep_forever,
    release_workers,
    single_threaded_children,
)
from numaplan.topology import Topology, read_sysfs

M = TypeVar("M", bound=BaseModel)


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
        :class:`~numaplan.runtime.protocol.RunOptions`.
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
        self.supervisor = Supervisor(self.namespace,
                                     interval_s=self.options.watchdog_interval_s)
        self._sess: Any = None
        self._mod: Any = None
        # Disco handles of the call in flight: after a worker death, destroying any handle
        # sends a "free register" message into the dead pipe and TVM aborts the process, so
        # those handles are then kept alive for good (see keep_forever).
        self._inflight: list[Any] = []
        self._load_s: float | None = None
        self._last: GenerationResult | None = None
        self._kv_info: KVCacheInfo | None = None

    @property
    def worker_pids(self) -> dict[int, int]:
        """worker id -> pid of each worker process (worker 0 is a thread of this one)."""
        return self.supervisor.pids

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> NumaRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> NumaRuntime:
        """Validate, start the workers, place them, load their shards."""
        from numaplan.model import load_workload
        from numaplan.model.quantization import get_quantization, require_kernels
        from numaplan.runtime.disco import import_disco

        plan, meta = read_library_plan(self.lib_path)
        check_plan_file(plan, self.plan_path)
        workload = load_workload(self.model_dir)
        require_kernels(get_quantization(workload.quantization))
        topo = self.topology or read_sysfs("/")
        self.warnings = check_plan_applies(plan, workload.fingerprint, topo,
                                           force=self.options.force)
        check_library_metadata(plan, meta, self.lib_path)
        self.plan, self.metadata = plan, meta
        disco = import_disco()
        import numaplan.runtime.worker  # noqa: F401  (worker 0 runs in this process)

        sup = self.supervisor
        with single_threaded_children():
            self._sess = disco.ProcessSession(plan.request.tensor_parallel_shards,
                                              entrypoint="numaplan.runtime.disco_worker")
        try:
            sup.phase = "setup"
            spec = WorkerSpec.of(plan, self.namespace, self.options)
            setups = self._gather(self._call(SETUP, spec.model_dump_json()), SetupReport)
            # worker 0 is a thread of this process: the watchdog follows the others
            sup.watch({i: s.pid for i, s in enumerate(setups) if s.pid != os.getpid()})
            sup.phase = "load"
            self._mod = sup.guard(lambda: self._sess.load_vm_module(str(self.lib_path)))
            self._inflight.clear()
            names = [p["name"] for p in meta.get("params", [])] or \
                [t.name for t in plan.tensors]
            t0 = time.perf_counter()
            self._gather(self._call(LOAD_PARAMS, str(self.model_dir),
                                    json.dumps(names)), LoadDone)
            self._load_s = time.perf_counter() - t0
            # Every worker has mapped the shared copies: the names can go (the mappings keep
            # the memory), so nothing of the weights is left in /dev/shm whatever happens next.
            cleanup_weight_segments(self.namespace)
            sup.phase = "ready"
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop the workers and remove every shared-memory segment of the session."""
        sup = self.supervisor
        sup.stop()
        sess, self._sess = self._sess, None
        if sess is not None and sup.dead is None:
            release_workers(sess)
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
            sup.wait_exit(5.0)
        elif sess is not None:
            for handle in (sess, self._mod, *self._inflight):
                if handle is not None:
                    keep_forever(handle)
            self._mod = None
            self._inflight.clear()
        sup.kill_workers()
        sup.cleanup_shm()

    # -- generation -----------------------------------------------------------------------
    def _ensure_cache(self) -> KVCacheInfo:
        if self._kv_info is None:
            # The plan sized the cache against the memory left after the weights; an explicit
            # run option overrides it (and is the user's risk).
            planned = self.plan.kv_cache.max_total_seq_len if self.plan is not None else None
            spec = KVCacheSpec(max_batch=self.options.max_batch,
                               max_total_seq_len=self.options.max_seq_len or planned)
            infos = self._gather(self._call(KV_INIT, self._mod, spec.model_dump_json()),
                                 KVCacheInfo)
            self._kv_info = infos[0]
        return self._kv_info

    def step(self, step: KVStep) -> KVStepDone:
        """Run one step on every worker's cache (they run it in lockstep)."""
        if self._sess is None or self.plan is None:
            raise NumaplanError("the runtime is not started")
        self._ensure_cache()
        previous, self.supervisor.phase = self.supervisor.phase, "decode"
        try:
            return self._gather(self._call(KV_STEP, step.model_dump_json()), KVStepDone)[0]
        finally:
            self.supervisor.phase = previous

    @property
    def model(self) -> SessionModel:
        """The workers as one model that steps a paged KV cache
        (:class:`numaplan.generation.StepModel`)."""
        return SessionModel(self)

    def run(self, prompts: Sequence[Sequence[int]], params: Any, *, tokenizer: Any = None,
            eos_ids: Sequence[int] = (), on_text: Any = None, on_token: Any = None,
            keep_logits: bool = False) -> Any:
        """:func:`numaplan.generation.generate` on the workers, recorded for :meth:`stats`.

        Returns
        -------
        (list[GenerationOutput], GenerationStats)
        """
        from numaplan.generation import generate

        c0 = self.collective_counters()
        outs, stats = generate(self.model, prompts, params, tokenizer=tokenizer,
                               eos_ids=eos_ids, on_text=on_text, on_token=on_token,
                               keep_logits=keep_logits)
        c1 = self.collective_counters()
        first = outs[0]
        self._last = GenerationResult(
            prompt_ids=first.prompt_ids, tokens=first.output_ids, prefill_s=stats.prefill_s,
            step_s=stats.step_s, logits=first.logits or (),
            collective={k: c1[k] - c0.get(k, 0.0) for k in c1})
        return outs, stats

    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int, *,
                 return_logits: bool = False) -> GenerationResult:
        """Greedy generation of ``max_new_tokens`` tokens (no stop) after one prompt, the
        token-id interface of ``numaplan run --prompt-ids``; text, sampling, stops and several
        prompts go through :func:`numaplan.generation.generate` on :attr:`model`."""
        from numaplan.sampling import SamplingParams

        if self._sess is None or self.plan is None:
            raise NumaplanError("the runtime is not started")
        vocab = int(self.metadata.get("active_vocab_size") or self.metadata.get("vocab_size")
                    or 0)
        ids = [int(i) for i in prompt_ids]
        if not ids or (vocab and not all(0 <= i < vocab for i in ids)):
            raise NumaplanError(f"prompt ids must be a non-empty list in [0, {vocab})")
        if max_new_tokens < 1:
            raise NumaplanError("max_new_tokens must be >= 1")
        window = self._ensure_cache().context_window
        # The last token is sampled, never fed back: the cache holds prompt + new - 1 tokens.
        if window > 0 and len(ids) + max_new_tokens - 1 > window:
            raise RequestError(f"{len(ids)} prompt + {max_new_tokens} new tokens exceed the "
                               f"model's context window of {window} tokens")
        self.run([ids], SamplingParams(max_new_tokens=max_new_tokens), keep_logits=return_logits)
        assert self._last is not None
        return self._last

    def collective_counters(self) -> dict[str, float]:
        """Worker 0's collective counters (their change over a call is what it cost)."""
        return self._gather(self._call(COLLECTIVE_STATS), CollectiveCounters)[0].counters

    # -- statistics -----------------------------------------------------------------------
    def stats(self) -> RuntimeStats:
        """Measured placement, load and collective figures of every worker."""
        assert self.plan is not None and self._sess is not None
        reports = self._gather(self._call(REPORT), WorkerReport)
        last = self._last
        return runtime_stats(reports, step_s=last.step_s if last else None,
                             collective_s=last.collective.get("time_s") if last else None,
                             load_s=self._load_s)

    # -- plumbing -------------------------------------------------------------------------
    def _call(self, name: str, *args: Any) -> Any:
        def run() -> Any:
            f = self._sess.get_global_func(name)
            self._inflight.append(f)
            ref = self._sess.call_packed(f, *args)
            self._inflight.append(ref)
            return ref
        return self.supervisor.guard(run)

    def _gather(self, ref: Any, model: type[M]) -> list[M]:
        """Every worker's answer to a call, as ``model`` (worker order); a worker's error is
        raised here."""
        assert self.plan is not None
        sup = self.supervisor
        outs = []
        for i in range(self.plan.request.tensor_parallel_shards):
            reply = Reply.model_validate_json(
                str(sup.guard(lambda i=i: ref.debug_get_from_remote(i))))
            if reply.error is not None:
                if sup.wait_for_death(0.5):
                    raise sup.died()  # (every handle is kept: freeing one now aborts)
                # The workers are alive: free the call's handles now. The error's traceback
                # would otherwise hold this one past close(), and its destructor would then
                # write into the closed pipes, which makes TVM abort the process.
                del ref
                self._inflight.clear()
                raise sup.worker_error(i, reply.error)
            outs.append(reply.result(model))
        self._inflight.clear()
        return outs




class SessionModel:
    """A running session as :class:`numaplan.generation.StepModel`: every call is one step of
    every worker; the logits are worker 0's (identical on every worker after the final
    all-reduce)."""

    def __init__(self, runtime: NumaRuntime) -> None:
        self.rt = runtime

    def add_sequence(self, seq_id: int) -> None:
        self.rt.step(KVStep(op="add", seq_ids=(seq_id,)))

    def remove_sequence(self, seq_id: int) -> None:
        self.rt.step(KVStep(op="remove", seq_ids=(seq_id,)))

    def popn(self, seq_id: int, n: int) -> None:
        self.rt.step(KVStep(op="popn", seq_ids=(seq_id,), n=n))

    def prefill(self, seq_ids: Sequence[int], tokens: Sequence[Sequence[int]]) -> Any:
        from numaplan.runtime.worker import take_logits

        self.rt.step(KVStep(op="prefill", seq_ids=tuple(seq_ids),
                            tokens=tuple(tuple(int(t) for t in ts) for ts in tokens)))
        return take_logits()

    def decode(self, seq_ids: Sequence[int], tokens: Sequence[int]) -> Any:
        from numaplan.runtime.worker import take_logits

        self.rt.step(KVStep(op="decode", seq_ids=tuple(seq_ids),
                            tokens=tuple(int(t) for t in tokens)))
        return take_logits()


__all__ = [
    "GenerationResult",
    "NumaRuntime",
    "RunOptions",
    "RuntimeStats",
    "SessionModel",
    "WorkerStats",
]
