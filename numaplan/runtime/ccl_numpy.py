"""The collective's engines: the C kernel through ctypes, and a numpy fallback.

Both run the same protocol on the same shared-memory layout (see ``ccl_kernels.c`` and
:mod:`numaplan.runtime.ccl`). An engine is wired once per communicator with the address of
every control line and data slot (:class:`Wiring`) and then called once per chunk with raw
addresses; it returns 0 or an error code and leaves the details in ``err_*``.

The numpy fallback relies on the x86-64 memory model (total store order: stores become
visible in program order and loads are not reordered with older loads), so a plain store of
the sequence word after the data copy is a release and a plain load before the data reads is
an acquire. It refuses to start on other architectures.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import time
from dataclasses import dataclass, field

import numpy as np

from numaplan.runtime.ccl_native import (
    ERR_ABORTED,
    ERR_ARG,
    ERR_DEAD,
    ERR_MISMATCH,
    ERR_TIMEOUT,
    MAX_NODES,
    MAX_RANKS,
    OK,
    CclLibrary,
    Ctx,
    pid_namespace,
)

DT_F32, DT_F16, DT_BF16, DT_I32, DT_F64, DT_I64 = range(6)
OP_SUM, OP_PROD, OP_MIN, OP_MAX, OP_AVG = range(5)
ALG_ONE_SHOT, ALG_TWO_SHOT, ALG_HIERARCHICAL = range(3)
DTYPE_SIZES = {DT_F32: 4, DT_F16: 2, DT_BF16: 2, DT_I32: 4, DT_F64: 8, DT_I64: 8}
_STORAGE = {DT_F32: np.float32, DT_F16: np.float16, DT_BF16: np.uint16, DT_I32: np.int32,
            DT_F64: np.float64, DT_I64: np.int64}
_ACC = {DT_F32: np.float32, DT_F16: np.float32, DT_BF16: np.float32, DT_I32: np.int64,
        DT_F64: np.float64, DT_I64: np.int64}
X86 = {"x86_64", "amd64", "i386", "i686"}
_PACK8 = struct.Struct("=8Q").pack_into
_PACK7 = struct.Struct("=7Q").pack_into
_PACK6 = struct.Struct("=6Q").pack_into


@dataclass
class Wiring:
    """Addresses and topology one engine needs (filled by the communicator)."""

    world: int
    rank: int
    n_nodes: int
    my_node: int
    leader: int
    members: tuple[int, ...]
    node_leader: tuple[int, ...]
    node_of: tuple[int, ...]
    inter_rank: tuple[int, ...]
    remote_rank: tuple[int, ...]
    inter_node: tuple[int, ...]
    remote_node: tuple[int, ...]
    slot_bytes: int
    in_line: list[int] = field(default_factory=list)
    red_line: list[int] = field(default_factory=list)
    done_line: list[int] = field(default_factory=list)
    in_slot: list[tuple[int, int]] = field(default_factory=list)
    part_line: list[int] = field(default_factory=list)
    fin_line: list[int] = field(default_factory=list)
    part_slot: list[tuple[int, int]] = field(default_factory=list)
    abort_line: int = 0
    timeout_ns: int = 30_000_000_000
    spin_ns: int = 50_000
    yield_ns: int = 2_000_000
    sleep_max_ns: int = 200_000
    check_ns: int = 50_000_000


class CEngine:
    """The compiled kernel."""

    kind = "c"

    def __init__(self, lib: CclLibrary, w: Wiring) -> None:
        self.lib = lib
        c = self._ctx = Ctx()
        c.world, c.rank, c.n_nodes, c.my_node = w.world, w.rank, w.n_nodes, w.my_node
        c.leader, c.is_leader, c.n_members = w.leader, int(w.leader == w.rank), len(w.members)
        for i, q in enumerate(w.members):
            c.members[i] = q
        for k in range(w.n_nodes):
            c.node_leader[k] = w.node_leader[k]
            c.inter_node[k] = w.inter_node[k]
            c.remote_node[k] = w.remote_node[k]
            c.part_line[k] = w.part_line[k]
            c.fin_line[k] = w.fin_line[k]
            c.part_slot[k][0], c.part_slot[k][1] = w.part_slot[k]
        for q in range(w.world):
            c.node_of[q] = w.node_of[q]
            c.inter_rank[q] = w.inter_rank[q]
            c.remote_rank[q] = w.remote_rank[q]
            c.in_line[q], c.red_line[q], c.done_line[q] = w.in_line[q], w.red_line[q], \
                w.done_line[q]
            c.in_slot[q][0], c.in_slot[q][1] = w.in_slot[q]
        c.pid_self = os.getpid()
        c.pidns_self = pid_namespace()
        c.slot_bytes = w.slot_bytes
        c.abort_line = w.abort_line
        c.timeout_ns, c.spin_ns, c.yield_ns = w.timeout_ns, w.spin_ns, w.yield_ns
        c.sleep_max_ns, c.check_ns = w.sleep_max_ns, w.check_ns
        self.ptr = ctypes.pointer(c)
        self._args = memoryview(c.args).cast("B")
        self._f_allreduce = lib.allreduce_a
        self._f_bcast = lib.bcast_a
        self._f_allgather = lib.allgather_a

    # The hot path: pack the arguments into ctx.args, one ctypes call (see ccl_kernels.c).
    def allreduce(self, xa: int, oa: int, count: int, dtype: int, op: int, algo: int, seq: int,
                  desc: int) -> int:
        _PACK8(self._args, 0, xa, oa, count, dtype, op, algo, seq, desc)
        return self._f_allreduce(self.ptr)

    def bcast(self, sa: int, src_bytes: int, da: int, lo: int, hi: int, seq: int, desc: int
              ) -> int:
        _PACK7(self._args, 0, sa, src_bytes, da, lo, hi, seq, desc)
        return self._f_bcast(self.ptr)

    def allgather(self, xa: int, nbytes: int, oa: int, stride: int, seq: int, desc: int) -> int:
        _PACK6(self._args, 0, xa, nbytes, oa, stride, seq, desc)
        return self._f_allgather(self.ptr)

    # errors and counters
    @property
    def err(self) -> tuple[int, int, int, int]:
        c = self._ctx
        return c.err_code, c.err_rank, c.err_seen, c.err_desc

    def counters(self) -> tuple[int, int, int, int]:
        c = self._ctx
        return c.read_bytes, c.inter_bytes, c.remote_bytes, c.wait_ns

    def reset_counters(self) -> None:
        c = self._ctx
        c.read_bytes = c.inter_bytes = c.remote_bytes = c.wait_ns = 0

    def load(self, address: int) -> int:
        return self.lib.load_acquire(address)

    def store(self, address: int, value: int) -> None:
        self.lib.store_release(address, value)

    def set_timeout(self, seconds: float) -> None:
        self._ctx.timeout_ns = int(seconds * 1e9)

    def process_dead(self, pid: int) -> bool:
        return bool(self.lib.process_dead(pid))


def _u64(address: int, n: int = 3) -> np.ndarray:
    return np.ctypeslib.as_array((ctypes.c_uint64 * n).from_address(address))


def _bytes(address: int, n: int) -> np.ndarray:
    if n == 0:
        return np.empty(0, np.uint8)
    return np.ctypeslib.as_array((ctypes.c_uint8 * n).from_address(address))


def _typed(address: int, count: int, dtype: int) -> np.ndarray:
    return _bytes(address, count * DTYPE_SIZES[dtype]).view(_STORAGE[dtype])


def process_dead(pid: int) -> bool:
    """The process is gone or a zombie (numpy engine's liveness check)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.ESRCH
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    rest = stat[stat.rfind(")") + 2:]
    return rest[:1] in ("Z", "X")


def _bf16_to_f32(u: np.ndarray) -> np.ndarray:
    return (u.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _f32_to_bf16(f: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(f, dtype=np.float32).view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    r = r.astype(np.uint16)
    if nan.any():
        r[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)
    return r


def np_reduce(dst: np.ndarray, srcs: list[np.ndarray], dtype: int, op: int, final: bool,
              world: int) -> None:
    """The numpy twin of the C ``reduce``: same order, same accumulation types."""
    acc_t = _ACC[dtype]

    def load(a: np.ndarray) -> np.ndarray:
        return _bf16_to_f32(a) if dtype == DT_BF16 else a.astype(acc_t)

    acc = load(srcs[0])
    ufunc = {OP_SUM: np.add, OP_AVG: np.add, OP_PROD: np.multiply, OP_MIN: np.minimum,
             OP_MAX: np.maximum}[op]
    for s in srcs[1:]:
        ufunc(acc, load(s), out=acc)
    if final and op == OP_AVG:
        if np.issubdtype(acc_t, np.integer):
            acc = np.sign(acc) * (np.abs(acc) // world)  # C division truncates toward zero
        else:
            acc /= acc_t(world)
    if dtype == DT_BF16:
        dst[...] = _f32_to_bf16(acc)
    else:
        dst[...] = acc.astype(dst.dtype, casting="unsafe")


class _Fail(Exception):
    def __init__(self, code: int, rank: int, seen: int = 0, desc: int = 0) -> None:
        super().__init__(code)
        self.args4 = (code, rank, seen, desc)


class NumpyEngine:
    """The same protocol in numpy (x86-64 only; see the module docstring)."""

    kind = "numpy"

    def __init__(self, w: Wiring) -> None:
        if platform.machine().lower() not in X86:
            raise OSError(f"the numpy fallback of the collective relies on x86-64 memory "
                          f"ordering and cannot run on {platform.machine()}; install a C "
                          f"compiler so the C kernel can be built")
        self.w = w
        self.pid_self = os.getpid()
        self.pidns_self = pid_namespace()
        self.in_line = [_u64(a) for a in w.in_line]
        self.red_line = [_u64(a, 1) for a in w.red_line]
        self.done_line = [_u64(a, 3) for a in w.done_line]
        self.part_line = [_u64(a) for a in w.part_line]
        self.fin_line = [_u64(a) for a in w.fin_line]
        self.abort_line = _u64(w.abort_line, 1)
        self.err = (OK, 0, 0, 0)
        self.reset_counters()

    # -- plumbing -----------------------------------------------------------------------------
    def counters(self) -> tuple[int, int, int, int]:
        return self.read_bytes, self.inter_bytes, self.remote_bytes, self.wait_ns

    def reset_counters(self) -> None:
        self.read_bytes = self.inter_bytes = self.remote_bytes = self.wait_ns = 0

    def load(self, address: int) -> int:
        return int(_u64(address, 1)[0])

    def store(self, address: int, value: int) -> None:
        _u64(address, 1)[0] = value

    def set_timeout(self, seconds: float) -> None:
        self.w.timeout_ns = int(seconds * 1e9)

    def process_dead(self, pid: int) -> bool:
        return process_dead(pid)

    def _count(self, n: int, inter: int, remote: int) -> None:
        self.read_bytes += n
        if inter:
            self.inter_bytes += n
        if remote:
            self.remote_bytes += n

    def _wait(self, lines: list[np.ndarray], who: list[int], seq: int, desc: int | None
              ) -> None:
        w = self.w
        i, n = 0, len(lines)
        t0 = last = 0
        sleep = 2e-6
        while True:
            while i < n and int(lines[i][0]) >= seq:
                if desc is not None:
                    d = int(lines[i][1 + (seq & 1)])
                    if d != desc:
                        raise _Fail(ERR_MISMATCH, who[i], int(lines[i][0]), d)
                i += 1
            if i == n:
                break
            t = time.perf_counter_ns()
            if not t0:
                t0 = last = t
                continue
            waited = t - t0
            if waited > w.timeout_ns:
                raise _Fail(ERR_TIMEOUT, who[i], int(lines[i][0]))
            if t - last > w.check_ns:
                last = t
                ab = int(self.abort_line[0])
                if ab and ab != w.rank + 1:
                    raise _Fail(ERR_ABORTED, ab - 1)
                pid = int(self.done_line[who[i]][1])
                ns = int(self.done_line[who[i]][2])
                if pid != self.pid_self and ns == self.pidns_self != 0 and process_dead(pid):
                    raise _Fail(ERR_DEAD, who[i], pid)
            if waited < w.yield_ns:
                time.sleep(0)  # releases the GIL: rank 0 shares it with the controller
            else:
                time.sleep(sleep)
                sleep = min(sleep * 2, w.sleep_max_ns * 1e-9)
        if t0:
            self.wait_ns += time.perf_counter_ns() - t0

    @staticmethod
    def _publish(line: np.ndarray, seq: int, desc: int) -> None:
        line[1 + (seq & 1)] = desc
        line[0] = seq  # after the data and the descriptor: TSO keeps the order

    def _slot(self, q: int, p: int, count: int, dtype: int, offset: int = 0) -> np.ndarray:
        return _typed(self.w.in_slot[q][p] + offset, count, dtype)

    def _run(self, fn, *args) -> int:
        try:
            fn(*args)
        except _Fail as f:
            self.err = f.args4
            return f.args4[0]
        return OK

    # -- collectives --------------------------------------------------------------------------
    def allreduce(self, xa: int, oa: int, count: int, dtype: int, op: int, algo: int, seq: int,
                  desc: int) -> int:
        if dtype not in DTYPE_SIZES or not 0 <= op <= OP_AVG or \
                count * DTYPE_SIZES[dtype] > self.w.slot_bytes or algo not in (0, 1, 2):
            self.err = (ERR_ARG, self.w.rank, 0, 0)
            return ERR_ARG
        impl = (self._one_shot, self._two_shot, self._hierarchical)[algo]
        rc = self._run(impl, _typed(xa, count, dtype), _typed(oa, count, dtype), count, dtype,
                       op, seq, desc)
        if rc == OK:
            self.done_line[self.w.rank][0] = seq
        return rc

    def _others(self, lines: list[np.ndarray]) -> tuple[list[np.ndarray], list[int]]:
        who = [q for q in range(self.w.world) if q != self.w.rank]
        return [lines[q] for q in who], who

    def _one_shot(self, x, out, count, dtype, op, seq, desc) -> None:
        w, r, p = self.w, self.w.rank, seq & 1
        nb = count * DTYPE_SIZES[dtype]
        self._slot(r, p, count, dtype)[...] = x
        self._publish(self.in_line[r], seq, desc)
        self._wait(*self._others(self.in_line), seq, desc)
        srcs = []
        for q in range(w.world):
            if q == r:
                srcs.append(x)
            else:
                srcs.append(self._slot(q, p, count, dtype))
                self._count(nb, w.inter_rank[q], w.remote_rank[q])
        np_reduce(out, srcs, dtype, op, True, w.world)

    @staticmethod
    def _slice(count: int, es: int, world: int, q: int) -> tuple[int, int]:
        align = 1 if es >= 64 else 64 // es
        per = -(-count // world)
        per = -(-per // align) * align
        return min(per * q, count), min(per * (q + 1), count)

    def _two_shot(self, x, out, count, dtype, op, seq, desc) -> None:
        w, r, p = self.w, self.w.rank, seq & 1
        es = DTYPE_SIZES[dtype]
        mine = self._slot(r, p, count, dtype)
        mine[...] = x
        self._publish(self.in_line[r], seq, desc)
        self._wait(*self._others(self.in_line), seq, desc)
        lo, hi = self._slice(count, es, w.world, r)
        srcs = []
        for q in range(w.world):
            if q == r:
                srcs.append(x[lo:hi])
            else:
                srcs.append(self._slot(q, p, count, dtype)[lo:hi])
                self._count((hi - lo) * es, w.inter_rank[q], w.remote_rank[q])
        np_reduce(mine[lo:hi], srcs, dtype, op, True, w.world)
        self.red_line[r][0] = seq
        out[lo:hi] = mine[lo:hi]
        self._wait(*self._others(self.red_line), seq, None)
        for q in range(w.world):
            if q != r:
                a, b = self._slice(count, es, w.world, q)
                out[a:b] = self._slot(q, p, count, dtype)[a:b]
                self._count((b - a) * es, w.inter_rank[q], w.remote_rank[q])

    def _hierarchical(self, x, out, count, dtype, op, seq, desc) -> None:
        w, r, p, me = self.w, self.w.rank, seq & 1, self.w.my_node
        nb = count * DTYPE_SIZES[dtype]
        if w.leader != r:
            self._slot(r, p, count, dtype)[...] = x
            self._publish(self.in_line[r], seq, desc)
            self._wait([self.fin_line[me]], [w.leader], seq, desc)
            out[...] = self._slot(w.leader, p, count, dtype)
            self._count(nb, w.inter_rank[w.leader], w.remote_rank[w.leader])
            return
        self._publish(self.in_line[r], seq, desc)
        self._wait([self.in_line[q] for q in w.members], list(w.members), seq, desc)
        srcs = [x]
        for q in w.members:
            srcs.append(self._slot(q, p, count, dtype))
            self._count(nb, w.inter_rank[q], w.remote_rank[q])
        if w.n_nodes == 1:
            np_reduce(out, srcs, dtype, op, True, w.world)
        else:
            part = _typed(w.part_slot[me][p], count, dtype)
            np_reduce(part, srcs, dtype, op, False, w.world)
            self._publish(self.part_line[me], seq, desc)
            others = [k for k in range(w.n_nodes) if k != me]
            self._wait([self.part_line[k] for k in others], [w.node_leader[k] for k in others],
                       seq, desc)
            parts = []
            for k in range(w.n_nodes):
                parts.append(_typed(w.part_slot[k][p], count, dtype))
                if k != me:
                    self._count(nb, w.inter_node[k], w.remote_node[k])
            np_reduce(out, parts, dtype, op, True, w.world)
        if w.members:
            self._slot(r, p, count, dtype)[...] = out
            self._publish(self.fin_line[me], seq, desc)

    def bcast(self, sa: int, src_bytes: int, da: int, lo: int, hi: int, seq: int, desc: int
              ) -> int:
        w = self.w
        if src_bytes > w.slot_bytes or hi < lo or hi > src_bytes:
            self.err = (ERR_ARG, w.rank, 0, 0)
            return ERR_ARG
        rc = self._run(self._bcast, sa, src_bytes, da, lo, hi, seq, desc)
        if rc == OK:
            self.done_line[w.rank][0] = seq
        return rc

    def _bcast(self, sa, src_bytes, da, lo, hi, seq, desc) -> None:
        w, p = self.w, seq & 1
        if w.rank == 0:
            others = list(range(1, w.world))
            self._wait([self.done_line[q] for q in others], others, seq - 1, None)
            _bytes(w.in_slot[0][p], src_bytes)[...] = _bytes(sa, src_bytes)
            self._publish(self.in_line[0], seq, desc)
            if hi > lo and da != sa + lo:
                _bytes(da, hi - lo)[...] = _bytes(sa + lo, hi - lo)
        else:
            self._wait([self.in_line[0]], [0], seq, desc)
            if hi > lo:
                _bytes(da, hi - lo)[...] = _bytes(w.in_slot[0][p] + lo, hi - lo)
                self._count(hi - lo, w.inter_rank[0], w.remote_rank[0])

    def allgather(self, xa: int, nbytes: int, oa: int, stride: int, seq: int, desc: int) -> int:
        w = self.w
        if nbytes > w.slot_bytes:
            self.err = (ERR_ARG, w.rank, 0, 0)
            return ERR_ARG
        rc = self._run(self._allgather, xa, nbytes, oa, stride, seq, desc)
        if rc == OK:
            self.done_line[w.rank][0] = seq
        return rc

    def _allgather(self, xa, nbytes, oa, stride, seq, desc) -> None:
        w, r, p = self.w, self.w.rank, seq & 1
        _bytes(w.in_slot[r][p], nbytes)[...] = _bytes(xa, nbytes)
        self._publish(self.in_line[r], seq, desc)
        if oa + r * stride != xa:
            _bytes(oa + r * stride, nbytes)[...] = _bytes(xa, nbytes)
        self._wait(*self._others(self.in_line), seq, desc)
        for q in range(w.world):
            if q != r:
                _bytes(oa + q * stride, nbytes)[...] = _bytes(w.in_slot[q][p], nbytes)
                self._count(nbytes, w.inter_rank[q], w.remote_rank[q])


__all__ = ["MAX_NODES", "MAX_RANKS", "CEngine", "NumpyEngine", "Wiring", "np_reduce"]
