"""A fake NUMA kernel for tests of multi-node placement on a one-node machine.

:class:`FakeKernel` is a :class:`~numaplan.osnuma.backend.NumaBackend` that keeps the policies
``mbind`` and ``set_mempolicy`` set and answers ``move_pages`` (``nodes=NULL``) as the kernel
would after first touch: a page is on the first node of the last range policy covering it, else
of the thread policy, else on node 0. It can refuse any call with an errno (a container without
``CAP_SYS_NICE``). The :func:`fake_numa` fixture installs it as every backend and makes the
node-validation helpers see its nodes.
"""

from __future__ import annotations

import errno as _errno

import numpy as np
import pytest

from numaplan.osnuma import backend as _backend
from numaplan.osnuma import mempolicy as _mp
from numaplan.osnuma.backend import MPOL_F_MEMS_ALLOWED, NumaBackend, NumaCallError, nodemask_ids
from numaplan.osnuma.system import PAGE_SIZE


class FakeKernel(NumaBackend):
    """Policies kept in Python; pages reported where those policies put them.

    Parameters
    ----------
    nodes
        The online nodes (all with memory, all allowed).
    refuse
        Calls to refuse (``"mbind"``, ``"set_mempolicy"``, ``"get_mempolicy"``,
        ``"move_pages"``), each with ``err``.
    """

    name = "fake"

    def __init__(self, nodes=(0, 1), refuse=(), err: int = _errno.EPERM) -> None:
        self.nodes = tuple(nodes)
        self.refuse = set(refuse)
        self.err = err
        self.ranges: list[tuple[int, int, tuple[int, ...]]] = []
        self.thread_nodes: tuple[int, ...] = ()
        self.thread_mode = 0
        self.calls: list[str] = []

    def _refused(self, call: str) -> None:
        self.calls.append(call)
        if call in self.refuse:
            raise NumaCallError(call, self.err)

    def set_mempolicy(self, mode, mask, maxnode):
        self._refused("set_mempolicy")
        self.thread_mode = mode
        self.thread_nodes = nodemask_ids(mask) if mask is not None else ()

    def get_mempolicy(self, mask, maxnode, addr, flags):
        self._refused("get_mempolicy")
        want = self.nodes if flags & MPOL_F_MEMS_ALLOWED else self.thread_nodes
        if mask is not None:
            for n in want:
                mask[n // 64] |= 1 << (n % 64)
        return 0 if flags & MPOL_F_MEMS_ALLOWED else self.thread_mode

    def mbind(self, addr, length, mode, mask, maxnode, flags):
        self._refused("mbind")
        self.ranges.append((addr, addr + length, nodemask_ids(mask) if mask is not None else ()))

    def node_of(self, address: int) -> int:
        """Where the kernel would have put the page holding ``address``."""
        for lo, hi, nodes in reversed(self.ranges):
            if lo <= address < hi and nodes:
                return nodes[0]
        return self.thread_nodes[0] if self.thread_nodes else 0

    def move_pages(self, pid, pages, nodes, status, flags):
        self._refused("move_pages")
        status[:] = np.array([self.node_of(int(a) // PAGE_SIZE * PAGE_SIZE) for a in pages],
                             dtype=np.int32)
        return 0


@pytest.fixture
def fake_numa(monkeypatch):
    """``fake_numa(nodes=(0, 1), refuse=())`` -> the :class:`FakeKernel` now behind every
    NUMA call of this process."""

    def install(nodes=(0, 1), refuse=(), err: int = _errno.EPERM) -> FakeKernel:
        kernel = FakeKernel(nodes, refuse, err)
        monkeypatch.setattr(_backend, "_backends", {"libnuma": kernel, "syscall": kernel})
        monkeypatch.setattr(_mp, "online_nodes", lambda: kernel.nodes)
        monkeypatch.setattr(_mp, "_has_memory_nodes", lambda: kernel.nodes)
        monkeypatch.setattr(_mp, "allowed_memory_nodes", lambda: kernel.nodes)
        return kernel

    return install
