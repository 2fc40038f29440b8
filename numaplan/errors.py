"""The one error hierarchy of numaplan.

Every error a user can cause (bad input file, impossible request, refused OS operation) is a
subclass of :class:`NumaplanError`. The command line maps these to exit code 1 with a one-line
message (see ``numaplan.cli.main``); anything else is a bug and exits 3.
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
    """A topology source (sysfs, ``numactl -H``, ``lscpu``, JSON) is missing, truncated or
    inconsistent."""


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
    """The operating system refused a placement action (affinity, memory policy, page audit)."""


class RequestError(NumaplanError):
    """A generation request the loaded model cannot serve (longer than its context, an unknown
    sequence, a full KV cache, a library without MLC's functions)."""
