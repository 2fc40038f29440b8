"""One rank's kernel context: the C kernel wired to the communicator's shared memory.

An :class:`Engine` fills the kernel's ``ccl_ctx`` once per communicator with the address of
every rank's control lines and data slots in the node segments, the rank's place in the
topology and the waiting policy, and is then called once per chunk with raw addresses. A call
returns 0 or an error code (:data:`numaplan.ccl_abi.ERR_TIMEOUT` ...) and leaves the details in
:attr:`Engine.err`.
"""

from __future__ import annotations

import ctypes
import os
import struct

from numaplan.runtime.ccl.kernel import Ctx, KernelLibrary
from numaplan.runtime.ccl.segments import ABORT_OFFSET, Segment
from numaplan.runtime.ccl.spec import CommSpec

# The hot path packs a call's arguments into ctx.args with one struct call: ~5x cheaper than
# ctypes converting nine arguments.
_PACK8 = struct.Struct("=8Q").pack_into
_PACK7 = struct.Struct("=7Q").pack_into
_PACK6 = struct.Struct("=6Q").pack_into


def pid_namespace() -> int:
    """Inode of this process's pid namespace (0 when unknown): liveness checks compare it."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


class Engine:
    """The kernel's context for ``rank`` of ``spec`` over the mapped ``segments``.

    Parameters
    ----------
    lib
        The loaded kernel (:func:`~numaplan.runtime.ccl.kernel.load_library`).
    spec, rank
        The communicator and this rank.
    segments
        node id -> every node's mapped segment.
    """

    def __init__(self, lib: KernelLibrary, spec: CommSpec, rank: int,
                 segments: dict[int, Segment]) -> None:
        self.lib = lib
        c = self._ctx = Ctx()
        nodes, groups = spec.nodes, spec.intra_node_groups
        index = {n: i for i, n in enumerate(nodes)}
        layouts = [segments[n].layout for n in nodes]
        bases = [segments[n].address for n in nodes]
        me = index[spec.node_of_rank[rank]]
        my_mem = spec.mem_node_of_rank[rank]
        c.world, c.rank, c.n_nodes, c.my_node = spec.world_size, rank, len(nodes), me
        c.leader, c.is_leader = groups[me][0], int(groups[me][0] == rank)
        c.n_members = len(groups[me]) - 1
        for i, q in enumerate(groups[me][1:]):
            c.members[i] = q
        for k, (lay, base) in enumerate(zip(layouts, bases, strict=True)):
            c.node_leader[k] = groups[k][0]
            c.inter_node[k] = int(k != me)
            c.remote_node[k] = int(lay.mem_node != my_mem)
            c.part_line[k] = base + lay.part_line()
            c.fin_line[k] = base + lay.fin_line()
            c.part_slot[k][0], c.part_slot[k][1] = base + lay.part_slot(0), \
                base + lay.part_slot(1)
        for q in range(spec.world_size):
            k = index[spec.node_of_rank[q]]
            lay, base, i = layouts[k], bases[k], groups[k].index(q)
            c.node_of[q] = k
            c.inter_rank[q] = int(k != me)
            c.remote_rank[q] = int(lay.mem_node != my_mem)
            c.in_line[q] = base + lay.in_line(i)
            c.red_line[q] = base + lay.red_line(i)
            c.done_line[q] = base + lay.done_line(i)
            c.in_slot[q][0], c.in_slot[q][1] = base + lay.in_slot(i, 0), base + lay.in_slot(i, 1)
        c.pid_self = os.getpid()
        c.pidns_self = pid_namespace()
        c.slot_bytes = spec.slot_stride
        c.abort_line = bases[0] + ABORT_OFFSET
        c.timeout_ns = int(spec.timeout_s * 1e9)
        c.spin_ns, c.yield_ns = int(spec.spin_us * 1e3), int(spec.yield_us * 1e3)
        c.sleep_max_ns, c.check_ns = int(spec.sleep_max_us * 1e3), int(spec.check_interval_s * 1e9)
        self.ptr = ctypes.pointer(c)
        self._args = memoryview(c.args).cast("B")
        self._f_allreduce = lib.allreduce_a
        self._f_bcast = lib.bcast_a
        self._f_allgather = lib.allgather_a
        self._root = rank == 0
        # Peers tell this process's death from its pid, within its pid namespace (published
        # first, so that a peer never checks a pid against a namespace not yet written).
        done = c.done_line[rank]
        self.store(done + 16, c.pidns_self)
        self.store(done + 8, os.getpid())

    # -- one chunk of a collective -----------------------------------------------------------
    # Each takes the call's fixed arguments, then the chunk (``offset``, ``nbytes``: bytes of
    # the message, at most one slot), its sequence number and descriptor, so that the
    # communicator's one chunk loop can call any of them; the hot path packs the kernel's
    # arguments and makes one ctypes call.
    def allreduce(self, xa: int, oa: int, esize: int, dtype: int, op: int, algo: int,
                  offset: int, nbytes: int, seq: int, desc: int) -> int:
        """Reduce the chunk's elements of ``xa`` into ``oa`` (``esize`` bytes each)."""
        _PACK8(self._args, 0, xa + offset, oa + offset, nbytes // esize, dtype, op, algo, seq,
               desc)
        return self._f_allreduce(self.ptr)

    def bcast(self, src: int, dst: int, lo: int, hi: int, offset: int, nbytes: int, seq: int,
              desc: int) -> int:
        """Rank 0 publishes the chunk of its message at ``src``; this rank receives the part
        of ``[lo, hi)`` (of the whole message) that the chunk holds, at ``dst + (part - lo)``.
        """
        a, b = max(lo, offset), min(hi, offset + nbytes)
        if a >= b:
            a = b = offset  # nothing of mine in this chunk: still take part
        _PACK7(self._args, 0, src + offset if self._root else 0, nbytes, dst + (a - lo),
               a - offset, b - offset, seq, desc)
        return self._f_bcast(self.ptr)

    def allgather(self, xa: int, oa: int, stride: int, offset: int, nbytes: int, seq: int,
                  desc: int) -> int:
        """``oa + q * stride + offset`` receives the chunk of rank q's message."""
        _PACK6(self._args, 0, xa + offset, nbytes, oa + offset, stride, seq, desc)
        return self._f_allgather(self.ptr)

    # -- errors, counters, waiting policy, atomics --------------------------------------------
    @property
    def err(self) -> tuple[int, int, int, int]:
        """The last failure: ``(code, peer, what the peer was at, the peer's descriptor)``."""
        c = self._ctx
        return c.err_code, c.err_rank, c.err_seen, c.err_desc

    def counters(self) -> tuple[int, int, int, int]:
        """Bytes read from peers' slots (all, across nodes, remote memory), ns waited."""
        c = self._ctx
        return c.read_bytes, c.inter_bytes, c.remote_bytes, c.wait_ns

    def reset_counters(self) -> None:
        """Zero :meth:`counters`."""
        c = self._ctx
        c.read_bytes = c.inter_bytes = c.remote_bytes = c.wait_ns = 0

    @property
    def timeout_s(self) -> float:
        """How long a call waits for a peer."""
        return self._ctx.timeout_ns / 1e9

    def set_timeout(self, seconds: float) -> None:
        """Change :attr:`timeout_s`."""
        self._ctx.timeout_ns = int(seconds * 1e9)

    def load(self, address: int) -> int:
        """The 64-bit word at ``address`` (acquire)."""
        return self.lib.load_acquire(address)

    def store(self, address: int, value: int) -> None:
        """Store the 64-bit ``value`` at ``address`` (release)."""
        self.lib.store_release(address, value)
