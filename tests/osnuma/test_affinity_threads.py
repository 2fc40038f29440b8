"""CPU affinity of the calling thread, of other threads, and the pinned thread set."""

from __future__ import annotations

import os
import threading

import pytest

from numaplan.errors import PlacementError
from numaplan.osnuma import affinity as af
from numaplan.osnuma.threads import PinnedThreads

CPUS = sorted(os.sched_getaffinity(0))


def _in_thread(fn):
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised in the test thread
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_pin_thread_and_read_back():
    cpu = CPUS[-1]

    def work():
        assert af.set_affinity({cpu}) == (cpu,)
        tid = af.current_thread_id()
        seen = af.read_thread_affinity(tid)
        return af.get_affinity(0), seen

    own, seen = _in_thread(work)
    assert own == (cpu,)
    assert seen.cpus_allowed == (cpu,) and seen.pid == os.getpid()
    assert seen.last_cpu in CPUS and seen.mems_allowed
    # pinning that thread did not touch this one
    assert af.get_affinity(0) == tuple(CPUS)


def test_pinned_context_restores():
    before = af.get_affinity(0)
    with af.pinned([CPUS[0]]) as got:
        assert got == (CPUS[0],) == af.get_affinity(0)
    assert af.get_affinity(0) == before


def test_pin_to_missing_cpu_is_refused():
    with pytest.raises(PlacementError, match=r"sched_setaffinity failed .*CPUs 1000.*cpuset"):
        af.set_affinity([1000])
    with pytest.raises(PlacementError, match="empty CPU set"):
        af.set_affinity([])
    assert af.get_affinity(0) == tuple(CPUS)


def test_missing_thread():
    with pytest.raises(PlacementError, match="no thread 999999999"):
        af.read_thread_affinity(999999999)


def test_pinned_threads_are_audited_from_proc():
    """What the runtime will do: start pinned workers, then audit every thread from /proc."""
    with PinnedThreads(CPUS, name="t-pin") as pool:
        assert len(pool) == len(CPUS)
        assert pool.run(lambda k: af.get_affinity(0)) == [(c,) for c in CPUS]
        by_tid = {t.tid: t for t in af.process_thread_affinities()}
        for k, (tid, cpu) in enumerate(zip(pool.thread_ids, CPUS, strict=True)):
            assert by_tid[tid].cpus_allowed == (cpu,)
            assert by_tid[tid].name == f"t-pin-{k}"
        assert pool.run_one(0, lambda k: k * 10) == 0
        with pytest.raises(ZeroDivisionError):
            pool.run(lambda k: 1 // 0)
        assert pool.run(lambda k: k) == list(range(len(CPUS)))  # still usable


def test_pinned_threads_fail_loudly_on_bad_cpu():
    with pytest.raises(PlacementError, match="CPUs 1000"):
        PinnedThreads([CPUS[0], 1000])
