"""The kernel's failures in words: a :class:`~numaplan.errors.CollectiveError` per return code."""

from __future__ import annotations

from numaplan.ccl_abi import (
    ERR_ABORTED,
    ERR_ARG,
    ERR_DEAD,
    ERR_MISMATCH,
    ERR_TIMEOUT,
    OPS,
    describe_desc,
)
from numaplan.errors import CollectiveError


def collective_failure(*, rank: int, kind: int, coll_id: int, seq: int, desc: int,
                       err: tuple[int, int, int, int], timeout_s: float,
                       abort_reason: str = "") -> CollectiveError:
    """The error of a failed call.

    Parameters
    ----------
    rank
        The rank whose call failed.
    kind, coll_id, seq, desc
        The call: its kind (index in :data:`~numaplan.ccl_abi.OPS`), collective id, sequence
        number and descriptor.
    err
        The kernel's ``(code, peer, seen, their descriptor)``
        (:attr:`~numaplan.runtime.ccl.engine.Engine.err`); ``seen`` is the peer's sequence word
        for a timeout and its pid when it died.
    timeout_s
        How long the rank waited (named in a timeout's message).
    abort_reason
        What the aborting rank wrote in the segment (for ``ERR_ABORTED``).

    Returns
    -------
    CollectiveError
        Its ``reason`` is ``timeout``, ``dead``, ``aborted``, ``mismatch`` or ``usage``.
    """
    code, peer, seen, their = err
    what = f"{OPS[kind]} (collective id {coll_id}, call {seq})"
    if code == ERR_TIMEOUT:
        msg = (f"rank {rank}: {what} timed out after {timeout_s:g} s waiting for rank {peer}, "
               f"which did not arrive (it is at call {seen}); worker {peer} may have died or "
               f"hung")
        reason = "timeout"
    elif code == ERR_DEAD:
        msg = f"rank {rank}: {what} failed: rank {peer} (pid {seen}) died; worker {peer} is gone"
        reason = "dead"
    elif code == ERR_ABORTED:
        msg = f"rank {rank}: {what} failed: rank {peer} aborted the communicator ({abort_reason})"
        reason = "aborted"
    elif code == ERR_MISMATCH:
        msg = (f"rank {rank}: {what}: rank {peer} called a different collective: it published "
               f"{describe_desc(their)} while rank {rank} called {describe_desc(desc)}")
        reason = "mismatch"
    elif code == ERR_ARG:
        msg = f"rank {rank}: {what}: invalid arguments for the kernel ({describe_desc(desc)})"
        reason = "usage"
    else:
        msg = f"rank {rank}: {what} failed with code {code}"
        reason = "usage"
    return CollectiveError(msg, rank=rank, peer=peer, reason=reason)
