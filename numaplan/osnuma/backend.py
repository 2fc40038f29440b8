"""The NUMA system calls, reached through libnuma or through raw ``syscall(2)``.

Four calls matter (``numaif.h``; man pages set_mempolicy(2), get_mempolicy(2), mbind(2),
move_pages(2)). ``libnuma.so.1`` exports thin wrappers with the same names and signatures; where
it is not installed the same calls go through libc's ``syscall(2)`` with the architecture's
numbers. Both report failure as ``-1`` plus ``errno``, so the two backends behave identically and
the tests run against both.

Node masks follow the kernel's convention (mbind(2)): an array of ``unsigned long`` words, bit
``n`` = node ``n``, and ``maxnode`` = number of bits + 1, because the kernel reads ``maxnode - 1``
bits (libnuma passes ``nodemask->size + 1`` for the same reason).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os
import platform
import threading
from collections.abc import Iterable
from enum import IntEnum
from pathlib import Path

from numaplan.errors import PlacementError

#: Environment variable that forces a backend: ``libnuma``, ``syscall`` or ``auto`` (default).
BACKEND_ENV = "NUMAPLAN_NUMA_BACKEND"

# Syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h).
SYSCALL_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {"mbind": 237, "set_mempolicy": 238, "get_mempolicy": 239, "move_pages": 279},
    "aarch64": {"mbind": 235, "set_mempolicy": 237, "get_mempolicy": 236, "move_pages": 239},
}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


class Mpol(IntEnum):
    """Memory policy modes (``include/uapi/linux/mempolicy.h``)."""

    DEFAULT = 0
    PREFERRED = 1
    BIND = 2
    INTERLEAVE = 3
    LOCAL = 4
    PREFERRED_MANY = 5
    WEIGHTED_INTERLEAVE = 6


# Mode flags OR-ed into the mode argument of set_mempolicy(2) / mbind(2).
MPOL_F_STATIC_NODES = 1 << 15
MPOL_F_RELATIVE_NODES = 1 << 14
MPOL_F_NUMA_BALANCING = 1 << 13
MPOL_MODE_FLAGS = MPOL_F_STATIC_NODES | MPOL_F_RELATIVE_NODES | MPOL_F_NUMA_BALANCING
# get_mempolicy(2) flags.
MPOL_F_NODE = 1 << 0
MPOL_F_ADDR = 1 << 1
MPOL_F_MEMS_ALLOWED = 1 << 2
# mbind(2) flags.
MPOL_MF_STRICT = 1 << 0
MPOL_MF_MOVE = 1 << 1
MPOL_MF_MOVE_ALL = 1 << 2

_ULONG_BITS = ctypes.sizeof(ctypes.c_ulong) * 8
#: Fallback mask width: MAX_NUMNODES with CONFIG_NODES_SHIFT=10, the largest x86_64 / arm64 build.
_DEFAULT_MASK_BITS = 1024


class NumaCallError(OSError):
    """A NUMA system call failed; ``call`` names it, ``errno`` says why."""

    def __init__(self, call: str, err: int) -> None:
        super().__init__(err, os.strerror(err))
        self.call = call


def errno_name(err: int) -> str:
    """``ENOENT`` for 2, ``errno 999`` for unknown numbers."""
    return _errno.errorcode.get(err, f"errno {err}")


# Why a call may fail and what the user can do, by errno (man pages: ERRORS sections).
_HINTS = {
    _errno.EPERM: "the container or seccomp profile refuses NUMA calls: run with CAP_SYS_NICE "
                  "(docker --cap-add SYS_NICE) or pass allow_fallback",
    _errno.ENOSYS: "this kernel was built without NUMA support (CONFIG_NUMA): pass allow_fallback",
    _errno.EINVAL: "a node is not allowed for this process or does not exist, or the range is "
                   "not page-aligned: check Mems_allowed_list in /proc/self/status",
    _errno.EIO: "MPOL_MF_STRICT: some pages already live on another node and could not be moved; "
                "bind before the first touch",
    _errno.ENOMEM: "the node has no free memory for this request",
    _errno.EFAULT: "the address range is not mapped",
    _errno.ESRCH: "no such process",
    _errno.EACCES: "moving another process's pages needs CAP_SYS_NICE",
}


def placement_error(exc: NumaCallError | OSError, what: str, *, call: str | None = None,
                    hint: str | None = None) -> PlacementError:
    """Turn a failed call into a :class:`PlacementError` naming the call, errno and a hint.

    Parameters
    ----------
    exc
        The failure (``errno`` is read from it).
    what
        What was being attempted, e.g. ``"bind 256 MiB at 0x7f.. to node 1"``.
    call
        The call's name; default ``exc.call``.
    hint
        Overrides the errno-based hint.
    """
    name = call or getattr(exc, "call", "call")
    err = exc.errno or 0
    tip = hint or _HINTS.get(err, "see the ERRORS section of the man page")
    return PlacementError(f"{name} failed ({errno_name(err)}: {os.strerror(err)}) while trying "
                          f"to {what}; {tip}", call=name, errno_name=errno_name(err))


# -- node masks ---------------------------------------------------------------------------------
_mask_bits_cache: int | None = None


def mask_bits() -> int:
    """Width of the node masks passed to the kernel, in bits.

    The width of ``Mems_allowed`` in ``/proc/self/status`` is the kernel's ``nr_node_ids`` rounded
    up to 32 bits, which get_mempolicy(2) requires as a minimum (EINVAL otherwise). Rounded up to
    whole ``unsigned long`` words.
    """
    global _mask_bits_cache
    if _mask_bits_cache is None:
        bits = _DEFAULT_MASK_BITS
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("Mems_allowed:"):
                    words = line.split(":", 1)[1].strip().split(",")
                    bits = max(32 * len(words), _ULONG_BITS)
                    break
        except OSError:
            pass
        _mask_bits_cache = -(-bits // _ULONG_BITS) * _ULONG_BITS
    return _mask_bits_cache


def make_nodemask(node_ids: Iterable[int], bits: int | None = None) -> ctypes.Array:
    """An ``unsigned long`` array with the bits of ``node_ids`` set.

    Raises
    ------
    PlacementError
        For a negative node id or one beyond the kernel's mask width.
    """
    bits = bits or mask_bits()
    words = (ctypes.c_ulong * (bits // _ULONG_BITS))()
    for n in node_ids:
        if n < 0 or n >= bits:
            raise PlacementError(f"node id {n} is outside the kernel's node range 0..{bits - 1}")
        words[n // _ULONG_BITS] |= 1 << (n % _ULONG_BITS)
    return words


def nodemask_ids(mask: ctypes.Array) -> tuple[int, ...]:
    """The node ids whose bits are set in ``mask``."""
    out = []
    for w, word in enumerate(mask):
        for b in range(_ULONG_BITS):
            if word >> b & 1:
                out.append(w * _ULONG_BITS + b)
    return tuple(out)


# -- backends -----------------------------------------------------------------------------------
class NumaBackend:
    """The four NUMA calls through one library. Use :func:`get_backend` to obtain one.

    Every method raises :class:`NumaCallError` on failure; the higher layers turn it into a
    :class:`~numaplan.errors.PlacementError` with context.
    """

    name: str = "?"

    def set_mempolicy(self, mode: int, mask: ctypes.Array | None, maxnode: int) -> None:
        """set_mempolicy(2) for the calling thread."""
        self._check("set_mempolicy", self._set_mempolicy(mode, mask, maxnode))

    def get_mempolicy(self, mask: ctypes.Array | None, maxnode: int, addr: int | None,
                      flags: int) -> int:
        """get_mempolicy(2); returns the ``mode`` out-parameter (a node id with MPOL_F_NODE)."""
        mode = ctypes.c_int(0)
        self._check("get_mempolicy", self._get_mempolicy(mode, mask, maxnode, addr, flags))
        return mode.value

    def mbind(self, addr: int, length: int, mode: int, mask: ctypes.Array | None, maxnode: int,
              flags: int) -> None:
        """mbind(2) on ``[addr, addr + length)``."""
        self._check("mbind", self._mbind(addr, length, mode, mask, maxnode, flags))

    def move_pages(self, pid: int, pages, nodes, status, flags: int) -> int:
        """move_pages(2); with ``nodes=None`` only fills ``status`` with each page's node.

        ``pages`` (pointers), ``nodes`` and ``status`` (C ints) are ctypes arrays or contiguous
        numpy arrays of ``uint64`` / ``int32``.
        """
        ret = self._move_pages(pid, len(pages), pages, nodes, status, flags)
        self._check("move_pages", ret)
        return ret

    @staticmethod
    def _check(call: str, ret: int) -> None:
        if ret < 0:
            raise NumaCallError(call, ctypes.get_errno())

    # Implemented by subclasses.
    def _set_mempolicy(self, mode, mask, maxnode):  # pragma: no cover - abstract
        raise NotImplementedError

    def _get_mempolicy(self, mode, mask, maxnode, addr, flags):  # pragma: no cover
        raise NotImplementedError

    def _mbind(self, addr, length, mode, mask, maxnode, flags):  # pragma: no cover
        raise NotImplementedError

    def _move_pages(self, pid, count, pages, nodes, status, flags):  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<NumaBackend {self.name}>"


def _ptr(arr) -> int | None:
    """Address of a ctypes object or of a contiguous numpy array's data (or NULL)."""
    if arr is None:
        return None
    data = getattr(arr, "ctypes", None)
    if data is not None and hasattr(arr, "flags"):
        if not arr.flags["C_CONTIGUOUS"]:
            raise ValueError("NUMA call arrays must be contiguous")
        return data.data
    return ctypes.addressof(arr)


class LibnumaBackend(NumaBackend):
    """The ``numaif.h`` wrappers exported by ``libnuma.so.1``."""

    name = "libnuma"

    def __init__(self, path: str = "libnuma.so.1") -> None:
        try:
            lib = ctypes.CDLL(path, use_errno=True)
        except OSError as exc:
            raise PlacementError(f"cannot load {path} ({exc}); install libnuma (Debian/Ubuntu: "
                                 f"apt install libnuma1) or use the syscall backend") from None
        vp, ul, ci = ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int
        self._set = lib.set_mempolicy
        self._set.argtypes, self._set.restype = [ci, vp, ul], ctypes.c_long
        self._get = lib.get_mempolicy
        self._get.argtypes, self._get.restype = [vp, vp, ul, vp, ul], ctypes.c_long
        self._mb = lib.mbind
        self._mb.argtypes, self._mb.restype = [vp, ul, ci, vp, ul, ctypes.c_uint], ctypes.c_long
        self._mp = lib.move_pages
        self._mp.argtypes, self._mp.restype = [ci, ul, vp, vp, vp, ci], ctypes.c_long
        self.path = path

    def _set_mempolicy(self, mode, mask, maxnode):
        return self._set(mode, _ptr(mask), maxnode)

    def _get_mempolicy(self, mode, mask, maxnode, addr, flags):
        return self._get(ctypes.addressof(mode), _ptr(mask), maxnode, addr, flags)

    def _mbind(self, addr, length, mode, mask, maxnode, flags):
        return self._mb(addr, length, mode, _ptr(mask), maxnode, flags)

    def _move_pages(self, pid, count, pages, nodes, status, flags):
        return self._mp(pid, count, _ptr(pages), _ptr(nodes), _ptr(status), flags)


class SyscallBackend(NumaBackend):
    """Raw ``syscall(2)`` through libc with the architecture's syscall numbers."""

    name = "syscall"

    def __init__(self, machine: str | None = None) -> None:
        machine = machine or platform.machine()
        machine = _MACHINE_ALIASES.get(machine, machine)
        if machine not in SYSCALL_NUMBERS:
            raise PlacementError(f"no NUMA syscall numbers known for machine {machine!r} "
                                 f"(known: {', '.join(SYSCALL_NUMBERS)}); install libnuma "
                                 f"(apt install libnuma1) to use the libnuma backend")
        self.machine = machine
        self.numbers = SYSCALL_NUMBERS[machine]
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        # syscall(2) is variadic: leave argtypes unset and pass every argument as a c_long or
        # c_void_p so each fills a full register.
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long

    def _call(self, name: str, *args: int | None) -> int:
        conv = [ctypes.c_long(a) if isinstance(a, int) else ctypes.c_void_p(a) for a in args]
        return self._syscall(ctypes.c_long(self.numbers[name]), *conv)

    def _set_mempolicy(self, mode, mask, maxnode):
        return self._call("set_mempolicy", mode, _ptr(mask), maxnode)

    def _get_mempolicy(self, mode, mask, maxnode, addr, flags):
        return self._call("get_mempolicy", ctypes.addressof(mode), _ptr(mask), maxnode,
                          addr, flags)

    def _mbind(self, addr, length, mode, mask, maxnode, flags):
        return self._call("mbind", addr, length, mode, _ptr(mask), maxnode, flags)

    def _move_pages(self, pid, count, pages, nodes, status, flags):
        return self._call("move_pages", pid, count, _ptr(pages), _ptr(nodes), _ptr(status),
                          flags)


_backends: dict[str, NumaBackend] = {}
_lock = threading.Lock()


def libnuma_available() -> bool:
    """Whether ``libnuma.so.1`` can be loaded."""
    try:
        _load("libnuma")
    except PlacementError:
        return False
    return True


def _load(name: str) -> NumaBackend:
    with _lock:
        if name not in _backends:
            _backends[name] = LibnumaBackend() if name == "libnuma" else SyscallBackend()
        return _backends[name]


def get_backend(name: str | NumaBackend | None = None) -> NumaBackend:
    """The backend to use.

    Parameters
    ----------
    name
        ``"libnuma"``, ``"syscall"``, ``"auto"`` or an existing backend (returned as is). Default:
        the environment variable ``NUMAPLAN_NUMA_BACKEND``, else ``"auto"``: libnuma when it
        loads, raw syscalls otherwise.

    Raises
    ------
    PlacementError
        When the forced backend cannot be used (libnuma missing, unknown architecture).
    """
    if isinstance(name, NumaBackend):
        return name
    choice = (name or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
    if choice not in ("auto", "libnuma", "syscall"):
        raise PlacementError(f"unknown NUMA backend {choice!r} (from {BACKEND_ENV} or the "
                             f"argument); use libnuma, syscall or auto")
    if choice == "auto":
        try:
            return _load("libnuma")
        except PlacementError:
            return _load("syscall")
    return _load(choice)
