"""The one error hierarchy of numaplan.

Every error a user can cause (bad input file, impossible request, refused OS operation) is a
subclass of :class:`NumaplanError`. The command line maps these to exit code 1 with a one-line
message (see ``numaplan.cli.main``); anything else is a bug and exits 3.

Every class of the hierarchy is defined in this module, and only here: a worker process reports
its error by class name and the controller raises the same class again (:func:`error_class`).
"""

from __future__ import annotations

from pathlib import Path


class NumaplanError(Exception):
    """Base class of every user-facing numaplan error.

    Parameters
    ----------
    message
        What is wrong, in one line.
    path
        The file or directory the problem is in, when there is one; it is prefixed to the message.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.message = message
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


class UsageError(NumaplanError):
    """The command line asked for something contradictory or out of range (exit code 2)."""

    exit_code = 2


class TopologyError(NumaplanError):
    """A topology source (sysfs, ``numactl -H``, ``lscpu``, hwloc XML, JSON) is missing,
    truncated or inconsistent."""


class CostModelError(NumaplanError):
    """A cost-model source (probe result, Intel MLC output, JSON) is malformed or does not fit the
    topology."""


class SchemaVersionError(NumaplanError):
    """A JSON document carries a ``schema_version`` this numaplan does not know."""


class ModelFormatError(NumaplanError):
    """An MLC model directory (config, tensor cache, shard files) is malformed or unsupported."""


class InfeasiblePlanError(NumaplanError):
    """No placement satisfies the request (capacity, tensor-parallel degree, affinity...)."""


class PlacementError(NumaplanError):
    """The operating system refused a placement action (affinity, memory policy, page audit).

    ``call`` and ``errno_name`` name the refused system call and its errno when the error comes
    from one (``None`` otherwise): a fallback records them.
    """

    def __init__(self, message: str, *, path: str | Path | None = None,
                 call: str | None = None, errno_name: str | None = None) -> None:
        super().__init__(message, path=path)
        self.call = call
        self.errno_name = errno_name


class PlanFormatError(NumaplanError):
    """A plan file is malformed."""


class CBuildError(NumaplanError):
    """A C library numaplan builds at first use (the measurement kernels, the collective's
    kernel) cannot be built or loaded: no compiler, a failed compile, or a bad library."""


class BuildError(NumaplanError):
    """The model library could not be built."""


class PassOrderError(NumaplanError):
    """A numaplan pass was placed where its input has lost what it needs (e.g. after
    ``LegalizeOps``)."""


class StalePlanError(NumaplanError):
    """The plan was made for another model index or another machine."""


class WorkerDiedError(NumaplanError):
    """A worker process died; the session was torn down."""


class SegmentError(NumaplanError):
    """A shared-memory segment of the collective cannot be created, found or used."""


class CollectiveError(NumaplanError):
    """A collective failed: a peer did not arrive, died, aborted or called something else.

    Attributes
    ----------
    rank
        The rank that raised.
    peer
        The rank held responsible (did not arrive, died, aborted, mismatched), or ``None``.
    reason
        ``timeout``, ``dead``, ``aborted``, ``mismatch``, ``broken`` (an earlier failure),
        ``closed``, ``usage`` or ``setup``.
    """

    def __init__(self, message: str, *, rank: int | None = None, peer: int | None = None,
                 reason: str = "usage") -> None:
        super().__init__(message)
        self.rank = rank
        self.peer = peer
        self.reason = reason


class RequestError(NumaplanError):
    """A generation request the loaded model cannot serve (longer than its context, an unknown
    sequence, a full KV cache, a library without MLC's functions)."""


def error_class(name: str) -> type[NumaplanError]:
    """The class of this hierarchy called ``name``; :class:`NumaplanError` for any other name.

    How an error keeps its class across a process boundary: the worker sends the name, the
    controller raises an instance of the class this returns.

    Examples
    --------
    >>> error_class("PlacementError").__name__
    'PlacementError'
    >>> error_class("KeyError") is NumaplanError
    True
    """
    cls = globals().get(name)
    if isinstance(cls, type) and issubclass(cls, NumaplanError):
        return cls
    return NumaplanError
