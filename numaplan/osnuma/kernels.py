"""Memory-measurement kernels: a tiny C library when a compiler exists, numpy otherwise.

The C source (``kernels.c`` next to this file) is compiled at first use with the system compiler
as ``-O2 -shared -fPIC`` and cached (:mod:`numaplan._cbuild`: keyed by the source, the compiler
and its version, so an edit or a new compiler rebuilds it; written atomically).

ctypes releases the GIL for the duration of a foreign call, so pinned threads run the C loops in
parallel. The numpy fallback streams with ``np.add.reduce`` (ufunc loops release the GIL too) and
chases pointers in a Python loop, whose per-step interpreter cost (tens of ns) is added to the
memory latency: its figure is an **upper bound**, and says so.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Literal

import numpy as np

from numaplan._cbuild import NO_COMPILER, compile_cached, find_compiler
from numaplan.errors import CBuildError

log = logging.getLogger(__name__)

KERNEL_SOURCE = Path(__file__).with_name("kernels.c")
CFLAGS = ("-O2", "-shared", "-fPIC")
#: Bytes per slot of the latency chain: one cache line.
SLOT_BYTES = 64
KernelChoice = Literal["auto", "c", "numpy"]

_PATTERN_BASE = np.uint64(0x3FF0000000000000)
_PATTERN_MULT = np.uint64(0x9E3779B97F4A7C15)
_FILL_CHUNK_WORDS = 1 << 20


def u64_view(address: int, nbytes: int) -> np.ndarray:
    """A ``uint64`` numpy view of raw memory at ``address`` (``nbytes // 8`` words).

    The view holds no reference to the memory's owner (a :class:`NodeBuffer`): it must not be
    used after the buffer is closed. Meant for short-lived use inside one measurement.
    """
    n = nbytes // 8
    return np.ctypeslib.as_array((ctypes.c_uint64 * n).from_address(address))


class MemoryKernels:
    """The operations a measurement needs. Obtain one with :func:`load_kernels`.

    Attributes
    ----------
    kind
        ``"c"`` or ``"numpy"``.
    latency_upper_bound
        ``True`` when :meth:`chase` runs in Python, so its time per load overstates latency.
    note
        Why this kind was chosen (e.g. ``"no C compiler found"``), or ``""``.
    """

    kind: Literal["c", "numpy"] = "numpy"
    latency_upper_bound = True
    note = ""

    def read(self, address: int, nbytes: int) -> int:
        """Read ``nbytes`` from ``address`` (a multiple of 8) and return a checksum."""
        return int(np.add.reduce(u64_view(address, nbytes)))

    def fill(self, address: int, nbytes: int, first_word: int = 0) -> None:
        """Write every 8-byte word with a unique pattern (word ``i`` gets ``f(first_word + i)``).
        """
        view = u64_view(address, nbytes)
        for lo in range(0, view.size, _FILL_CHUNK_WORDS):
            hi = min(view.size, lo + _FILL_CHUNK_WORDS)
            w = np.arange(first_word + lo, first_word + hi, dtype=np.uint64)
            np.multiply(w, _PATTERN_MULT, out=w)
            np.right_shift(w, np.uint64(12), out=w)
            np.bitwise_or(w, _PATTERN_BASE, out=view[lo:hi])

    def build_chain(self, address: int, nbytes: int, seed: int = 0) -> int:
        """Write a random cyclic chain over the buffer's 64-byte slots; return the start.

        One random permutation visited in order is a single cycle through every slot, so a
        chase of any length never settles into a short loop that fits in cache.
        """
        n_slots = nbytes // SLOT_BYTES
        if n_slots < 2:
            raise ValueError("the latency buffer needs at least two cache lines")
        order = np.random.default_rng(seed).permutation(n_slots).astype(np.uint64)
        nxt = np.roll(order, -1)
        words = u64_view(address, n_slots * SLOT_BYTES)
        order *= np.uint64(SLOT_BYTES // 8)  # slot index -> word index of its first word
        nxt *= np.uint64(SLOT_BYTES // 8)
        words[order] = self._link(address, nxt)
        return self._link(address, order[:1]).item()

    def _link(self, address: int, word_index: np.ndarray) -> np.ndarray:
        return word_index  # the Python chase follows word indices

    def chase(self, start: int, loads: int, *, address: int = 0, nbytes: int = 0) -> int:
        """Follow the chain for ``loads`` dependent loads; return where it stopped."""
        mem = memoryview((ctypes.c_uint64 * (nbytes // 8)).from_address(address)).cast(
            "B").cast("Q")
        i = start
        for _ in range(loads):
            i = mem[i]
        return i


class NumpyKernels(MemoryKernels):
    """numpy streaming and a Python pointer chase (latency is an upper bound)."""

    def __init__(self, note: str = "") -> None:
        self.note = note


class CKernels(MemoryKernels):
    """The compiled ``kernels.c``."""

    kind: Literal["c", "numpy"] = "c"
    latency_upper_bound = False

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        vp, sz, u64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64
        self._read = lib.numaplan_read
        self._read.argtypes, self._read.restype = [vp, sz], u64
        self._fill = lib.numaplan_fill
        self._fill.argtypes, self._fill.restype = [vp, sz, u64], None
        self._chase = lib.numaplan_chase
        self._chase.argtypes, self._chase.restype = [vp, u64], vp
        self.path = path

    def read(self, address: int, nbytes: int) -> int:
        return self._read(address, nbytes)

    def fill(self, address: int, nbytes: int, first_word: int = 0) -> None:
        self._fill(address, nbytes, first_word)

    def _link(self, address: int, word_index: np.ndarray) -> np.ndarray:
        return word_index * np.uint64(8) + np.uint64(address)  # absolute pointers

    def chase(self, start: int, loads: int, *, address: int = 0, nbytes: int = 0) -> int:
        return self._chase(start, loads) or 0


# -- building -------------------------------------------------------------------------------------
def compile_kernels(cc: list[str] | None = None, cache: Path | None = None) -> Path:
    """Build ``kernels.c`` (or reuse the cached build, see :mod:`numaplan._cbuild`) and return
    the library path.

    Raises
    ------
    CBuildError
        No compiler, a failed build, or no writable cache directory.
    """
    cc = cc or find_compiler()
    if not cc:
        raise CBuildError(NO_COMPILER)
    return compile_cached(KERNEL_SOURCE, "kernels", (CFLAGS,), cc=cc, cache=cache)


_loaded: dict[Path, CKernels] = {}


def load_kernels(kind: KernelChoice = "auto") -> MemoryKernels:
    """The kernels to measure with.

    Parameters
    ----------
    kind
        ``"c"`` (fail if it cannot be built), ``"numpy"``, or ``"auto"`` (C when a compiler
        works, else numpy with :attr:`MemoryKernels.note` saying why).

    Raises
    ------
    CBuildError
        ``kind="c"`` and the library cannot be built or loaded.
    """
    if kind == "numpy":
        return NumpyKernels("numpy kernels requested")
    try:
        path = compile_kernels()
        if path not in _loaded:
            try:
                _loaded[path] = CKernels(path)
            except OSError as exc:
                raise CBuildError(f"cannot load {path}: {exc}") from None
        return _loaded[path]
    except CBuildError as exc:
        if kind == "c":
            raise
        log.warning("%s; measuring with numpy (latency is an upper bound)", exc)
        return NumpyKernels(str(exc))
