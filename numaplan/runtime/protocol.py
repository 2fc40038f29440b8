"""What crosses the process boundary between the controller and its workers.

The controller (:mod:`numaplan.runtime.session`) calls the worker-side functions of
:mod:`numaplan.runtime.worker` through Disco with JSON strings and gets JSON strings back. Every
such document is one of the frozen models here, so both sides validate what they read and every
default is written once:

- :class:`RunOptions` (the caller's options) travel inside :class:`WorkerSpec`;
- a worker answers every call with a :class:`Reply`: ``ok`` (the call's report:
  :class:`SetupReport`, :class:`LoadDone`, :class:`GenerationResult`, :class:`WorkerReport`) or
  ``error`` (a :class:`WorkerFailure`, which keeps the error's class: the controller raises the
  same :mod:`numaplan.errors` class again).
"""

from __future__ import annotations

import functools
import json
import traceback
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from numaplan._base import Frozen
from numaplan.errors import CollectiveError, NumaplanError, error_class
from numaplan.osnuma import Downgrade
from numaplan.plan.io import plan_from_dict
from numaplan.plan.schema import Plan
from numaplan.runtime.ccl.spec import DEFAULT_TIMEOUT_S
from numaplan.runtime.ccl.stats import CommStats
from numaplan.runtime.kv_placement import KVPlacement
from numaplan.runtime.loader import LoadReport

M = TypeVar("M", bound=BaseModel)

# -- the worker functions the controller calls through Disco ---------------------------------------
SETUP = "numaplan.runtime.setup"  # (WorkerSpec JSON) -> SetupReport
LOAD_PARAMS = "numaplan.runtime.load_params"  # (model dir, names JSON) -> LoadDone
KV_INIT = "numaplan.runtime.kv_init"  # (vm, KVCacheSpec JSON) -> KVCacheInfo
KV_STEP = "numaplan.runtime.kv_step"  # (KVStep JSON) -> KVStepDone
COLLECTIVE_STATS = "numaplan.runtime.collective_stats"  # () -> CollectiveCounters
REPORT = "numaplan.runtime.report"  # () -> WorkerReport
SHUTDOWN = "numaplan.runtime.shutdown"  # () -> 0


# -- controller -> worker -------------------------------------------------------------------------
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
        How long a rank waits for a peer inside a collective before it reports it missing
        (also how long a worker waits for a shared weight copy another worker writes).
    max_seq_len
        Tokens the KV cache holds over all its sequences (default: the plan's
        ``kv_cache.max_total_seq_len``, sized as MLC's engine sizes it).
    max_batch
        Sequences the KV cache holds at once (``batch_decode`` width).
    share_replicated
        Workers that read a replicated tensor from the same node share one copy of it in
        ``/dev/shm`` (the plan budgets one copy per node). Off: every worker holds its own.
    watchdog_interval_s
        How often the controller checks that every worker process is alive.
    """

    enforce_placement: bool = True
    strict_placement: bool = False
    allow_fallback: bool = False
    force: bool = False
    collective_timeout_s: float = DEFAULT_TIMEOUT_S
    max_seq_len: int | None = None
    max_batch: int = 4
    share_replicated: bool = True
    watchdog_interval_s: float = 0.1
    #: Fault injection for tests of the audit: ``{worker_id: node_id}`` binds that worker's
    #: weights to the wrong node while the audit still checks them against the plan.
    inject_misplacement: dict[int, int] = Field(default_factory=dict)
    #: Fault injection for tests of crash handling: ``{"load": seconds}`` makes every worker
    #: sleep that long at the start of loading, so a test can kill one mid-load.
    inject_delay_s: dict[str, float] = Field(default_factory=dict)


class WorkerSpec(Frozen):
    """What every worker is set up from (``numaplan.runtime.setup``)."""

    #: The plan, as its canonical text (each worker validates it like a plan file).
    plan_json: str
    #: The session's ``/dev/shm`` namespace (:func:`numaplan.runtime.shm.new_namespace`).
    namespace: str
    options: RunOptions

    @classmethod
    def of(cls, plan: Plan, namespace: str, options: RunOptions) -> WorkerSpec:
        return cls(plan_json=plan.to_json(), namespace=namespace, options=options)

    def plan(self) -> Plan:
        """The plan (validated)."""
        return plan_from_dict(json.loads(self.plan_json))


# -- worker -> controller -------------------------------------------------------------------------
class SetupReport(Frozen):
    """Where a worker was placed (the answer to ``numaplan.runtime.setup``)."""

    worker_id: int
    pid: int
    tid: int
    node_id: int
    mem_node_id: int
    cpus_planned: str
    cpus_thread: str
    mempolicy: str
    pool_threads: int
    notes: tuple[str, ...]
    #: Placement calls refused under ``allow_fallback`` during setup (memory policy).
    downgrades: tuple[Downgrade, ...] = ()


class LoadDone(Frozen):
    """What a worker loaded (the answer to ``numaplan.runtime.load_params``)."""

    pieces: int
    bytes: int


class ThreadReport(Frozen):
    """One thread's CPUs, read back from ``/proc`` (``error`` when it could not be read)."""

    tid: int
    name: str | None = None
    cpus: str | None = None
    error: str | None = None


class WorkerReport(Frozen):
    """What a worker measured about itself (the answer to ``numaplan.runtime.report``)."""

    setup: SetupReport
    threads: tuple[ThreadReport, ...]
    load: LoadReport | None = None
    collective: CommStats | None = None
    kv: KVPlacement | None = None


class GenerationResult(Frozen):
    """Tokens of one greedy generation (and, if asked, the logits of every step).

    ``collective`` holds the numeric fields of worker 0's :class:`CommStats`, as the change
    over this generation (empty without a collective).
    """

    prompt_ids: tuple[int, ...]
    tokens: tuple[int, ...]
    prefill_s: float
    step_s: tuple[float, ...]
    logits: tuple[tuple[float, ...], ...] = ()
    collective: dict[str, float] = Field(default_factory=dict)


class KVCacheSpec(Frozen):
    """The paged KV cache every worker creates (``numaplan.runtime.kv_init``)."""

    max_batch: int = Field(ge=1)
    max_total_seq_len: int | None = None
    prefill_chunk: int | None = None


class KVCacheInfo(Frozen):
    """A worker's cache, as created."""

    max_batch: int
    max_total_seq_len: int
    prefill_chunk: int
    free_tokens: int
    context_window: int


class KVStep(Frozen):
    """One step every worker runs on its cache (``numaplan.runtime.kv_step``).

    ``op``: ``add`` / ``remove`` (``seq_ids``), ``popn`` (``seq_ids[0]``, ``n``), ``clear``,
    ``prefill`` (``tokens``: one list per sequence), ``decode`` (``tokens``: one id per
    sequence). Worker 0 keeps the step's logits for the controller (:func:`take_logits`).
    """

    op: Literal["add", "remove", "popn", "clear", "prefill", "decode"]
    seq_ids: tuple[int, ...] = ()
    tokens: tuple[Any, ...] = ()
    n: int = 0


class KVStepDone(Frozen):
    """A step's answer: the tokens each of the step's sequences now holds, and the time."""

    lengths: dict[int, int] = Field(default_factory=dict)
    seconds: float = 0.0


class CollectiveCounters(Frozen):
    """The numeric counters of a worker's collective (empty without one)."""

    counters: dict[str, float] = Field(default_factory=dict)


class WorkerFailure(Frozen):
    """A worker function's exception, sent instead of its result.

    ``user`` tells a :class:`~numaplan.errors.NumaplanError` (the user's to fix: the controller
    raises the same class again) from anything else (a bug: the controller reports it with the
    phase and logs ``trace``). A :class:`~numaplan.errors.CollectiveError` keeps its ``rank``,
    ``peer`` and ``reason``.
    """

    type: str
    message: str
    user: bool
    trace: str = ""
    rank: int | None = None
    peer: int | None = None
    reason: str | None = None

    @classmethod
    def of(cls, exc: BaseException) -> WorkerFailure:
        """The failure that describes ``exc`` (call it in an ``except`` block: it keeps the
        traceback)."""
        extra = {}
        if isinstance(exc, CollectiveError):
            extra = {"rank": exc.rank, "peer": exc.peer, "reason": exc.reason}
        return cls(type=type(exc).__name__, message=str(exc),
                   user=isinstance(exc, NumaplanError),
                   trace=traceback.format_exc(limit=6), **extra)

    def error(self, message: str) -> NumaplanError:
        """The exception to raise in the controller: the worker's class (for a user error),
        with ``message``."""
        cls = error_class(self.type) if self.user else NumaplanError
        if issubclass(cls, CollectiveError):
            fields = {"rank": self.rank, "peer": self.peer, "reason": self.reason}
            return cls(message, **{k: v for k, v in fields.items() if v is not None})
        return cls(message)


class Reply(Frozen):
    """A worker function's answer: its result (a report's fields) or its failure."""

    ok: Any = None
    error: WorkerFailure | None = None

    def result(self, model: type[M]) -> M:
        """The result, validated as ``model`` (only for a reply without :attr:`error`)."""
        assert self.error is None, "a failed call has no result"
        return model.model_validate(self.ok)


def reporting(fn: Callable[..., Any]) -> Callable[..., str]:
    """Wrap a worker function: return its result, or its exception, as a :class:`Reply`'s JSON.

    An exception escaping a Python function on Disco's worker-0 thread reaches C++ and
    terminates the controller process; in a worker process it kills the worker. So nothing
    escapes: the controller reads :attr:`Reply.error` and raises there.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any) -> str:
        try:
            result = fn(*args)
            # round_trip: the declared fields only (computed ones are derived again on the
            # other side, whose strict models would refuse them)
            ok = result.model_dump(mode="json", round_trip=True) \
                if isinstance(result, BaseModel) else result
            return Reply(ok=ok).model_dump_json()
        except Exception as exc:
            return Reply(error=WorkerFailure.of(exc)).model_dump_json()

    return wrapper
