"""Topology-aware recursive bisection (networkx Kernighan-Lin) for machines too large for the MIP.

Used when the MIP would be too big for its time limit (hundreds of nodes). The CPU nodes form a
graph whose edge weights are the bandwidth between them; Kernighan-Lin bisection keeps
well-connected nodes (a socket, an SNC/NPS group) on one side, as Scotch-style dual recursive
bipartitioning does (docs/background.md 2: within ~2% of the best known
mapping in milliseconds). Workers are split between the halves in proportion to their local
bandwidth, recursively; memory is then homed local-first by :func:`solver_greedy.place`. For
pure tensor parallelism every balanced mapping costs the same, so what the bisection buys is the
choice of *which* nodes share work when W is smaller than the node count: close ones.
"""

from __future__ import annotations

import networkx as nx
from networkx.algorithms.community import kernighan_lin_bisection

from numaplan.errors import InfeasiblePlanError
from numaplan.plan import solver_greedy
from numaplan.plan.collective import pair_terms
from numaplan.plan.predict import predict
from numaplan.plan.problem import PlacementProblem, largest_remainder
from numaplan.plan.solution import Solution


def topology_graph(p: PlacementProblem) -> nx.Graph:
    """CPU nodes, edges weighted by the slower direction's bandwidth in GB/s."""
    g = nx.Graph()
    g.add_nodes_from(p.cpu_node_ids)
    c = list(p.cpu_node_ids)
    for x, i in enumerate(c):
        for j in c[x + 1:]:
            g.add_edge(i, j, weight=pair_terms(p, i, j)[1] / 1e9)
    return g


def _split(p: PlacementProblem, g: nx.Graph, nodes: list[int], workers: int, seed: int,
           out: dict[int, int]) -> None:
    if workers == 0:
        return
    if len(nodes) == 1:
        out[nodes[0]] = out.get(nodes[0], 0) + workers
        return
    a, b = kernighan_lin_bisection(g.subgraph(nodes), weight="weight", seed=seed)
    halves = [sorted(a), sorted(b)]
    pinned = [sum(p.min_workers.get(n, 0) for n in h) for h in halves]
    caps = [sum(p.max_workers[n] for n in h) - pin for h, pin in zip(halves, pinned,
                                                                     strict=True)]
    free = workers - sum(pinned)
    if free < 0:
        raise InfeasiblePlanError("node_affinity pins more workers than W")
    weights = [sum(p.node_speed(n) for n in h) for h in halves]
    extra = largest_remainder(free, weights, caps)
    for h, pin, e in zip(halves, pinned, extra, strict=True):
        _split(p, g, h, pin + e, seed, out)


def solve(problem: PlacementProblem, *, time_limit_s: float | None = None,
          seed: int = 0) -> Solution:
    """Recursive bisection, compared with the greedy answer; the better one is returned.

    Raises
    ------
    InfeasiblePlanError
        When neither finds a placement that fits.
    """
    p = problem
    g = topology_graph(p)
    candidates: list[Solution] = []
    # Candidate node sets: the whole machine, and the halves/quarters the bisection finds,
    # so that a small W can stay on one well-connected group.
    groups = [sorted(p.cpu_node_ids)]
    frontier = [sorted(p.cpu_node_ids)]
    while frontier:
        nodes = frontier.pop()
        if len(nodes) < 2:
            continue
        a, b = kernighan_lin_bisection(g.subgraph(nodes), weight="weight", seed=seed)
        for h in (sorted(a), sorted(b)):
            if sum(p.max_workers[n] for n in h) >= p.num_workers and \
                    set(p.min_workers) <= set(h):
                groups.append(h)
                frontier.append(h)
    for nodes in groups:
        counts: dict[int, int] = {}
        try:
            _split(p, g, nodes, p.num_workers, seed, counts)
            candidates.append(solver_greedy.place(p, counts).model_copy(
                update={"solver": "partition"}))
        except InfeasiblePlanError:
            continue
    try:
        candidates.append(solver_greedy.solve(p))
    except InfeasiblePlanError:
        pass
    scored = [(predict(p, s), s) for s in candidates]
    scored = [(pr.token_s, s) for pr, s in scored if pr.fits]
    if not scored:
        raise InfeasiblePlanError("no placement fits in memory (partition and greedy tried)")
    best_t, best = min(scored, key=lambda t: t[0])
    return best.model_copy(update={"status": "heuristic", "objective_s": best_t})
