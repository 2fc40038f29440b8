"""The KV cache's memory: allocated by a library's own function, bound to the worker's node
and audited where resident (numaplan.runtime.kv_placement)."""

from __future__ import annotations

import mmap

import numpy as np
import pytest

from numaplan.errors import PlacementError
from numaplan.osnuma import get_mempolicy, restore_mempolicy
from numaplan.runtime.kv_placement import audit_kv, check_kv_placement, create_on_node

MB = 1 << 20


def _lazy_alloc(nbytes: int = 4 * MB):
    """What TVM's create function does, as far as placement goes: map memory, touch none."""
    return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


@pytest.fixture
def _policy_restored():
    before = get_mempolicy()
    yield
    restore_mempolicy(before)


@pytest.mark.usefixtures("_policy_restored")
def test_lazy_memory_is_found_bound_and_audited_where_resident_for_real():
    """On this machine (node 0): the untouched mapping is found; its pages are audited as they
    become resident (half of them written by another thread: the range policy holds for it);
    the thread's policy is back as it was."""
    import threading

    before = get_mempolicy()
    mm, mem = create_on_node(_lazy_alloc, 0)
    try:
        assert get_mempolicy() == before
        assert any(hi - lo >= 4 * MB for lo, hi in mem.ranges)
        kv = audit_kv(mem)
        assert kv.bytes_mapped >= 4 * MB and kv.audited and kv.complete
        view = np.frombuffer(mm, dtype=np.uint8)
        t = threading.Thread(target=np.ndarray.fill, args=(view[: 2 * MB: 4096], 1))
        t.start()
        t.join()
        kv = audit_kv(mem)
        assert kv.pages_resident >= 512 and kv.pages_per_node == {0: kv.pages_resident}
        check_kv_placement(kv, 0, strict=True)
        assert "100.0% on node 0" in kv.describe()
        del view
    finally:
        mm.close()


def test_memory_is_bound_to_the_workers_node(fake_numa):
    """Two nodes (fake kernel): the new memory gets node 1's range policy, the thread policy is
    bound to node 1 during the call only; pages reported elsewhere fail strict mode."""
    kernel = fake_numa(nodes=(0, 1))
    seen = []

    def create():
        seen.append(kernel.thread_nodes)
        return _lazy_alloc()

    mm, mem = create_on_node(create, 1)
    assert seen == [(1,)] and kernel.thread_nodes == ()  # bound for the call, then restored
    assert any(hi - lo >= 4 * MB and nodes == (1,) for lo, hi, nodes in kernel.ranges)
    kv = audit_kv(mem)  # the fake kernel reports every page, as if all were resident
    assert kv.complete and set(kv.pages_per_node) == {1} and not kv.downgrades
    bad = audit_kv(mem, page_query=lambda pages: np.zeros(len(pages), np.int64))
    assert not bad.complete and bad.pages_per_node == {0: bad.pages_resident}
    check_kv_placement(bad, 3, strict=False)
    with pytest.raises(PlacementError, match=r"worker 3: strict placement refuses its KV cache "
                                             r".*0\.0% on node 1, elsewhere node 0"):
        check_kv_placement(bad, 3, strict=True)
    mm.close()


def test_refused_calls_downgrade_under_fallback(fake_numa):
    fake_numa(nodes=(0, 1), refuse={"set_mempolicy", "get_mempolicy", "mbind", "move_pages"})
    with pytest.raises(PlacementError, match=r"get_mempolicy failed \(EPERM"):
        create_on_node(_lazy_alloc, 1)
    mm, mem = create_on_node(_lazy_alloc, 1, allow_fallback=True)
    with pytest.raises(PlacementError, match=r"move_pages failed \(EPERM"):
        audit_kv(mem)
    kv = audit_kv(mem, allow_fallback=True)
    assert {d.call for d in kv.downgrades} == {"set_mempolicy", "get_mempolicy", "mbind",
                                               "move_pages"}
    assert not kv.audited and kv.bytes_mapped >= 4 * MB
    with pytest.raises(PlacementError, match="not audited"):
        check_kv_placement(kv, 0, strict=True)
    mm.close()


def test_added_ranges_cover_growth_and_new_mappings():
    from numaplan.osnuma.regions import added_ranges

    assert added_ranges([(0, 10)], [(0, 10)]) == []
    assert added_ranges([(10, 20)], [(0, 30)]) == [(0, 10), (20, 30)]
    assert added_ranges([], [(5, 8), (8, 9)]) == [(5, 9)]
