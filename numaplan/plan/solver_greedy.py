"""Greedy placement: speed-proportional worker counts, local-first memory with spill.

A node's speed is how many workers' tokens it serves per second: its local bandwidth over a
worker's reads, or, with a compute term, its cores' rate over a worker's products when that is
slower (the roofline of :mod:`numaplan.plan.predict`).

Always runs: it is the answer when no MIP solver is wanted, the ILP's warm start, and the
reference the property tests compare the ILP against. It tries using the 1, 2, 4, ... fastest
nodes (small models can be collective-bound, where fewer nodes win) and keeps the best by
:func:`numaplan.plan.predict.predict`.
"""

from __future__ import annotations

from collections import defaultdict

from numaplan.errors import InfeasiblePlanError
from numaplan.plan.predict import predict
from numaplan.plan.problem import PlacementProblem, largest_remainder
from numaplan.plan.solution import Solution


def solve(problem: PlacementProblem, *, time_limit_s: float | None = None,
          seed: int = 0) -> Solution:
    """Solve greedily (``time_limit_s`` and ``seed`` are accepted for interface parity).

    Raises
    ------
    InfeasiblePlanError
        When no tried worker split fits in memory; the message names the node and the bytes
        missing.
    """
    p = problem
    order = sorted(p.cpu_node_ids, key=lambda n: (-p.node_speed(n), n))
    sizes = sorted({*(2 ** e for e in range(len(order).bit_length())), len(order)})
    best: tuple[float, Solution] | None = None
    last_error: InfeasiblePlanError | None = None
    for a in sizes:
        nodes = order[:a]
        forced = [n for n in p.min_workers if n not in nodes]
        nodes = [*nodes, *forced]
        if sum(p.max_workers[n] for n in nodes) < p.num_workers:
            continue  # not enough cores on these nodes: not a candidate
        try:
            sol = place(p, counts_for(p, nodes))
        except InfeasiblePlanError as exc:
            last_error = exc
            continue
        pred = predict(p, sol)
        if pred.fits and (best is None or pred.token_s < best[0] - 1e-15):
            best = (pred.token_s, sol)
    if best is None:
        raise last_error or InfeasiblePlanError("no placement fits")
    return best[1].model_copy(update={"objective_s": best[0]})


def counts_for(p: PlacementProblem, nodes: list[int], *, weights: dict[int, float] | None = None
               ) -> dict[int, int]:
    """Worker counts on ``nodes``: affinity minimums first, the rest by speed (or weights)."""
    W = p.num_workers
    base = {n: p.min_workers.get(n, 0) for n in nodes}
    rest = W - sum(base.values())
    if rest < 0:
        raise InfeasiblePlanError("node_affinity pins more workers than W")
    w = [weights[n] if weights else p.node_speed(n) for n in nodes]
    caps = [min(p.max_workers[n] - base[n], _mem_cap_workers(p, n) - base[n]) for n in nodes]
    caps = [max(c, 0) for c in caps]
    if sum(caps) < rest and sum(min(p.max_workers[n] - base[n], W) for n in nodes) >= rest:
        # Cores would do; memory is what is missing. Say where and how much.
        raise _short_for_worker(p, nodes)
    extra = largest_remainder(rest, w, caps)
    return {n: base[n] + e for n, e in zip(nodes, extra, strict=True)}


def _mem_cap_workers(p: PlacementProblem, n: int) -> int:
    """How many workers node n's home can hold locally (only binding with local memory)."""
    if not p.prefer_local_memory:
        return p.num_workers
    cap = p.node(p.home_of[n]).mem_capacity_bytes
    if cap is None:
        return p.num_workers
    per = p.split_bytes_per_worker + p.reserve_bytes_per_worker
    room = cap - sum(g.mem_bytes for g in p.replicas)
    return max(0, min(p.num_workers, room // per if per else p.num_workers))


def place(p: PlacementProblem, counts: dict[int, int]) -> Solution:
    """Home the memory of given worker counts: local first, then the fastest node with room.

    Raises
    ------
    InfeasiblePlanError
        When a node's workers cannot be homed (the message names the node and the shortfall).
    """
    free: dict[int, float] = {}
    for j in p.mem_node_ids:
        cap = p.node(j).mem_capacity_bytes
        free[j] = float("inf") if cap is None else float(cap)
    active = sorted((n for n, k in counts.items() if k > 0), key=lambda n: (-counts[n], n))
    for i in active:
        free[p.home_of[i]] -= counts[i] * p.reserve_bytes_per_worker
    replica_homes: dict[str, dict[int, dict[int, float]]] = defaultdict(dict)
    copies: dict[str, set[int]] = defaultdict(set)
    for g in p.replicas:
        for i in active:
            h = p.home_of[i]
            if h not in copies[g.name] and free[h] >= g.mem_bytes:
                free[h] -= g.mem_bytes
                copies[g.name].add(h)
            if h in copies[g.name]:
                replica_homes[g.name][i] = {h: 1.0}
                continue
            options = sorted(copies[g.name] | {j for j in p.mem_node_ids
                                               if free[j] >= g.mem_bytes},
                             key=lambda j: (-(p.bw(i, j) or 0), j))
            options = [j for j in options if p.bw(i, j) is not None and
                       (not p.prefer_local_memory or j in copies[g.name])]
            if not options:
                raise _short(p, h, g.mem_bytes - max(free[h], 0), f"a copy of the {g.name} "
                             "replicated tensors")
            j = options[0]
            if j not in copies[g.name]:
                free[j] -= g.mem_bytes
                copies[g.name].add(j)
            replica_homes[g.name][i] = {j: 1.0}
    split_homes: dict[int, dict[int, int]] = {}
    for i in active:
        need = p.split_bytes_per_worker
        k = counts[i]
        homes: dict[int, int] = {}
        order = [p.home_of[i]]
        if not p.prefer_local_memory:
            order += sorted((j for j in p.mem_node_ids if j != p.home_of[i] and
                             p.bw(i, j) is not None), key=lambda j: (-(p.bw(i, j) or 0), j))
        for j in order:
            if need == 0:
                break
            take = min(need, int(free[j] // k)) if free[j] > 0 else 0
            if take > 0:
                homes[j] = take
                free[j] -= take * k
                need -= take
        if need:
            raise _short(p, p.home_of[i], need * k, f"the {k} worker(s) of node {i}")
        split_homes[i] = homes
    return Solution(workers_per_node={n: counts[n] for n in sorted(counts) if counts[n] > 0},
                    split_homes=split_homes, replica_homes=dict(replica_homes),
                    solver="greedy", status="heuristic")


def _short_for_worker(p: PlacementProblem, nodes: list[int]) -> InfeasiblePlanError:
    per = p.split_bytes_per_worker + p.reserve_bytes_per_worker
    reps = sum(g.mem_bytes for g in p.replicas)
    lacks = []
    for n in nodes:
        cap = p.node(p.home_of[n]).mem_capacity_bytes or 0
        held = max(_mem_cap_workers(p, n), p.min_workers.get(n, 0))
        lacks.append((max(per + reps + held * per - cap, 1), p.home_of[n]))
    missing, node = min(lacks)
    return _short(p, node, missing, f"one more worker ({per} bytes of shards and KV/activation "
                  f"reserve plus {reps} bytes of replicated tensors)")


def _short(p: PlacementProblem, node: int, missing: float, what: str) -> InfeasiblePlanError:
    hint = ("; allow remote homes with --no-prefer-local-memory, use more nodes, or a smaller "
            "batch/context" if p.prefer_local_memory else "; use more nodes or a smaller model")
    return InfeasiblePlanError(f"node {node} lacks {int(missing)} bytes "
                               f"({missing / 2**30:.2f} GiB) for {what}{hint}")
