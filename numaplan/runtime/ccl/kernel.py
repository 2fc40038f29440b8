"""The collective's C kernel (``kernel.c`` beside this file): build at first use, bind with ctypes.

The kernel is the collective's only engine. It is built and cached by :mod:`numaplan._cbuild`,
like the measurement kernels: the first choice of flags is ``-O3 -march=native`` (the library is
built on, and for, the machine that runs it, and its cache key includes the CPU's feature
flags); when that is refused the portable ``-O2`` build is used; ``NUMAPLAN_CCL_PORTABLE=1``
asks for it directly (its cache key leaves the CPU's flags out, so one build serves machines of
one architecture, e.g. a host and the QEMU guests it prepares). Building a model library needs
a C compiler already, so the runtime needs nothing new; without one,
:class:`~numaplan.errors.CBuildError` says so in one line.

ctypes releases the GIL for the duration of every foreign call: a rank waiting for its peers
inside the C code does not hold up the other Python threads of its process.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

from numaplan import _cbuild
from numaplan._cbuild import NO_COMPILER, compile_cached, find_compiler
from numaplan.ccl_abi import MAX_NODES, MAX_RANKS
from numaplan.errors import CBuildError

SOURCE = Path(__file__).with_name("kernel.c")
FLAG_CHOICES: tuple[tuple[str, ...], ...] = (
    ("-O3", "-march=native", "-shared", "-fPIC"),
    ("-O2", "-shared", "-fPIC"),
)

_i32, _u64, _i64, _vp = ctypes.c_int32, ctypes.c_uint64, ctypes.c_int64, ctypes.c_void_p


class Ctx(ctypes.Structure):
    """Mirror of ``ccl_ctx`` in ``kernel.c`` (same fields, same order)."""

    _fields_ = [
        ("world", _i32), ("rank", _i32), ("n_nodes", _i32), ("my_node", _i32),
        ("leader", _i32), ("is_leader", _i32), ("n_members", _i32), ("unused", _i32),
        ("members", _i32 * MAX_RANKS),
        ("node_leader", _i32 * MAX_NODES),
        ("node_of", _i32 * MAX_RANKS),
        ("inter_rank", _i32 * MAX_RANKS),
        ("remote_rank", _i32 * MAX_RANKS),
        ("inter_node", _i32 * MAX_NODES),
        ("remote_node", _i32 * MAX_NODES),
        ("pid_self", _i32), ("pad1", _i32),
        ("slot_bytes", _u64),
        ("in_line", _vp * MAX_RANKS),
        ("red_line", _vp * MAX_RANKS),
        ("done_line", _vp * MAX_RANKS),
        ("in_slot", (_vp * 2) * MAX_RANKS),
        ("part_line", _vp * MAX_NODES),
        ("fin_line", _vp * MAX_NODES),
        ("part_slot", (_vp * 2) * MAX_NODES),
        ("abort_line", _vp),
        ("timeout_ns", _i64), ("spin_ns", _i64), ("yield_ns", _i64), ("sleep_max_ns", _i64),
        ("check_ns", _i64),
        ("err_code", _i32), ("err_rank", _i32),
        ("err_seen", _u64), ("err_desc", _u64),
        ("read_bytes", _u64), ("inter_bytes", _u64), ("remote_bytes", _u64), ("wait_ns", _u64),
        ("args", _u64 * 10),
        ("pidns_self", _u64),
    ]


class KernelLibrary:
    """The loaded kernel: the packed-argument collectives, the local reduction, two atomics.

    Attributes
    ----------
    allreduce_a, bcast_a, allgather_a
        ``f(pointer(ctx)) -> int``: one collective call (one chunk) with its arguments packed
        into ``ctx.args`` (see :class:`~numaplan.runtime.ccl.engine.Engine`).
    reduce
        ``ccl_reduce(dst, srcs, nsrc, count, dtype, op, final, world) -> int``: the local
        reduction every algorithm runs (tests compare it with a numpy oracle).
    load_acquire, store_release
        64-bit atomic load / store on shared memory (the abort word).
    """

    def __init__(self, path: Path, flags: tuple[str, ...] = ()) -> None:
        lib = ctypes.CDLL(str(path))  # CDLL (not PyDLL): calls release the GIL
        self.path = path
        self.flags = flags
        lib.ccl_ctx_size.restype = _u64
        if lib.ccl_ctx_size() != ctypes.sizeof(Ctx):
            raise CBuildError(f"{path}: ccl_ctx is {lib.ccl_ctx_size()} bytes in C but "
                              f"{ctypes.sizeof(Ctx)} in Python; rebuild")
        ci = ctypes.c_int
        # No argtypes on purpose: the ctypes pointer object is passed as is (the cheapest call).
        for name in ("allreduce_a", "bcast_a", "allgather_a"):
            f = getattr(lib, "ccl_" + name)
            f.restype = ci
            setattr(self, name, f)
        self.reduce = lib.ccl_reduce
        self.reduce.argtypes = [_vp, ctypes.POINTER(_vp), ci, _u64, ci, ci, ci, ci]
        self.reduce.restype = ci
        self.load_acquire = lib.ccl_load_acquire
        self.load_acquire.argtypes, self.load_acquire.restype = [_vp], _u64
        self.store_release = lib.ccl_store_release
        self.store_release.argtypes, self.store_release.restype = [_vp, _u64], None


    def describe(self) -> str:
        """``ccl-<key>.so (-O3 -march=native)``: which build runs the collective."""
        opt = " ".join(f for f in self.flags if f not in ("-shared", "-fPIC"))
        return f"{self.path.name} ({opt or 'flags unknown'})"


def library_path(cc: list[str], flags: tuple[str, ...], cache: Path | None = None) -> Path:
    """Where the library built by ``cc`` with ``flags`` from the current source is cached."""
    return _cbuild.library_path(SOURCE, "ccl", cc, flags, cache)


def compile_library(cc: list[str] | None = None, cache: Path | None = None) -> Path:
    """Build ``kernel.c`` (or reuse the cached build) and return the library path.

    Raises
    ------
    CBuildError
        No compiler, or every flag set failed.
    """
    cc = cc or find_compiler()
    if not cc:
        raise CBuildError(f"{NO_COMPILER}: numaplan's collective is C, built at first use")
    choices = FLAG_CHOICES[-1:] if os.environ.get("NUMAPLAN_CCL_PORTABLE") == "1" \
        else FLAG_CHOICES
    return compile_cached(SOURCE, "ccl", choices, cc=cc, cache=cache)


_loaded: dict[Path, KernelLibrary] = {}
_load_lock = threading.Lock()


def load_library() -> KernelLibrary:
    """The compiled kernel, built at first use and loaded once per process.

    Raises
    ------
    CBuildError
        When it cannot be built or loaded.
    """
    path = compile_library()
    cc = find_compiler()
    # compile_cached names each build after its flags: find which set this one was built with
    flags = next((f for f in FLAG_CHOICES if cc and library_path(cc, f) == path), ())
    with _load_lock:
        if path not in _loaded:
            try:
                _loaded[path] = KernelLibrary(path, flags)
            except OSError as exc:
                raise CBuildError(f"cannot load {path}: {exc}") from None
        return _loaded[path]
