"""Thread memory policies (set/get_mempolicy) and range policies (mbind), for real."""

from __future__ import annotations

import errno

import pytest

from numaplan.errors import PlacementError
from numaplan.osnuma import mempolicy as mp
from numaplan.osnuma.backend import NumaBackend, NumaCallError
from numaplan.osnuma.buffer import NodeBuffer
from numaplan.osnuma.system import allowed_memory_nodes


@pytest.mark.parametrize(("mode", "nodes"), [("bind", (0,)), ("preferred", (0,)),
                                             ("interleave", (0,))])
def test_set_get_round_trip_then_default(backend, mode, nodes):
    assert mp.get_mempolicy(backend=backend).mode == "default"
    set_to = mp.set_mempolicy(mode, nodes, backend=backend)
    assert mp.get_mempolicy(backend=backend) == set_to == mp.MemPolicy(mode=mode, node_ids=nodes)
    mp.set_mempolicy("default", backend=backend)
    assert mp.get_mempolicy(backend=backend) == mp.MemPolicy(mode="default")


def test_thread_mempolicy_restores(backend):
    mp.set_mempolicy("preferred", [0], backend=backend)
    with mp.thread_mempolicy("bind", [0], backend=backend) as pol:
        assert mp.get_mempolicy(backend=backend) == pol
    assert mp.get_mempolicy(backend=backend) == mp.MemPolicy(mode="preferred", node_ids=(0,))


def test_mode_flags_round_trip(backend):
    mp.set_mempolicy("bind", [0], flags=["static-nodes"], backend=backend)
    assert mp.get_mempolicy(backend=backend).flags == ("static-nodes",)


def test_mems_allowed_matches_proc(backend):
    assert mp.mems_allowed(backend=backend) == allowed_memory_nodes()


def test_missing_node_is_refused_with_its_name(backend):
    with pytest.raises(PlacementError, match=r"node 7 does not exist \(online nodes: 0"):
        mp.set_mempolicy("bind", [7], backend=backend)
    with NodeBuffer(1 << 20) as buf, pytest.raises(PlacementError, match="node 7 does not exist"):
        buf.bind(7, backend=backend)


def test_not_allowed_node_is_refused(monkeypatch, backend):
    monkeypatch.setattr(mp, "allowed_memory_nodes", lambda: (5,))
    with pytest.raises(PlacementError, match=r"node 0 is not allowed .*Mems_allowed_list 5"):
        mp.set_mempolicy("bind", [0], backend=backend)
    with NodeBuffer(1 << 20) as buf, pytest.raises(PlacementError, match="not allowed"):
        # a wrong node is never "degraded around", even with allow_fallback
        buf.bind(0, allow_fallback=True, backend=backend)


@pytest.mark.parametrize(("mode", "nodes", "msg"), [
    ("preferred", (0, 1), "preferred takes one node"),
    ("bind", (), "needs at least one node"),
    ("default", (0,), "takes no nodes"),
    ("sideways", (0,), "unknown memory policy mode"),
])
def test_malformed_policies(mode, nodes, msg):
    with pytest.raises(PlacementError, match=msg):
        mp.set_mempolicy(mode, nodes)


def test_mbind_needs_alignment():
    with NodeBuffer(1 << 20) as buf, pytest.raises(PlacementError, match="page-aligned"):
        mp.mbind(buf.address + 8, 4096, "bind", [0])


def test_memory_node_of_touched_page(backend):
    with NodeBuffer(1 << 20) as buf:
        buf.bind(0, backend=backend)
        buf.touch()
        assert mp.memory_node_of(buf.address + 4096, backend=backend) == 0


class RefusingBackend(NumaBackend):
    """Refuses the modes in ``refuse`` with ``err`` (a container without CAP_SYS_NICE)."""

    name = "refusing"

    def __init__(self, refuse: set[int], err: int = errno.EPERM) -> None:
        self.refuse, self.err = refuse, err

    def set_mempolicy(self, mode, mask, maxnode):
        if mode & 0xff in self.refuse:
            raise NumaCallError("set_mempolicy", self.err)

    def mbind(self, addr, length, mode, mask, maxnode, flags):
        if mode & 0xff in self.refuse:
            raise NumaCallError("mbind", self.err)


def test_eperm_without_fallback_says_what_to_do():
    be = RefusingBackend({2})
    with pytest.raises(PlacementError, match=r"set_mempolicy failed \(EPERM.*CAP_SYS_NICE"):
        mp.apply_mempolicy("bind", [0], backend=be)
    with NodeBuffer(1 << 20) as buf, pytest.raises(PlacementError,
                                                   match=r"mbind failed \(EPERM.*SYS_NICE"):
        buf.bind(0, backend=be)


def test_fallback_records_what_was_achieved():
    out = mp.apply_mempolicy("bind", [0], allow_fallback=True, backend=RefusingBackend({2}))
    assert out.degraded and out.achieved == mp.MemPolicy(mode="preferred", node_ids=(0,))
    assert len(out.reasons) == 1 and "EPERM" in out.reasons[0]
    with NodeBuffer(1 << 20) as buf:
        out = buf.bind(0, allow_fallback=True, backend=RefusingBackend({1, 2}))
        assert out.achieved is None and out.degraded and len(out.reasons) == 2
        assert buf.bound is out
    ok = mp.apply_mempolicy("bind", [0], allow_fallback=True)
    assert not ok.degraded and ok.achieved == ok.requested
