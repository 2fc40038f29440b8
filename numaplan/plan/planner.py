"""From (workload, topology, cost model, request) to a :class:`~numaplan.plan.schema.Plan`.

Orchestrates the solvers (greedy always; then the MIP, or recursive bisection for machines too
large for it), spells the aggregate answer out per worker (node, CPUs, memory binding) and per
tensor (homes of every piece), prices the baselines and the lower bound with the same predictor,
and returns the plan plus a report of the volatile facts (solve times) that must not go into the
plan file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from numaplan._base import Frozen
from numaplan._version import __version__
from numaplan.cost import DEFAULT_PENALTY, CostModel, Penalty
from numaplan.errors import InfeasiblePlanError, UsageError
from numaplan.model import Workload
from numaplan.model.sizes import KV_PAGE_TOKENS, kv_window
from numaplan.plan import baselines, solver_greedy, solver_partition
from numaplan.plan.predict import Prediction, lower_bound, predict
from numaplan.plan.problem import (
    DEFAULT_MEM_HEADROOM,
    MIN_KV_TOKENS,
    PAGE,
    PlacementProblem,
    build_problem,
)
from numaplan.plan.schema import (
    BaselinePrediction,
    CollectiveChoice,
    Plan,
    PlanCollectives,
    PlanCostModel,
    PlanKVCache,
    PlanModelInfo,
    PlanNode,
    PlanPrediction,
    PlanRequest,
    PlanSolver,
    PlanTensor,
    PlanTopology,
    PlanWorker,
    TensorHome,
    r6,
)
from numaplan.plan.solution import Solution
from numaplan.topology import Topology, format_cpulist

log = logging.getLogger(__name__)

SOLVERS = ("auto", "greedy", "ilp", "partition")
#: numa_inter_node_penalty is applied in steps of this size (see :func:`_monotone_in_penalty`).
PENALTY_STEP = 0.05
#: Above this many CPU nodes ``auto`` uses recursive bisection instead of the MIP.
MIP_MAX_CPU_NODES = 64
#: Time limit of the MIP solver when none is given.
DEFAULT_TIME_LIMIT_S = 30.0


class PlanOptions(Frozen):
    """How to plan (the user-facing knobs plus solver settings).

    The KV cache each worker reserves (:func:`size_kv_cache`): ``max_total_seq_len`` tokens
    exactly when given; otherwise ``kv_windows`` context windows (1: MLC's interactive and local
    modes; more: a server's batch), or the largest page multiple that fits after the weights.
    ``plan_against_free`` caps each node at the free memory its source reported.
    """

    tensor_parallel_shards: int
    numa_nodes: tuple[int, ...] | None = None
    numa_inter_node_penalty: Penalty = DEFAULT_PENALTY
    numa_prefer_local_memory: bool = True
    node_affinity: dict[int, int] = Field(default_factory=dict)
    batch_size: int = 1
    context_tokens: int | None = None
    mem_headroom: float = DEFAULT_MEM_HEADROOM
    solver: str = "auto"
    mip_backend: str = "auto"
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    #: ``None``: the cost model's measured all-reduce alpha, else the nominal one.
    collective_alpha_s: float | None = None
    oversubscribe: bool = False
    max_total_seq_len: int | None = Field(default=None, ge=1)
    kv_windows: int = Field(default=1, ge=1)
    plan_against_free: bool = False
    mode: Literal["local", "interactive", "server"] | None = None

    @field_validator("numa_inter_node_penalty")
    @classmethod
    def _on_grid(cls, v: float) -> float:
        # Range-checked by its type first; applied in steps of PENALTY_STEP so that crossing
        # is monotone in it.
        return round(round(v / PENALTY_STEP) * PENALTY_STEP, 10)


class PlanReport(Frozen):
    """Volatile facts of one planning run (kept out of the plan file)."""

    solve_s: dict[str, float]
    total_s: float
    problem: dict[str, int]
    solver_answers: dict[str, float]


class PlanResult(Frozen):
    """What :func:`make_plan` returns.

    Attributes
    ----------
    plan
        The plan (what ``numa-plan.json`` holds).
    report
        Volatile facts of the run (solve times), kept out of the plan.
    problem
        The placement problem that was solved (on the nodes the plan may use).
    solution
        The chosen solver answer, in aggregate form.
    """

    plan: Plan
    report: PlanReport
    problem: PlacementProblem
    solution: Solution


def make_plan(workload: Workload, topology: Topology, cost: CostModel, options: PlanOptions, *,
              model_name: str) -> PlanResult:
    """Plan a model on a machine.

    Parameters
    ----------
    workload
        The model (``numaplan.model.load_workload``).
    topology
        The machine (not yet restricted: ``options.numa_nodes`` is applied here).
    cost
        The cost model for that machine.
    options
        Knobs and solver settings.
    model_name
        Name recorded in the plan (usually the model directory's name).

    Returns
    -------
    PlanResult
        The plan, and the report, problem and solution behind it.

    Raises
    ------
    InfeasiblePlanError
        When no placement satisfies the request.
    UsageError
        For an unknown solver name.
    """
    t_start = time.perf_counter()
    if options.solver not in SOLVERS:
        raise UsageError(f"unknown solver {options.solver!r}; choose one of {', '.join(SOLVERS)}")
    topo = topology.restricted_to(options.numa_nodes) if options.numa_nodes else topology
    if cost.method == "slit" and (cost.params.get("numa_inter_node_penalty") !=
                                  options.numa_inter_node_penalty or
                                  cost.topology_fingerprint != topo.fingerprint()):
        # A SLIT-derived model is priced at the (grid) penalty of the request, on the nodes
        # the plan may use.
        cost = _slit_at(topo, cost, options.numa_inter_node_penalty)
    problem, kv = size_kv_cache(workload, topo, cost, options)
    times: dict[str, float] = {}
    answers: dict[str, Solution] = {}
    errors: dict[str, InfeasiblePlanError] = {}

    def run(name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            answers[name] = fn()
        except InfeasiblePlanError as exc:
            log.info("solver %s: %s", name, exc)
            errors[name] = exc
            if options.solver == name:
                raise
        finally:
            times[name] = time.perf_counter() - t0

    run("greedy", lambda: solver_greedy.solve(problem))
    solver = options.solver
    if solver == "auto":
        solver = "ilp" if len(problem.cpu_node_ids) <= MIP_MAX_CPU_NODES else "partition"
    if solver == "ilp":
        from numaplan.plan import solver_ilp  # pulp is imported only when the MIP runs

        run("ilp", lambda: solver_ilp.solve(problem, time_limit_s=options.time_limit_s,
                                            backend=options.mip_backend,
                                            warm_start=answers.get("greedy")))
    elif solver == "partition":
        run("partition", lambda: solver_partition.solve(problem))
    if solver == "ilp" and "ilp" in answers and cost.method == "slit":
        t0 = time.perf_counter()
        answers["ilp"] = _monotone_in_penalty(workload, topo, cost, options, problem,
                                              answers["ilp"], kv.max_total_seq_len)
        times["penalty_chain"] = time.perf_counter() - t0
    chosen = answers.get(solver) or answers.get("greedy")
    if chosen is None:
        # The greedy's message names the node and the bytes it lacks: the most useful one.
        raise errors.get("greedy") or errors.get(solver) or \
            InfeasiblePlanError("no solver found a placement")
    if solver != "greedy" and solver not in answers:
        log.warning("%s found no placement; using the greedy one", solver)
    pred = predict(problem, chosen)
    if not pred.fits:
        worst = max(pred.over_capacity, key=lambda j: pred.over_capacity[j])
        raise InfeasiblePlanError(f"node {worst} lacks {pred.over_capacity[worst]} bytes for the "
                                  "planned placement")
    for name, sol in answers.items():
        log.debug("%s: %s workers per node, %.6g s/token", name, sol.workers_per_node,
                  predict(problem, sol).token_s)
    plan = _spell_out(workload, topo, cost, options, problem, chosen, pred, model_name, kv)
    report = PlanReport(
        solve_s={k: round(v, 4) for k, v in times.items()},
        total_s=round(time.perf_counter() - t_start, 4),
        problem={"cpu_nodes": len(problem.cpu_node_ids), "mem_nodes": len(problem.mem_node_ids),
                 "workers": problem.num_workers, "tensors": len(workload.tensors)},
        solver_answers={k: predict(problem, s).token_s for k, s in answers.items()},
    )
    return PlanResult(plan=plan, report=report, problem=problem, solution=chosen)


def _slit_at(topo: Topology, cost: CostModel, penalty: float) -> CostModel:
    """The SLIT-derived cost model at another penalty, with the same local figures."""
    from numaplan.cost import cost_from_slit

    bw_arg = cost.params.get("local_bw_gbps_arg")
    lat_arg = cost.params.get("local_lat_ns_arg")
    return cost_from_slit(topo, penalty=penalty,
                          local_bw_gbps=float(bw_arg) if bw_arg else None,
                          local_lat_ns=float(lat_arg) if lat_arg else None)


def _problem(workload: Workload, topo: Topology, cost: CostModel, options: PlanOptions,
             kv_tokens: int | None = None) -> PlacementProblem:
    """The placement problem of a request, with ``kv_tokens`` of KV cache per worker."""
    return build_problem(
        workload, topo, cost, num_workers=options.tensor_parallel_shards,
        batch_size=options.batch_size, context_tokens=options.context_tokens,
        prefer_local_memory=options.numa_prefer_local_memory,
        node_affinity=options.node_affinity, mem_headroom=options.mem_headroom,
        collective_alpha_s=options.collective_alpha_s, oversubscribe=options.oversubscribe,
        kv_capacity_tokens=kv_tokens, plan_against_free=options.plan_against_free)


def _fits(problem: PlacementProblem) -> bool:
    """Whether some placement fits in memory (the greedy solver as the oracle: it spills
    wherever the request allows and names what it lacks when nothing fits)."""
    try:
        return predict(problem, solver_greedy.solve(problem)).fits
    except InfeasiblePlanError:
        return False


def _largest_fitting(workload: Workload, topo: Topology, cost: CostModel, options: PlanOptions,
                     lo: int, hi: int) -> int | None:
    """The largest page multiple of tokens in ``[lo, hi]`` whose KV cache fits (``None``: none
    does). Fitting is monotone in the KV size, so a bisection over pages finds it."""
    lo_p, hi_p = -(-lo // KV_PAGE_TOKENS), hi // KV_PAGE_TOKENS
    best = None
    while lo_p <= hi_p:
        mid = (lo_p + hi_p) // 2
        if _fits(_problem(workload, topo, cost, options, mid * KV_PAGE_TOKENS)):
            best, lo_p = mid * KV_PAGE_TOKENS, mid + 1
        else:
            hi_p = mid - 1
    return best


def size_kv_cache(workload: Workload, topo: Topology, cost: CostModel, options: PlanOptions
                  ) -> tuple[PlacementProblem, PlanKVCache]:
    """Size every worker's KV cache as MLC sizes ``max_total_sequence_length``, and the
    placement problem that reserves it.

    The request's ``max_total_seq_len`` exactly when given. Otherwise ``kv_windows`` context
    windows when they fit; else the largest page multiple that fits after the weights (a
    warning names the window given up); refused only when not even the minimum fits (the
    larger of the prefill chunk and :data:`MIN_KV_TOKENS`, or the window if shorter), and
    then the error names the longest context that would fit.

    Parameters
    ----------
    workload, topo, cost, options
        As :func:`make_plan` (``topo`` already restricted to the request's nodes).

    Returns
    -------
    tuple
        ``(problem, kv)``.

    Raises
    ------
    InfeasiblePlanError
        When the asked or minimum capacity does not fit (naming the longest that would).
    """
    window = kv_window(workload)
    page = KV_PAGE_TOKENS

    def refuse(tokens: int, what: str) -> InfeasiblePlanError:
        longest = _largest_fitting(workload, topo, cost, options, page, tokens - 1)
        # The greedy's message names the node and the bytes it lacks.
        at = tokens if longest is not None else page
        try:
            solver_greedy.solve(_problem(workload, topo, cost, options, at))
            why = f"no placement fits at W={options.tensor_parallel_shards}"
        except InfeasiblePlanError as exc:
            why = str(exc)
        if longest is None:
            return InfeasiblePlanError(f"{why} (even with a {page}-token KV cache)")
        return InfeasiblePlanError(
            f"{what} of {tokens} tokens per worker does not fit: {why}; the longest context "
            f"that fits is {longest} tokens (--max-total-seq-len {longest})")

    if options.max_total_seq_len is not None:
        tokens = -(-options.max_total_seq_len // page) * page
        problem = _problem(workload, topo, cost, options, tokens)
        if not _fits(problem):
            raise refuse(tokens, "the requested KV cache")
        return problem, _kv_info(problem, window, "request")
    wanted = window * options.kv_windows
    problem = _problem(workload, topo, cost, options, wanted)
    if _fits(problem):
        return problem, _kv_info(problem, window, "context window")
    minimum = min(max(problem.prefill_tokens, MIN_KV_TOKENS), wanted)
    if not _fits(_problem(workload, topo, cost, options, minimum)):
        raise refuse(minimum, "the minimum KV cache")
    tokens = _largest_fitting(workload, topo, cost, options, minimum, wanted)
    assert tokens is not None  # the minimum fits
    log.warning("KV cache: %d tokens per worker fit in memory after the weights; %s given up "
                "(--max-total-seq-len sets the capacity explicitly)", tokens,
                f"the context window of {window} tokens is" if options.kv_windows == 1 else
                f"{options.kv_windows} context windows of {window} tokens are")
    problem = _problem(workload, topo, cost, options, tokens)
    return problem, _kv_info(problem, window, "memory")


def _kv_info(p: PlacementProblem, window: int, limited_by: str) -> PlanKVCache:
    return PlanKVCache(max_total_seq_len=p.kv_capacity_tokens, context_window_size=window,
                       page_tokens=KV_PAGE_TOKENS, bytes_per_token=p.kv_bytes_per_token,
                       bytes_per_worker=p.kv_capacity_tokens * p.kv_bytes_per_token,
                       limited_by=limited_by)


def penalty_grid(penalty: float) -> list[float]:
    """The penalties the continuation visits: 0, 0.05, ..., ``penalty``."""
    n = round(penalty / PENALTY_STEP)
    return [round(k * PENALTY_STEP, 10) for k in range(n + 1)]


def _monotone_in_penalty(workload: Workload, topo: Topology, cost: CostModel,
                         options: PlanOptions, problem: PlacementProblem,
                         solution: Solution, kv_tokens: int) -> Solution:
    """Make cross-node traffic non-increasing in ``numa_inter_node_penalty``.

    The token time is a bottleneck (a maximum over nodes), so the plain optimum at a higher
    penalty can cross *more* (bytes added on a node that is not the bottleneck cost nothing).
    The continuation walks the penalty grid 0, 0.05, ..., p; at each step it solves with the
    crossing capped below the previous step's plan and keeps the previous plan when nothing
    better fits the cap. The chain for p1 is a prefix of the chain for p2 > p1, so
    ``cross(plan(p2)) <= cross(plan(p1))`` by construction. Skipped when the plan does not
    cross nodes at all, which is the usual case.
    """
    from numaplan.plan import solver_ilp

    if predict(problem, solution).cross_node_read_bytes_per_token == 0:
        return solution

    prev: Solution | None = None
    prev_cross = float("inf")
    for g in penalty_grid(options.numa_inter_node_penalty):
        prob_g = _problem(workload, topo, _slit_at(topo, cost, g), options, kv_tokens)
        candidates: list[Solution] = []
        if prev is not None:
            candidates.append(prev)
        if prev_cross > 0:
            try:
                candidates.append(solver_ilp.solve(
                    prob_g, time_limit_s=options.time_limit_s, backend=options.mip_backend,
                    max_cross_bytes=None if prev is None else prev_cross))
            except InfeasiblePlanError:
                pass
        # Exact integer test after rounding: the previous plan always qualifies.
        scored = [(pr.token_s, pr.cross_node_read_bytes_per_token, s) for s in candidates
                  if (pr := predict(prob_g, s)).fits and
                  pr.cross_node_read_bytes_per_token <= prev_cross]
        if not scored:
            return solution
        _, prev_cross, prev = min(scored, key=lambda t: (t[0], t[1]))
    assert prev is not None
    return prev


def _spell_out(workload: Workload, topo: Topology, cost: CostModel, options: PlanOptions,
               p: PlacementProblem, s: Solution, pred: Prediction, model_name: str,
               kv: PlanKVCache) -> Plan:
    workers = []
    for w, n, cpus in _assign(p, s, options.node_affinity):
        workers.append(PlanWorker(worker_id=w, node_id=n, cpus=format_cpulist(cpus),
                                  num_threads=len(cpus), mem_node_id=p.home_of[n],
                                  mem_policy="bind"))
        _log_worker(p, s, pred, w, n, cpus, options.node_affinity)
    by_node: dict[int, list[int]] = {}
    for w in workers:
        by_node.setdefault(w.node_id, []).append(w.worker_id)
    tensors = _tensor_homes(workload, p, s)
    homed: dict[int, int] = dict(pred.mem_used_bytes)
    nodes = tuple(PlanNode(
        node_id=n.node_id, socket_id=n.socket_id, cpus=format_cpulist(n.cpus),
        mem_total_bytes=n.mem_total_bytes, mem_capacity_bytes=n.mem_capacity_bytes,
        mem_capacity_basis=n.capacity_basis, worker_ids=tuple(by_node.get(n.node_id, ())),
        bytes_homed=homed.get(n.node_id, 0),
        predicted_read_s=(r6(pred.per_node_read_s[n.node_id])
                          if n.node_id in pred.per_node_read_s else None),
        predicted_compute_s=(r6(pred.per_node_compute_s[n.node_id])
                             if n.node_id in pred.per_node_compute_s else None),
        bound=pred.bound.get(n.node_id))  # type: ignore[arg-type]
        for n in p.nodes)
    counts = {n: len(ids) for n, ids in by_node.items()}
    choices = [CollectiveChoice(phase="decode", message_bytes=p.allreduce_bytes,
                                algorithm=pred.decode_algorithm,
                                predicted_s=r6(pred.decode_allreduce_s))]
    choices.append(CollectiveChoice(phase="prefill", message_bytes=p.prefill_allreduce_bytes,
                                    algorithm=pred.prefill_algorithm,
                                    predicted_s=r6(pred.prefill_allreduce_s)))
    collectives = PlanCollectives(
        kind="numaplan-shm" if p.num_workers > 1 else "none",
        intra_node_groups=tuple(tuple(sorted(ids)) for _, ids in sorted(by_node.items())),
        inter_node_leaders=tuple(sorted(min(ids) for ids in by_node.values()))
        if len(by_node) > 1 else (),
        allreduces_per_token=p.allreduces_per_token,
        broadcasts_per_token=p.broadcasts_per_token,
        choices=tuple(choices),
        # Each rank's slot must hold the largest message (prefill), double-buffered.
        segment_bytes=2 * max(p.prefill_allreduce_bytes * max(counts.values(), default=1),
                              PAGE),
    )
    lb = lower_bound(p)
    base: dict[str, BaselinePrediction] = {}
    for name in baselines.BASELINES:
        b = baselines.baseline(p, name)
        if b is None:
            continue
        bp = predict(p, b)
        base[name] = BaselinePrediction(
            tokens_per_s=r6(bp.tokens_per_s), token_s=r6(bp.token_s), fits=bp.fits,
            workers_per_node=dict(sorted(b.workers_per_node.items())),
            cross_node_read_bytes_per_token=bp.cross_node_read_bytes_per_token)
    # Assumed, not measured: SLIT's nominal bandwidth, or figures from memory specifications.
    nominal = cost.method == "memory-spec" or (
        cost.method == "slit" and "nominal" in str(cost.params.get("local_bw_source", "")))
    prediction = PlanPrediction(
        batch_size=p.batch_size, token_s=r6(pred.token_s), tokens_per_s=r6(pred.tokens_per_s),
        read_s=r6(pred.read_s), compute_s=r6(pred.compute_s),
        collective_s=r6(pred.collective_s), compute_source=p.compute_source,
        collective_alpha_s=r6(p.collective_alpha_s),
        collective_alpha_source=("request" if options.collective_alpha_s is not None else
                                 "measured" if cost.collective is not None else "nominal"),
        per_node_read_s={k: r6(v) for k, v in pred.per_node_read_s.items()},
        per_node_compute_s={k: r6(v) for k, v in pred.per_node_compute_s.items()},
        bytes_read_per_token=pred.bytes_read_per_token,
        cross_node_read_bytes_per_token=pred.cross_node_read_bytes_per_token,
        lower_bound_token_s=r6(lb), lower_bound_tokens_per_s=r6(1 / lb),
        fraction_of_bound=r6(lb / pred.token_s), nominal=nominal, baselines=base)
    from numaplan.model.sizes import total_mem_nbytes

    return Plan(
        numaplan_version=__version__,
        model=PlanModelInfo(
            name=model_name, model_type=workload.model_type, quantization=workload.quantization,
            model_dtype=workload.model_dtype, num_hidden_layers=workload.num_hidden_layers,
            hidden_size=workload.hidden_size, num_key_value_heads=workload.num_key_value_heads,
            weight_bytes=total_mem_nbytes(workload), index_source=workload.source,
            fingerprint=workload.fingerprint),
        topology=PlanTopology(source=topo.source, fingerprint=topo.fingerprint(),
                              cpu_model=topo.cpu_model, distances=topo.distances,
                              distances_node_ids=topo.node_ids),
        cost_model=PlanCostModel(method=cost.method, fingerprint=cost.fingerprint(),
                                 nominal=nominal,
                                 params={k: (r6(v) if isinstance(v, float) else v)
                                         for k, v in sorted(cost.params.items())}),
        request=PlanRequest(
            tensor_parallel_shards=p.num_workers, numa_nodes=options.numa_nodes,
            numa_inter_node_penalty=options.numa_inter_node_penalty,
            numa_prefer_local_memory=options.numa_prefer_local_memory,
            node_affinity=dict(sorted(options.node_affinity.items())),
            batch_size=options.batch_size, context_tokens=p.context_tokens,
            mem_headroom=options.mem_headroom, solver=options.solver,
            oversubscribe=options.oversubscribe, max_total_seq_len=options.max_total_seq_len,
            plan_against_free=options.plan_against_free, mode=options.mode),
        solver=PlanSolver(name=s.solver, status=s.status,
                          gap=None if s.gap is None else r6(s.gap),
                          objective_s=None if s.objective_s is None else r6(s.objective_s)),
        workers=tuple(workers), nodes=nodes, kv_cache=kv, collectives=collectives,
        prediction=prediction,
        tensors=tensors,
    )


def _log_worker(p: PlacementProblem, s: Solution, pred: Prediction, w: int, n: int,
                cpus: tuple[int, ...], affinity: Mapping[int, int]) -> None:
    """DEBUG: where a worker goes and why."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    k = s.workers_per_node[n]
    bw = p.bw(n, p.home_of[n]) or 0.0
    why = ("node_affinity pins it there" if w in affinity else
           f"the {s.solver} solution ({s.status}) puts {k} of {p.num_workers} workers on node "
           f"{n}, whose CPUs read their memory node at {bw / 1e9:.1f} GB/s; node read time "
           f"{1e3 * pred.per_node_read_s.get(n, 0.0):.3f} ms per token (compute "
           f"{1e3 * pred.per_node_compute_s.get(n, 0.0):.3f} ms)")
    mem = p.home_of[n]
    where = "its own node" if mem == n else f"node {mem} (node {n} has no usable memory)"
    log.debug("worker %d -> node %d, CPUs %s (%d threads), memory bound to %s, because %s",
              w, n, format_cpulist(cpus), len(cpus), where, why)
    for j, b in sorted(s.split_homes.get(n, {}).items()):
        if j != mem:
            log.debug("  worker %d keeps %d bytes of its shards on node %d, because node %d "
                      "lacks the room or node %d is faster for it (%.1f GB/s)", w, b, j, mem, j,
                      (p.bw(n, j) or 0) / 1e9)


def _assign(p: PlacementProblem, s: Solution, affinity: Mapping[int, int]
            ) -> list[tuple[int, int, tuple[int, ...]]]:
    counts = dict(s.workers_per_node)
    slots: dict[int, list[int]] = {n: [] for n in sorted(counts)}
    for w, n in sorted(affinity.items()):
        slots[n].append(w)
    free_ids = [w for w in range(p.num_workers) if w not in affinity]
    for n in sorted(counts):
        while len(slots[n]) < counts[n]:
            slots[n].append(free_ids.pop(0))
    out = []
    for n, ids in slots.items():
        cores = p.node(n).cores
        if len(ids) > len(cores):
            # Oversubscribed (explicitly allowed): workers share cores round-robin.
            for x, w in enumerate(sorted(ids)):
                out.append((w, n, (cores[x % len(cores)][0],)))
            continue
        per, extra = divmod(len(cores), len(ids))
        start = 0
        for x, w in enumerate(sorted(ids)):
            take = per + (1 if x < extra else 0)
            out.append((w, n, tuple(core[0] for core in cores[start:start + take])))
            start += take
    return sorted(out)


def _tensor_homes(workload: Workload, p: PlacementProblem, s: Solution) -> tuple[PlanTensor, ...]:
    W = p.num_workers
    active = sorted(n for n, k in s.workers_per_node.items() if k > 0)
    # Split pieces: fill each node's homes in its preference order, walking tensors in layer
    # order so a spill is a contiguous run of late layers (a few mbind ranges).
    split = sorted((t for t in workload.tensors if t.is_split),
                   key=lambda t: (t.layer is None, t.layer or 0, t.name))
    homes_of: dict[str, dict[str, tuple[TensorHome, ...]]] = {t.name: {} for t in split}
    for i in active:
        quota = dict(s.split_homes[i])
        order = sorted(quota, key=lambda j: (j != p.home_of[i], -(p.bw(i, j) or 0), j))
        for t in split:
            need = t.shard_mem_nbytes(W)
            segs = []
            while need > 0:
                # Byte-exact against the solution's quotas (the runtime rounds the range it
                # binds to pages; a boundary page lands on one of the two homes).
                j = next((j for j in order if quota[j] > 0), order[-1])
                take = need if j == order[-1] and quota[j] < need else min(need, quota[j])
                segs.append(TensorHome(node_id=j, nbytes=take))
                quota[j] -= take
                need -= take
            homes_of[t.name][str(i)] = tuple(segs)
    rep_home: dict[str, dict[int, int]] = {}
    for g in p.replicas:
        for name in g.tensor_names:
            rep_home[name] = {i: max(s.replica_homes.get(g.name, {}).get(i)
                                     or {p.home_of[i]: 1.0},
                                     key=lambda j: s.replica_homes.get(g.name, {}).get(i, {})
                                     .get(j, 1.0))
                              for i in active}
    out = []
    for t in workload.tensors:
        piece = t.shard_mem_nbytes(W)
        if t.is_split:
            h = homes_of[t.name]
            local = all(len(v) == 1 and v[0].node_id == p.home_of[int(i)] for i, v in h.items())
            homes = "local" if local else {i: h[i] for i in sorted(h, key=int)}
        else:
            rh = rep_home.get(t.name, {})
            local = all(j == p.home_of[i] for i, j in rh.items())
            homes = "local" if local else {str(i): (TensorHome(node_id=j, nbytes=piece),)
                                          for i, j in sorted(rh.items())}
        rule = t.shard_rule
        out.append(PlanTensor(
            name=t.name, role=str(t.role), layer=t.layer,
            split_dim=rule.dim if rule.is_split else None,
            split_segments=tuple(rule.segments) if rule.is_split else None,
            replicated=not t.is_split, piece_nbytes=piece, homes=homes))
    return tuple(out)


def write_plan(plan: Plan, out_dir: str | Path) -> Path:
    """Write ``OUT/numa-plan.json`` atomically and return its path."""
    from numaplan.plan.io import PLAN_FILE, write_plan_file

    return write_plan_file(plan, Path(out_dir) / PLAN_FILE)


def solution_from_plan(plan: Plan, problem: PlacementProblem) -> Solution:
    """The aggregate placement a plan file describes (to re-price it on a machine).

    Raises
    ------
    InfeasiblePlanError
        When the plan uses nodes the problem does not have.
    """
    counts: dict[int, int] = {}
    for w in plan.workers:
        if w.node_id not in problem.cpu_node_ids:
            raise InfeasiblePlanError(f"plan puts worker {w.worker_id} on node {w.node_id}, "
                                      f"which has no usable CPUs here")
        counts[w.node_id] = counts.get(w.node_id, 0) + 1
    split: dict[int, dict[int, int]] = {i: {} for i in counts}
    reps: dict[str, dict[int, dict[int, float]]] = {}
    group_of = {name: g.name for g in problem.replicas for name in g.tensor_names}
    for t in plan.tensors:
        for i in counts:
            if t.homes == "local":
                segs = ((problem.home_of[i], t.piece_nbytes),)
            else:
                segs = tuple((h.node_id, h.nbytes) for h in t.homes.get(str(i), ()))
            if t.replicated:
                g = group_of.get(t.name)
                if g is not None and segs:
                    reps.setdefault(g, {})[i] = {segs[0][0]: 1.0}
                continue
            for j, b in segs:
                if j not in problem.mem_node_ids:
                    raise InfeasiblePlanError(f"plan homes {t.name} on node {j}, which has no "
                                              f"usable memory here")
                split[i][j] = split[i].get(j, 0) + b
    return Solution(workers_per_node=counts, split_homes=split, replica_homes=reps,
                    solver=plan.solver.name, status="fixed")
