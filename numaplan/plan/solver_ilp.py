"""Exact placement with a mixed-integer program (pulp; HiGHS when installed, else CBC).

The only module that imports pulp. The model is the aggregated formulation of
docs/background.md 1.2 (worker *counts* per node, page-granular spill as continuous
bytes, replicated groups as facility location), with the collective cost of
:mod:`numaplan.plan.collective` linearised exactly at integer points, so the objective of an
optimal answer equals :func:`numaplan.plan.predict.predict` of the answer.

Variables (C = CPU nodes, M = memory nodes, G = replicated groups):

- ``k[i]`` integer workers on i; ``y[i]`` binary, i active; ``u1`` binary, exactly one active
  node; ``z[i,j]`` >= y_i + y_j - 1, both active;
- ``g[i,j]`` >= 0 split bytes (MB, times in microseconds) of node i's workers homed on j;
- ``x[g,i,j]`` binary, node i reads group g's copy on j; ``c[g,j]`` a copy of g on j;
  ``w[g,i,j]`` = k_i x[g,i,j] (linearised);
- ``T_read`` >= every reader node's and every memory node's streaming time, and every CPU
  node's compute time ``k_i x`` (one worker's products on the node's cores) ``+ y_i x`` (one
  worker's fixed call costs) when the cost model has a compute term: the roofline of
  :mod:`numaplan.plan.predict`; collective terms ``T_ar``, ``T_intra``, ``T_lat``, ``T_pair``,
  ``T_pbw``.

Objective: ``T_read + n_allreduce * T_ar + n_broadcast * (alpha + T_lat + T_pair)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

import pulp

from numaplan.errors import InfeasiblePlanError, UsageError
from numaplan.plan.collective import pair_terms, single_node_costs
from numaplan.plan.problem import PAGE, PlacementProblem
from numaplan.plan.solution import Solution

log = logging.getLogger(__name__)

#: Byte unit of the model: megabytes. In gigabytes, a byte count is exact only to the solvers'
#: feasibility tolerance (1e-7 GB = 100 bytes): HiGHS then met the split equality a few hundred
#: bytes short and spent them on a slower replica home, an answer the predictor prices above the
#: greedy one. In megabytes the slack is a tenth of a byte, below anything a placement moves.
MB = 1e6
#: Time unit of the model: microseconds. In seconds, latency terms (~1e-7) fall below the MIP
#: solvers' feasibility tolerance (1e-7) and silently vanish.
US = 1e6
#: Replica copies a node may read: its own home plus this many fastest other memory nodes.
#: Replicas are small next to the split bytes, so pruning them costs little and keeps the
#: binary count linear in the node count.
REPLICA_CANDIDATES = 3


@contextlib.contextmanager
def _quiet_stdout():
    """Silence C-level stdout: highspy prints a banner when a solver object is created, before
    pulp can switch its output off, and it must not end up in a user's JSON or table."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # pytest capture, notebooks
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def available_backends() -> tuple[str, ...]:
    """MIP backends pulp can use here, best first."""
    names = pulp.listSolvers(onlyAvailable=True)
    return tuple(b for b, n in (("highs", "HiGHS"), ("cbc", "PULP_CBC_CMD")) if n in names)


def _make_solver(backend: str, time_limit_s: float, gap: float):
    if backend == "auto":
        backends = available_backends()
        if not backends:
            raise UsageError("no MIP solver available to pulp (install highspy, or pulp with "
                             "its bundled CBC)")
        backend = backends[0]
    if backend == "highs":
        # No `threads` option: HiGHS refuses to change it once its scheduler runs in the
        # process, and its MIP search is deterministic for a fixed seed anyway.
        return backend, pulp.HiGHS(msg=False, timeLimit=time_limit_s, gapRel=gap,
                                   random_seed=0)
    if backend == "cbc":
        return backend, pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap,
                                          threads=1, options=["randomSeed 0"])
    raise UsageError(f"unknown MIP backend {backend!r}; choose auto, highs or cbc")


def build_model(p: PlacementProblem) -> tuple[pulp.LpProblem, dict]:
    """The MIP of the module docstring and its variables (for tests and ``--debug-dir``)."""
    prob = pulp.LpProblem("numaplan_placement", pulp.LpMinimize)
    C, M = list(p.cpu_node_ids), list(p.mem_node_ids)
    W = p.num_workers
    hi = {i: min(p.max_workers[i], W) for i in C}
    k = {i: prob.add_variable(f"k_{i}", p.min_workers.get(i, 0), hi[i], cat="Integer") for i in C}
    y = {i: prob.add_variable(f"y_{i}", cat="Binary") for i in C}
    prob += pulp.lpSum(k.values()) == W, "all_workers"
    for i in C:
        prob += k[i] <= hi[i] * y[i], f"active_ub_{i}"
        prob += k[i] >= y[i], f"active_lb_{i}"
    homes = {i: ([p.home_of[i]] if p.prefer_local_memory else
                 [j for j in M if p.bw(i, j) is not None]) for i in C}
    P = p.split_bytes_per_worker / MB
    g = {(i, j): prob.add_variable(f"g_{i}_{j}", 0) for i in C for j in homes[i]}
    for i in C:
        prob += pulp.lpSum(g[i, j] for j in homes[i]) == P * k[i], f"split_{i}"
    reads: dict[tuple[int, int], list] = {}

    def add_read(i: int, j: int, expr) -> None:
        reads.setdefault((i, j), []).append(expr)

    for (i, j), v in g.items():
        add_read(i, j, v)
    for i in C:
        add_read(i, p.home_of[i], (p.kv_read_bytes_per_worker / MB) * k[i])
    mem_terms: dict[int, list] = {j: [] for j in M}
    for (i, j), v in g.items():
        mem_terms[j].append(v)
    for i in C:
        mem_terms[p.home_of[i]].append((p.reserve_bytes_per_worker / MB) * k[i])
    x, w, c = {}, {}, {}
    for grp in p.replicas:
        for i in C:
            cand = [p.home_of[i]]
            if not p.prefer_local_memory:
                others = sorted((j for j in M if j != p.home_of[i] and p.bw(i, j) is not None),
                                key=lambda j: (-(p.bw(i, j) or 0), j))
                cand += others[:REPLICA_CANDIDATES]
            for j in cand:
                x[grp.name, i, j] = prob.add_variable(f"x_{grp.name}_{i}_{j}", cat="Binary")
                w[grp.name, i, j] = prob.add_variable(f"w_{grp.name}_{i}_{j}", 0, hi[i])
                prob += w[grp.name, i, j] <= hi[i] * x[grp.name, i, j]
                prob += w[grp.name, i, j] <= k[i]
                prob += w[grp.name, i, j] >= k[i] - hi[i] * (1 - x[grp.name, i, j])
                if (grp.name, j) not in c:
                    c[grp.name, j] = prob.add_variable(f"c_{grp.name}_{j}", 0, 1)
                    mem_terms[j].append((grp.mem_bytes / MB) * c[grp.name, j])
                prob += c[grp.name, j] >= x[grp.name, i, j]
                add_read(i, j, (grp.read_bytes_per_token / MB) * w[grp.name, i, j])
            prob += pulp.lpSum(x[grp.name, i, j] for j in cand) == y[i], \
                f"copy_{grp.name}_{i}"
    for j in M:
        cap = p.node(j).mem_capacity_bytes
        if cap is not None and mem_terms[j]:
            prob += pulp.lpSum(mem_terms[j]) <= cap / MB, f"capacity_{j}"
    t_read = prob.add_variable("T_read", 0)
    for i in C:
        prob += t_read >= pulp.lpSum((US / (p.bw(i, j) / MB)) * pulp.lpSum(e)
                                     for (r, j), e in reads.items() if r == i), f"reader_{i}"
    for i in C:
        if i in p.compute_bytes_per_s:
            prob += t_read >= (US * p.compute_s_per_worker(i)) * k[i] + \
                (US * p.compute_fixed_s.get(i, 0.0)) * y[i], f"compute_{i}"
    for j in M:
        terms = [pulp.lpSum(e) for (r, m), e in reads.items() if m == j]
        if terms:
            prob += t_read >= (US / (p.dram_bw(j) / MB)) * pulp.lpSum(terms), f"dram_{j}"
    objective = t_read
    if W > 1:
        m_b = p.allreduce_bytes
        a = p.collective_alpha_s * US
        u1 = prob.add_variable("u1", cat="Binary")
        n = len(C)
        prob += pulp.lpSum(y.values()) <= 1 + (n - 1) * (1 - u1), "one_node_ub"
        prob += pulp.lpSum(y.values()) >= 2 - u1, "one_node_lb"
        c1 = {i: US * min(single_node_costs(p, i, W, m_b).values()) if hi[i] >= W else 0.0
              for i in C}
        pairs = [(i, j) for x_, i in enumerate(C) for j in C[x_ + 1:]]
        # (latency in us, bandwidth in bytes/us)
        pt = {(i, j): (lat * US, bw / US) for (i, j), (lat, bw) in
              ((ij, pair_terms(p, *ij)) for ij in pairs)}
        intra = {i: (p.lat_s(i, p.home_of[i]) * US, p.bw(i, p.home_of[i]) / US) for i in C}
        big = max([*c1.values(), 0.0]) + 3 * a + sum(
            2 * max(W - 1, 0) * m_b / bw + 2 * lat for lat, bw in intra.values()) + sum(
            2 * lat + (n - 1) * m_b / bw for lat, bw in pt.values())
        t_ar = prob.add_variable("T_ar", 0)
        t_intra = prob.add_variable("T_intra", 0)
        t_lat = prob.add_variable("T_lat", 0)
        t_pair = prob.add_variable("T_pair", 0)
        t_pbw = prob.add_variable("T_pbw", 0)
        prob += t_ar >= pulp.lpSum(c1[i] * y[i] for i in C) - big * (1 - u1), "ar_one_node"
        prob += t_ar >= 3 * a + t_intra + t_lat + t_pair + t_pbw - big * u1, "ar_hier"
        for i in C:
            lat, bw = intra[i]
            prob += t_intra >= (2 * m_b / bw) * (k[i] - y[i]), f"intra_{i}"
            prob += t_lat >= 2 * lat * y[i], f"lat_{i}"
        for i, j in pairs:
            lat, bw = pt[i, j]
            zz = prob.add_variable(f"z_{i}_{j}", 0, 1)
            prob += zz >= y[i] + y[j] - 1
            prob += t_pair >= 2 * lat * zz
            prob += t_pbw >= (m_b / bw) * (pulp.lpSum(y.values()) - 1) - \
                (m_b / bw) * (n - 1) * (1 - zz)
        objective = objective + p.allreduces_per_token * t_ar + \
            p.broadcasts_per_token * (a + t_lat + t_pair)
    prob += objective
    cross = pulp.lpSum(pulp.lpSum(e) for (i, j), e in reads.items() if i != j)
    return prob, {"k": k, "y": y, "g": g, "x": x, "w": w, "c": c, "objective": objective,
                  "cross_mb": cross}


def solve(problem: PlacementProblem, *, time_limit_s: float = 30.0, seed: int = 0,
          backend: str = "auto", gap: float = 1e-6, warm_start: Solution | None = None,
          max_cross_bytes: float | None = None) -> Solution:
    """Solve the placement MIP.

    Parameters
    ----------
    problem
        The aggregated problem.
    time_limit_s
        Wall-clock limit given to the MIP solver; the incumbent is returned with its gap when
        it is hit.
    seed
        Kept for interface parity; the solvers run single-threaded with a fixed seed so that
        plans are reproducible.
    backend
        ``auto`` (HiGHS when installed, else CBC), ``highs`` or ``cbc``.
    gap
        Relative optimality gap at which the solver may stop.
    warm_start
        A feasible solution (the greedy one) whose worker counts seed the search.
    max_cross_bytes
        Upper bound on the bytes per token read across nodes (the penalty continuation of
        :mod:`numaplan.plan.planner` uses it to keep crossing monotone in the penalty).

    Raises
    ------
    InfeasiblePlanError
        When the solver proves there is no placement, or finds none within the time limit.
    """
    p = problem
    prob, v = build_model(p)
    if max_cross_bytes is not None:
        prob += v["cross_mb"] <= max(max_cross_bytes, 0.0) / MB, "cross_cap"
    if warm_start is not None:
        for i, var in v["k"].items():
            var.setInitialValue(warm_start.workers_per_node.get(i, 0))
    name, solver = _make_solver(backend, time_limit_s, gap)
    t0 = time.perf_counter()
    with _quiet_stdout():
        prob.solve(solver)
    first_optimal = prob.sol_status == pulp.LpSolutionOptimal
    best = pulp.value(prob.objective)
    remaining = time_limit_s - (time.perf_counter() - t0)
    if first_optimal and best is not None and remaining > 0.5:
        # Second, lexicographic stage: among placements as fast as the optimum, the one that
        # crosses nodes least. Ties are everywhere when crossing is (nearly) free, and an
        # arbitrary tie-break would let a higher penalty show more crossing than a lower one.
        stage1 = prob.copy()
        prob += v["objective"] <= best * (1 + 1e-9) + 1e-6, "keep_optimum"
        prob.setObjective(v["cross_mb"])
        _, solver2 = _make_solver(name, remaining, gap)
        with _quiet_stdout():
            prob.solve(solver2)
        if prob.sol_status != pulp.LpSolutionOptimal:
            prob = stage1
            with _quiet_stdout():
                prob.solve(_make_solver(name, remaining, gap)[1])
    elapsed = time.perf_counter() - t0
    status = pulp.LpStatus[prob.status]
    log.debug("MIP %s: %s in %.3f s, %d variables, %d constraints", name, status, elapsed,
              len(prob.variables()), prob.numConstraints())
    has_solution = prob.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    if prob.status == pulp.LpStatusInfeasible or not has_solution:
        raise InfeasiblePlanError(f"the MIP ({name}) found no placement: {status} "
                                  f"(memory capacity or node_affinity cannot be satisfied)")
    mip_gap = None
    if name == "highs":
        mip_gap = float(prob.solverModel.getInfo().mip_gap)
        mip_gap = max(mip_gap, 0.0) if mip_gap < float("inf") else None
    optimal = prob.sol_status == pulp.LpSolutionOptimal
    counts = {i: round(var.value() or 0) for i, var in v["k"].items()}
    counts = {i: kk for i, kk in counts.items() if kk > 0}
    split: dict[int, dict[int, int]] = {}
    P = p.split_bytes_per_worker
    for i, kk in counts.items():
        parts = {j: (var.value() or 0.0) * MB / kk for (r, j), var in v["g"].items() if r == i}
        ints = {j: round(b) for j, b in parts.items() if b * kk > PAGE}
        if not ints:
            ints = {p.home_of[i]: 0}
        top = max(ints, key=lambda j: (ints[j], j == p.home_of[i], -j))
        ints[top] += P - sum(ints.values())
        split[i] = {j: b for j, b in sorted(ints.items()) if b > 0} or {p.home_of[i]: P}
    reps: dict[str, dict[int, dict[int, float]]] = {}
    for (gname, i, j), var in v["x"].items():
        if i in counts and (var.value() or 0) > 0.5:
            reps.setdefault(gname, {})[i] = {j: 1.0}
    return Solution(workers_per_node=dict(sorted(counts.items())), split_homes=split,
                    replica_homes=reps, solver=f"ilp-{name}",
                    status="optimal" if optimal else "feasible",
                    gap=mip_gap if mip_gap is not None else (0.0 if optimal else None),
                    objective_s=pulp.value(v["objective"]) / US)
