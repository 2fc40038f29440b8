"""What crosses the process boundary: every document round-trips through JSON, defaults come
from one place, and every error class of numaplan.errors arrives as itself."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest

from numaplan import errors
from numaplan.errors import CollectiveError, NumaplanError
from numaplan.plan import plan_from_dict
from numaplan.runtime.ccl import DEFAULT_TIMEOUT_S, CallKindStats, CommSpec, CommStats
from numaplan.runtime.protocol import (
    Reply,
    RunOptions,
    SetupReport,
    WorkerSpec,
    reporting,
)
from numaplan.runtime.supervision import Supervisor

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
ERROR_CLASSES = [c for _, c in inspect.getmembers(errors, inspect.isclass)
                 if issubclass(c, NumaplanError)]


def _across(fn, *args) -> Reply:
    """Run a worker function as a worker does and read its answer as the controller does."""
    return Reply.model_validate_json(json.dumps(json.loads(reporting(fn)(*args))))


def test_every_error_class_is_in_the_list():
    assert len(ERROR_CLASSES) >= 15 and NumaplanError in ERROR_CLASSES
    assert {"CollectiveError", "SegmentError", "CBuildError", "StalePlanError",
            "WorkerDiedError", "PlanFormatError", "PassOrderError",
            "BuildError"} <= {c.__name__ for c in ERROR_CLASSES}


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_error_keeps_its_class_across_the_process_boundary(cls):
    def fails():
        raise cls("it went wrong")

    reply = _across(fails)
    assert reply.error is not None and reply.error.user
    exc = Supervisor("ns-1", interval_s=1.0).worker_error(3, reply.error)
    assert type(exc) is cls
    assert str(exc) == "worker 3: it went wrong"
    assert exc.exit_code == cls.exit_code


def test_collective_error_keeps_its_fields():
    def fails():
        raise CollectiveError("rank 1: timed out", rank=1, peer=2, reason="timeout")

    exc = Supervisor("ns-1", interval_s=1.0).worker_error(1, _across(fails).error)
    assert type(exc) is CollectiveError
    assert (exc.rank, exc.peer, exc.reason) == (1, 2, "timeout")
    assert str(exc) == "worker 1: rank 1: timed out"


def test_a_bug_is_reported_with_the_phase():
    def fails():
        raise KeyError("x")

    reply = _across(fails)
    assert reply.error is not None and not reply.error.user and "KeyError" in reply.error.trace
    sup = Supervisor("ns-1", interval_s=1.0)
    sup.phase = "load"
    exc = sup.worker_error(2, reply.error)
    assert type(exc) is NumaplanError
    assert str(exc) == "worker 2 failed during load: KeyError: 'x'"


def test_results_cross_as_their_model():
    def setup():
        return SetupReport(worker_id=1, pid=10, tid=11, node_id=0, mem_node_id=0,
                           cpus_planned="0-1", cpus_thread="0-1", mempolicy="default",
                           pool_threads=2, notes=("a",))

    reply = _across(setup)
    assert reply.error is None and reply.result(SetupReport) == setup()
    stats = CommStats(rank=0, world_size=2, calls=1, bytes=8, time_s=1e-6,
                      per_kind={"allreduce": CallKindStats(calls=1, bytes=8, time_s=1e-6)},
                      allreduce_algorithms={"one_shot": 1}, bytes_read=8,
                      cross_node_bytes_read=0, remote_memory_bytes_read=0, wait_s=0.0)
    # computed fields (mean_us, percentages) do not cross: they are derived again
    assert _across(lambda: stats).result(CommStats) == stats
    assert _across(lambda: 0).ok == 0  # a plain value crosses as itself


def test_worker_spec_round_trip_and_defaults_from_one_place():
    plan = plan_from_dict(json.loads((GOLDEN / "2s1n.plan.json").read_text()))
    opts = RunOptions(inject_misplacement={1: 7}, inject_delay_s={"load": 0.5})
    spec = WorkerSpec.of(plan, "ns-2", opts)
    back = WorkerSpec.model_validate_json(spec.model_dump_json())
    assert back == spec and back.plan().digest() == plan.digest()
    assert back.options.inject_misplacement == {1: 7}  # int keys survive JSON
    # the collective's timeout default is the communicator's
    assert RunOptions().collective_timeout_s == DEFAULT_TIMEOUT_S == \
        CommSpec(namespace="x", node_of_rank=(0,)).timeout_s
