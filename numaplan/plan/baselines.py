"""The obvious ways to run W tensor-parallel workers, as placements the predictor can price.

- ``single_node``: all workers on the fastest node (:meth:`PlacementProblem.node_speed`) with
  enough cores, memory local;
- ``interleave``: workers spread evenly, every page interleaved over all memory nodes
  (``numactl --interleave=all``);
- ``first_touch``: workers spread evenly, every weight page first touched by one loader thread
  on the first node (the OS default when one process loads and then forks or spawns);
- ``even_split``: workers spread evenly, memory local (SGLang / vLLM CPU: one rank group per
  node, even shards), blind to bandwidth differences.
"""

from __future__ import annotations

from numaplan.plan.problem import PlacementProblem, largest_remainder
from numaplan.plan.solution import Solution

BASELINES = ("single_node", "interleave", "first_touch", "even_split")


def _even_counts(p: PlacementProblem) -> dict[int, int]:
    nodes = list(p.cpu_node_ids)
    counts = largest_remainder(p.num_workers, [1.0] * len(nodes),
                               [p.max_workers[n] for n in nodes])
    return {n: k for n, k in zip(nodes, counts, strict=True) if k > 0}


def _uniform(p: PlacementProblem, counts: dict[int, int], homes: dict[int, float],
             name: str) -> Solution:
    P = p.split_bytes_per_worker
    split = {}
    for i in counts:
        parts = {j: int(P * f) for j, f in homes.items()}
        first = next(iter(parts))
        parts[first] += P - sum(parts.values())
        split[i] = parts
    reps = {g.name: {i: dict(homes) for i in counts} for g in p.replicas}
    return Solution(workers_per_node=counts, split_homes=split, replica_homes=reps,
                    solver=name, status="fixed")


def baseline(p: PlacementProblem, name: str) -> Solution | None:
    """The named baseline's placement (``None`` when it cannot exist, e.g. no node has W
    cores for ``single_node``)."""
    if name == "single_node":
        fits = [n for n in p.cpu_node_ids if p.max_workers[n] >= p.num_workers]
        if not fits:
            return None
        n = max(fits, key=lambda n: (p.node_speed(n), -n))
        return _uniform(p, {n: p.num_workers}, {p.home_of[n]: 1.0}, name)
    counts = _even_counts(p)
    if name == "interleave":
        share = 1.0 / len(p.mem_node_ids)
        return _uniform(p, counts, {j: share for j in p.mem_node_ids}, name)
    if name == "first_touch":
        loader = p.home_of[p.cpu_node_ids[0]]
        return _uniform(p, counts, {loader: 1.0}, name)
    if name == "even_split":
        P = p.split_bytes_per_worker
        return Solution(workers_per_node=counts,
                        split_homes={i: {p.home_of[i]: P} for i in counts},
                        replica_homes={g.name: {i: {p.home_of[i]: 1.0} for i in counts}
                                       for g in p.replicas},
                        solver=name, status="fixed")
    raise KeyError(name)
