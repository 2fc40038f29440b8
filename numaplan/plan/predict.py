"""Predicted time per decode token of a placement, and of the obvious baselines' placements.

One function, :func:`predict`, evaluates every placement: the solvers' answers, the baselines
and the lower bound are all measured with the same ruler, so the plan's comparisons are fair.

    token time = max over nodes of max(read time, compute time) + collective time

- read time: every node's CPUs stream what their workers read from each memory node j at the
  cost model's bandwidth ``bw[i][j]``, and every memory node's DRAM serves all its readers at its
  own bandwidth;
- compute time (a roofline, when the cost model measured the decode kernels): node i's workers
  consume ``k_i x`` their weight bytes at the rate all of node i's cores' products reach, plus
  one worker's fixed cost per product call. With few cores, dequantizing and multiplying, not
  memory, sets the pace;
- nodes run in parallel, and identical layers make the per-phase maxima of docs/background.md
  1.1 add up to the slowest node's (or memory node's) time;
- collective time: two all-reduces per layer plus one broadcast per step
  (:mod:`numaplan.plan.collective`).
"""

from __future__ import annotations

from collections import defaultdict

from pydantic import Field

from numaplan._base import Frozen
from numaplan.plan.collective import allreduce_choice, broadcast_cost
from numaplan.plan.problem import PlacementProblem
from numaplan.plan.solution import Solution


class Prediction(Frozen):
    """The predicted cost of one placement (seconds per decode token)."""

    token_s: float
    read_s: float
    compute_s: float
    collective_s: float
    tokens_per_s: float
    per_node_read_s: dict[int, float]
    per_home_read_s: dict[int, float]
    per_node_compute_s: dict[int, float]
    bound: dict[int, str]
    bytes_read_per_token: int
    cross_node_read_bytes_per_token: int
    mem_used_bytes: dict[int, int]
    fits: bool
    over_capacity: dict[int, int] = Field(default_factory=dict)
    decode_algorithm: str
    decode_allreduce_s: float
    prefill_algorithm: str
    prefill_allreduce_s: float


def reads_matrix(p: PlacementProblem, s: Solution) -> dict[tuple[int, int], float]:
    """Bytes per token that node i's workers read from memory node j."""
    reads: dict[tuple[int, int], float] = defaultdict(float)
    groups = {g.name: g for g in p.replicas}
    for i, k in s.workers_per_node.items():
        if k <= 0:
            continue
        for j, b in s.split_homes.get(i, {}).items():
            reads[(i, j)] += k * b
        for name, g in groups.items():
            for j, f in replica_map(p, s, name, i).items():
                reads[(i, j)] += k * g.read_bytes_per_token * f
        reads[(i, p.home_of[i])] += k * p.kv_read_bytes_per_worker
    return dict(reads)


def memory_use(p: PlacementProblem, s: Solution) -> dict[int, int]:
    """Bytes each memory node holds: split pieces, one copy per used replica home, reserves."""
    used: dict[int, int] = defaultdict(int)
    for i, k in s.workers_per_node.items():
        if k <= 0:
            continue
        for j, b in s.split_homes.get(i, {}).items():
            used[j] += k * b
        used[p.home_of[i]] += k * p.reserve_bytes_per_worker
    for g in p.replicas:
        copies = {tuple(sorted(replica_map(p, s, g.name, i).items()))
                  for i, k in s.workers_per_node.items() if k > 0}
        for copy in copies:
            for j, f in copy:
                used[j] += round(g.mem_bytes * f)
    return dict(used)


def replica_map(p: PlacementProblem, s: Solution, group: str, node: int) -> dict[int, float]:
    """Where the copy of ``group`` that ``node``'s workers read lives (default: its home)."""
    return s.replica_homes.get(group, {}).get(node) or {p.home_of[node]: 1.0}


def predict(p: PlacementProblem, s: Solution) -> Prediction:
    """Evaluate a placement.

    Parameters
    ----------
    p
        The problem (costs, sizes).
    s
        The placement.

    Returns
    -------
    Prediction
    """
    reads = reads_matrix(p, s)
    per_node: dict[int, float] = defaultdict(float)
    per_home: dict[int, float] = defaultdict(float)
    for (i, j), b in reads.items():
        bw = p.bw(i, j)
        if bw is None:
            per_node[i] = float("inf")
        else:
            per_node[i] += b / bw
        per_home[j] += b / p.dram_bw(j)
    read_s = max([*per_node.values(), *per_home.values(), 0.0])
    compute = {i: p.compute_time(i, k) for i, k in s.workers_per_node.items()
               if k > 0 and i in p.compute_bytes_per_s}
    compute_s = max([*compute.values(), 0.0])
    # Which ceiling a node meets: its compute, or the reads of its CPUs or of its memory home
    # (a reader node is read-bound when its own streaming or its home's DRAM is the slower).
    bound = {}
    for i, k in s.workers_per_node.items():
        if k > 0:
            r = max(per_node.get(i, 0.0), per_home.get(p.home_of[i], 0.0))
            bound[i] = "compute" if compute.get(i, 0.0) > r else "read"
    counts = {n: k for n, k in s.workers_per_node.items() if k > 0}
    algo, ar = allreduce_choice(p, counts, p.allreduce_bytes)
    palgo, par = allreduce_choice(p, counts, p.prefill_allreduce_bytes)
    coll = p.allreduces_per_token * ar + p.broadcasts_per_token * broadcast_cost(p, counts)
    used = memory_use(p, s)
    over = {}
    for j, b in used.items():
        cap = p.node(j).mem_capacity_bytes
        if cap is not None and b > cap:
            over[j] = b - cap
    token = max(read_s, compute_s) + coll
    return Prediction(
        token_s=token, read_s=read_s, compute_s=compute_s, collective_s=coll,
        tokens_per_s=1.0 / token if token > 0 else float("inf"),
        per_node_read_s=dict(sorted(per_node.items())),
        per_home_read_s=dict(sorted(per_home.items())),
        per_node_compute_s=dict(sorted(compute.items())), bound=dict(sorted(bound.items())),
        bytes_read_per_token=int(sum(reads.values())),
        cross_node_read_bytes_per_token=int(sum(b for (i, j), b in reads.items() if i != j)),
        mem_used_bytes=dict(sorted(used.items())), fits=not over, over_capacity=over,
        decode_algorithm=algo, decode_allreduce_s=ar, prefill_algorithm=palgo,
        prefill_allreduce_s=par,
    )


def lower_bound(p: PlacementProblem) -> float:
    """Seconds per token no placement numaplan can make beats.

    A worker on node i needs at least ``c_i = weights / best_i + kv / home_i`` seconds of node
    i's read capacity per token: its weight bytes at the best bandwidth node i's CPUs have to any
    memory node, and its KV cache (which numaplan keeps on the worker's own memory node) at that
    node's bandwidth; with a compute term, ``c_i`` is at least its products' time on node i's
    cores (and every active node pays at least the smallest fixed call cost). For every number
    ``a`` of active nodes, the ``a`` cheapest nodes sharing W workers continuously give
    ``W / sum(1 / c_i)``, and all the bytes can go no faster than all DRAM together; to that
    the cheapest collective any ``a``-node split can have is added. The bound is the minimum
    over ``a``. (Even, integer shards, as MLC's tensor parallelism has, can
    stay well above it when node bandwidths differ and W is small: see docs/cost-model.md.)
    """
    W = p.num_workers
    weights = p.split_bytes_per_worker + p.replica_stream_bytes
    kv = p.kv_read_bytes_per_worker
    cost = []
    for i in p.cpu_node_ids:
        best = max((p.bw(i, j) or 0.0) for j in p.mem_node_ids)
        home = p.bw(i, p.home_of[i]) or best
        if best > 0:
            cost.append(max(weights / best + kv / home, p.compute_s_per_worker(i)))
    cost.sort()
    # Every active node pays one worker's fixed product calls: no plan beats the cheapest.
    fixed = min((p.compute_fixed_s.get(i, 0.0) for i in p.cpu_node_ids), default=0.0)
    dram = sum(p.dram_bw(j) for j in p.mem_node_ids)
    total = W * (weights + kv)
    stats = _pair_stats(p) if W > 1 and len(p.cpu_node_ids) > 1 else None
    best_t = float("inf")
    for a in range(1, len(cost) + 1):
        if a > W:
            break
        read = max(W / sum(1.0 / c for c in cost[:a]), total / dram, fixed)
        best_t = min(best_t, read + _coll_floor(p, a, stats))
    return best_t


def _pair_stats(p: PlacementProblem) -> tuple[float, float, float, float]:
    """Best-case latency and bandwidth terms over all nodes and node pairs (computed once)."""
    from numaplan.plan.collective import pair_terms

    cpu = list(p.cpu_node_ids)
    intra = [(p.lat_s(n, p.home_of[n]), p.bw(n, p.home_of[n]) or float("inf")) for n in cpu]
    pairs = [pair_terms(p, i, j) for x, i in enumerate(cpu) for j in cpu[x + 1:]]
    return (min(lat for lat, _ in intra), min(lat for lat, _ in pairs),
            max(bw for _, bw in pairs), max(bw for _, bw in intra))


def _coll_floor(p: PlacementProblem, a: int,
                stats: tuple[float, float, float, float] | None) -> float:
    W = p.num_workers
    if W <= 1:
        return 0.0
    alpha = p.collective_alpha_s
    if a == 1:
        hosts = [n for n in p.cpu_node_ids if p.max_workers[n] >= W]
        if not hosts:
            return float("inf")
        return min(p.allreduces_per_token * allreduce_choice(p, {n: W}, p.allreduce_bytes)[1]
                   + p.broadcasts_per_token * broadcast_cost(p, {n: W}) for n in hosts)
    assert stats is not None
    min_l, min_pl, max_pb, max_b = stats
    m = p.allreduce_bytes
    kmax = -(-W // a)
    ar = 3 * alpha + 2 * min_l + 2 * min_pl + (a - 1) * m / max_pb + 2 * (kmax - 1) * m / max_b
    bc = alpha + 2 * min_l + 2 * min_pl
    return p.allreduces_per_token * ar + p.broadcasts_per_token * bc
