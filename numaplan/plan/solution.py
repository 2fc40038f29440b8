"""A solver's answer in aggregate form, before it is spelled out per worker and per tensor."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from numaplan._base import Frozen

Status = Literal["optimal", "feasible", "heuristic", "fixed"]


class Solution(Frozen):
    """How many workers run on each node and where their bytes live.

    Attributes
    ----------
    workers_per_node
        ``{cpu node: worker count}`` (nodes without workers may be absent).
    split_homes
        ``{cpu node: {memory node: bytes}}``: where each worker of that node keeps its split
        (tensor-parallel) bytes; the values sum to the problem's ``split_bytes_per_worker``.
    replica_homes
        ``{group: {cpu node: {memory node: fraction}}}``: which copy of each replicated group
        the node's workers read, and how that copy's pages are spread (one node with fraction 1
        for every plan numaplan makes; spread copies describe baselines such as interleaving).
        CPU nodes with the same map share one copy.
    solver, status, gap, objective_s
        Who found it and how good it is known to be (``gap`` is the relative MIP gap when a
        MIP solver reported one).
    """

    workers_per_node: dict[int, int]
    split_homes: dict[int, dict[int, int]]
    replica_homes: dict[str, dict[int, dict[int, float]]] = Field(default_factory=dict)
    solver: str
    status: Status
    gap: float | None = None
    objective_s: float | None = None
