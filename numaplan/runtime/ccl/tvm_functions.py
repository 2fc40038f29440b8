"""Expose a :class:`~numaplan.runtime.ccl.Communicator` to TVM as ``numaplan.ccl.*``.

The Relax VM calls the functions that :mod:`numaplan.passes.lower_collectives` emits, one per
op of :data:`numaplan.ccl_abi.OPS`, with the signatures of :mod:`numaplan.ccl_abi`
(destination-passing style, the output tensor last).

The tensors are CPU ``tvm.runtime.Tensor``s; their memory is used in place, without copies:
the all-reduce, broadcast and all-gather hand the kernel the tensors' data pointers
(``Tensor.data_ptr()``), so the VM's ``out`` is written directly; the scatter wraps them as
numpy arrays with ``np.from_dlpack`` (zero-copy; bfloat16, which numpy's DLPack import
refuses, is viewed as uint16). Registration is process-global (``override=True``): there is
one rank per process (rank 0 in the Disco controller, used from the worker-0 thread).

This module imports ``tvm_ffi``; the rest of :mod:`numaplan.runtime.ccl` does not.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tvm_ffi

from numaplan.ccl_abi import (
    ALLGATHER,
    ALLREDUCE,
    BROADCAST,
    DTYPE_CODES,
    FUNCTION_NAMES,
    OPS,
    PREFIX,
    SCATTER,
)
from numaplan.errors import CollectiveError, NumaplanError
from numaplan.runtime.ccl.communicator import Communicator

# the functions' names, for messages
_AR, _BC, _AG, _SC = (FUNCTION_NAMES[k] for k in (ALLREDUCE, BROADCAST, ALLGATHER, SCATTER))
_NUMPY_CODES = {np.dtype(n): c for n, c in DTYPE_CODES.items() if n != "bfloat16"}
_dtype_cache: dict[object, tuple[int, int]] = {}


def _dtype_slow(t: object) -> tuple[int, int]:
    """(element bytes, reduction dtype code or -1) from the tensor's dtype (~1 us)."""
    dt = t.dtype  # type: ignore[attr-defined]
    hit = _dtype_cache.get(dt)
    if hit is None:
        bits = dt.bits * dt.lanes
        hit = (max(bits // 8, 1), DTYPE_CODES.get(str(dt), -1))
        _dtype_cache[dt] = hit
    return hit


def _reduce_code(t: object) -> int:
    """The reduction dtype code of a tensor. ``np.from_dlpack(t).dtype`` costs a third of
    ``t.dtype`` (which builds a dtype object each time); bfloat16, which numpy's DLPack import
    refuses, takes the slow path."""
    try:
        code = _NUMPY_CODES.get(np.from_dlpack(t).dtype)
    except (BufferError, TypeError, RuntimeError):
        code = None
    return _dtype_slow(t)[1] if code is None else code


def _check(t: object, what: str) -> None:
    if not t.is_contiguous():  # type: ignore[attr-defined]
        raise CollectiveError(f"{what} must be a contiguous tensor")
    if t.__dlpack_device__()[0] != 1:  # type: ignore[attr-defined]  # kDLCPU
        raise CollectiveError(f"{what} must be on the CPU, got {t.device}")  # type: ignore[attr-defined]


def as_numpy(t: object) -> np.ndarray:
    """A zero-copy numpy view of a CPU tensor (bfloat16 as uint16)."""
    try:
        return np.from_dlpack(t)
    except (BufferError, TypeError, RuntimeError):
        view = t._create_view(tuple(t.shape), "uint16")  # type: ignore[attr-defined]
        return np.from_dlpack(view)


def make_functions(comm: Communicator) -> dict[str, Callable[..., None]]:
    """The Python functions bound to ``comm``: op name (:data:`~numaplan.ccl_abi.OPS`) ->
    callable."""

    def allreduce(x, op_code, coll_id, group, algorithm, out):
        # the hot path (two per transformer layer at decode): a few attribute reads, one call
        if not (x.is_contiguous() and out.is_contiguous()) or x.__dlpack_device__()[0] != 1 \
                or out.__dlpack_device__()[0] != 1:
            _check(x, f"{_AR}: x")
            _check(out, f"{_AR}: out")
        n = x.numel()
        if out.numel() != n:
            raise CollectiveError(f"{_AR}: out has {out.numel()} elements, "
                                  f"x has {n}")
        code = _reduce_code(x)
        if code < 0:
            raise CollectiveError(f"{_AR}: dtype {x.dtype} is not supported")
        if n:
            comm.allreduce_raw(x.data_ptr(), out.data_ptr(), n, code, op_code, coll_id, group,
                               algorithm)

    def broadcast_from_worker0(x, coll_id, group, out):
        _check(x, f"{_BC}: x")
        _check(out, f"{_BC}: out")
        nbytes = out.numel() * _dtype_slow(out)[0]
        if x.numel() * _dtype_slow(x)[0] != nbytes:
            raise CollectiveError(f"{_BC}: x and out differ in size")
        if nbytes:
            comm.broadcast_raw(x.data_ptr(), out.data_ptr(), nbytes, int(coll_id), str(group))

    def allgather(x, coll_id, group, out):
        _check(x, f"{_AG}: x")
        _check(out, f"{_AG}: out")
        nbytes = x.numel() * _dtype_slow(x)[0]
        if out.numel() * _dtype_slow(out)[0] != nbytes * comm.world_size:
            raise CollectiveError(f"{_AG}: out must hold {comm.world_size} "
                                  f"times x ({nbytes} bytes)")
        if nbytes:
            comm.allgather_raw(x.data_ptr(), out.data_ptr(), nbytes, int(coll_id), str(group))

    def scatter_from_worker0(x, axis, coll_id, group, out):
        _check(x, f"{_SC}: x")
        _check(out, f"{_SC}: out")
        comm.scatter_from_worker0(as_numpy(x), int(axis), int(coll_id), str(group),
                                  as_numpy(out))

    return dict(zip(OPS, (allreduce, broadcast_from_worker0, allgather, scatter_from_worker0),
                    strict=True))


def register_tvm_functions(comm: Communicator) -> tuple[str, ...]:
    """Register ``numaplan.ccl.*`` for this process, bound to ``comm``; return the names.

    Call it in every rank's process after :meth:`Communicator.create` (a later call replaces
    the functions, e.g. for a new session).
    """
    for name, fn in zip(FUNCTION_NAMES, make_functions(comm).values(), strict=True):
        tvm_ffi.register_global_func(name, fn, override=True)
    return FUNCTION_NAMES


def register_placeholders() -> None:
    """Make ``numaplan.ccl.*`` resolvable in this process before any communicator exists.

    The VM resolves every packed function a library calls when the library is loaded; before
    worker 0 has its communicator (reading the plan out of a library, for one) the names must
    exist, and fail if actually called. Names already registered are left alone.
    """

    def detached(*_args: object) -> None:
        raise NumaplanError(f"{PREFIX}* called outside a numaplan session")

    for name in FUNCTION_NAMES:
        if tvm_ffi.get_global_func(name, allow_missing=True) is None:
            tvm_ffi.register_global_func(name, detached)


__all__ = ["as_numpy", "make_functions", "register_placeholders", "register_tvm_functions"]
