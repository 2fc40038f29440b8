"""Widen bf16-stored float32 weights into float32 memory: a small C kernel (``widen.c``, built
at first use and cached by :mod:`numaplan._cbuild`), numpy when no compiler is available."""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path

import numpy as np

from numaplan._cbuild import NO_COMPILER, compile_cached, find_compiler
from numaplan.errors import CBuildError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("widen.c")
FLAG_CHOICES = (("-O3", "-march=native", "-shared", "-fPIC"), ("-O2", "-shared", "-fPIC"))

_lock = threading.Lock()
_fn: list = []  # [] not tried yet; [None] unavailable; [function]


def _kernel():
    with _lock:
        if not _fn:
            try:
                cc = find_compiler()
                if not cc:
                    raise CBuildError(NO_COMPILER)
                lib = ctypes.CDLL(str(compile_cached(SOURCE, "widen", FLAG_CHOICES, cc=cc)))
                f = lib.numaplan_widen_bf16
                f.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                              ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t]
                f.restype = None
                _fn.append(f)
            except (CBuildError, OSError) as exc:
                log.info("widening bf16 with numpy: %s", exc)
                _fn.append(None)
        return _fn[0]


def _rows(a: np.ndarray) -> tuple[int, int, int] | None:
    """``(rows, cols, row stride in elements)`` when ``a`` is rows of contiguous elements."""
    item = a.itemsize
    if a.ndim == 0 or a.flags["C_CONTIGUOUS"]:
        return 1, a.size, a.size
    if a.ndim == 2 and a.strides[1] == item and a.strides[0] % item == 0:
        return a.shape[0], a.shape[1], a.strides[0] // item
    return None


def widen_bf16(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst = src << 16``: ``src`` holds bfloat16 bits (uint16), ``dst`` uint32 (the float32
    bits), same shape; any strides (the C kernel takes rows of contiguous elements).
    """
    f = _kernel()
    s, d = _rows(src), _rows(dst)
    if f is None or s is None or d is None or s[:2] != d[:2] or src.shape != dst.shape:
        np.left_shift(src, 16, out=dst, dtype=np.uint32)
        return
    rows, cols = s[:2]
    if rows and cols:
        f(src.ctypes.data, s[2], dst.ctypes.data, d[2], rows, cols)
