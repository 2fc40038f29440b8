"""Cost of the decode-time collectives (alpha-beta model) and the choice of algorithm.

Algorithms numaplan's CPU collective implements (numaplan.runtime):

- ``one_shot`` (one node, k ranks): every rank publishes its buffer in the node's shared segment,
  one synchronisation, every rank reduces all k buffers itself:
  ``alpha + 2 L + k (k - 1) m / B`` (all k ranks pull k - 1 buffers through the node's bandwidth B).
- ``two_shot`` (one node): reduce-scatter then all-gather through shared memory:
  ``2 alpha + 4 L + 2 (k - 1) m / B``; wins from about 1 MiB.
- ``hierarchical`` (several nodes): reduce to a leader inside each node, leaders exchange across
  nodes, broadcast inside each node:
  ``3 alpha + max_n 2 (k_n - 1) m / B_n + max_n 2 L_n + max_pairs 2 L_ij``
  ``+ (a - 1) m / min_pairs B_ij``
  where a is the number of active nodes. Flat rings over all ranks are never used: at decode
  sizes they pay 2 (p - 1) latencies (docs/background.md 3.2).

``L`` and ``B`` come from the cost model: a node's segment lives at the node's memory home, so
``L_n``/``B_n`` are the latency/bandwidth from node n to its home and ``L_ij``/``B_ij`` the worse of
the two directions between i and j's homes.
"""

from __future__ import annotations

from collections.abc import Mapping

from numaplan.ccl_abi import ALGORITHMS, HIERARCHICAL, ONE_SHOT, TWO_SHOT
from numaplan.plan.problem import PlacementProblem


def _intra(p: PlacementProblem, n: int) -> tuple[float, float]:
    h = p.home_of[n]
    bw = p.bw(n, h)
    assert bw is not None, "home_of always has a bandwidth"
    return p.lat_s(n, h), bw


def pair_terms(p: PlacementProblem, i: int, j: int) -> tuple[float, float]:
    """``(L_ij, B_ij)`` between two CPU nodes' collective segments (worse direction)."""
    hi, hj = p.home_of[i], p.home_of[j]
    lat = max(p.lat_s(i, hj), p.lat_s(j, hi))
    bws = [b for b in (p.bw(i, hj), p.bw(j, hi)) if b is not None]
    assert bws, "homes are reachable by construction"
    return lat, min(bws)


def single_node_costs(p: PlacementProblem, n: int, k: int, m: int) -> dict[str, float]:
    """All-reduce costs of k ranks on node n for an m-byte message."""
    if k <= 1:
        return {"none": 0.0}
    lat, bw = _intra(p, n)
    a = p.collective_alpha_s
    return {ALGORITHMS[ONE_SHOT]: a + 2 * lat + k * (k - 1) * m / bw,
            ALGORITHMS[TWO_SHOT]: 2 * a + 4 * lat + 2 * (k - 1) * m / bw}


def hierarchical_cost(p: PlacementProblem, counts: Mapping[int, int], m: int) -> float:
    """All-reduce cost across several active nodes (see the module docstring)."""
    active = sorted(n for n, k in counts.items() if k > 0)
    a = len(active)
    assert a >= 2
    intra_bw = max(2 * (counts[n] - 1) * m / _intra(p, n)[1] for n in active)
    intra_lat = max(2 * _intra(p, n)[0] for n in active)
    pairs = [pair_terms(p, i, j) for x, i in enumerate(active) for j in active[x + 1:]]
    pair_lat = max(2 * lat for lat, _ in pairs)
    pair_bw = max((a - 1) * m / bw for _, bw in pairs)
    return 3 * p.collective_alpha_s + intra_bw + intra_lat + pair_lat + pair_bw


def allreduce_choice(p: PlacementProblem, counts: Mapping[int, int], m: int) -> tuple[str, float]:
    """The cheapest algorithm for an m-byte all-reduce over ``counts`` and its cost in seconds."""
    active = [n for n, k in counts.items() if k > 0]
    if sum(counts.values()) <= 1:
        return "none", 0.0
    if len(active) == 1:
        costs = single_node_costs(p, active[0], counts[active[0]], m)
        algo = min(costs, key=lambda k: (costs[k], k))
        return algo, costs[algo]
    return ALGORITHMS[HIERARCHICAL], hierarchical_cost(p, counts, m)


def broadcast_cost(p: PlacementProblem, counts: Mapping[int, int]) -> float:
    """Cost of ``broadcast_from_worker0`` of a few bytes (token ids, positions)."""
    active = sorted(n for n, k in counts.items() if k > 0)
    if sum(counts.values()) <= 1:
        return 0.0
    lat = max(2 * _intra(p, n)[0] for n in active)
    if len(active) > 1:
        lat += max(2 * pair_terms(p, i, j)[0]
                   for x, i in enumerate(active) for j in active[x + 1:])
    return p.collective_alpha_s + lat
