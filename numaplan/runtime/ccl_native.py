"""The collective's C kernel (``ccl_kernels.c``): build at first use, bind through ctypes.

Built and cached by :mod:`numaplan._cbuild`, like the measurement kernels: the first choice of
flags is ``-O3 -march=native`` (the library is built on, and for, the machine that runs it, and
its cache key includes the CPU's feature flags); when that is refused the portable ``-O2`` build
is used; ``NUMAPLAN_CCL_PORTABLE=1`` asks for it directly (its cache key leaves the CPU's flags
out, so one build serves machines of one architecture, e.g. a host and the QEMU guests it
prepares).

ctypes releases the GIL for the duration of every foreign call: a rank waiting for its peers
inside the C code does not hold up the other Python threads of its process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

from numaplan import _cbuild
from numaplan._cbuild import compile_cached, find_compiler
from numaplan.errors import CBuildError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("ccl_kernels.c")
FLAG_CHOICES: tuple[tuple[str, ...], ...] = (
    ("-O3", "-march=native", "-shared", "-fPIC"),
    ("-O2", "-shared", "-fPIC"),
)
MAX_RANKS = 256
MAX_NODES = 64

# Return codes of the C functions (CCL_ERR_* in ccl_kernels.c).
OK, ERR_TIMEOUT, ERR_DEAD, ERR_ABORTED, ERR_MISMATCH, ERR_ARG = range(6)


_i32, _u64, _i64, _vp = ctypes.c_int32, ctypes.c_uint64, ctypes.c_int64, ctypes.c_void_p


class Ctx(ctypes.Structure):
    """Mirror of ``ccl_ctx`` in ``ccl_kernels.c`` (same fields, same order)."""

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


def pid_namespace() -> int:
    """Inode of this process's pid namespace (0 when unknown): liveness checks compare it."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


class CclLibrary:
    """The loaded C kernel: ``allreduce``, ``bcast``, ``allgather``, ``reduce`` and atomics."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))  # CDLL (not PyDLL): calls release the GIL
        self.path = path
        lib.ccl_ctx_size.restype = _u64
        if lib.ccl_ctx_size() != ctypes.sizeof(Ctx):
            raise CBuildError(f"{path}: ccl_ctx is {lib.ccl_ctx_size()} bytes in C but "
                                f"{ctypes.sizeof(Ctx)} in Python; rebuild")
        p = ctypes.POINTER(Ctx)
        ci = ctypes.c_int
        self.allreduce = lib.ccl_allreduce
        self.allreduce.argtypes = [p, _vp, _vp, _u64, ci, ci, ci, _u64, _u64]
        self.allreduce.restype = ci
        self.bcast = lib.ccl_bcast
        self.bcast.argtypes = [p, _vp, _u64, _vp, _u64, _u64, _u64, _u64]
        self.bcast.restype = ci
        self.allgather = lib.ccl_allgather
        self.allgather.argtypes = [p, _vp, _u64, _vp, _u64, _u64, _u64]
        self.allgather.restype = ci
        # packed-argument entry points: f(pointer(ctx)) with ctx.args filled by pack_into;
        # no argtypes on purpose (the ctypes pointer object is passed as is: cheapest call)
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
        self.process_dead = lib.ccl_process_dead
        self.process_dead.argtypes, self.process_dead.restype = [_i32], ci


def library_path(cc: list[str], flags: tuple[str, ...], cache: Path | None = None) -> Path:
    """Where the library built by ``cc`` with ``flags`` from the current source is cached."""
    return _cbuild.library_path(SOURCE, "ccl", cc, flags, cache)


def compile_library(cc: list[str] | None = None, cache: Path | None = None) -> Path:
    """Build ``ccl_kernels.c`` (or reuse the cached build) and return the library path.

    Raises
    ------
    CBuildError
        No compiler, or every flag set failed.
    """
    cc = cc or find_compiler()
    if not cc:
        raise CBuildError("no C compiler found (set CC or install gcc)")
    choices = FLAG_CHOICES[-1:] if os.environ.get("NUMAPLAN_CCL_PORTABLE") == "1" \
        else FLAG_CHOICES
    return compile_cached(SOURCE, "ccl", choices, cc=cc, cache=cache)


_loaded: dict[Path, CclLibrary] = {}
_load_lock = threading.Lock()


def load_library() -> CclLibrary:
    """The compiled kernel, built at first use and loaded once per process.

    Raises
    ------
    CBuildError
        When it cannot be built or loaded.
    """
    path = compile_library()
    with _load_lock:
        if path not in _loaded:
            try:
                _loaded[path] = CclLibrary(path)
            except OSError as exc:
                raise CBuildError(f"cannot load {path}: {exc}") from None
        return _loaded[path]
