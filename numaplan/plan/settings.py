"""What a user asks of a plan, turned into what the planner takes.

The command line (``numaplan compile``) and the engine (:class:`numaplan.engine.EngineConfig`)
accept the same settings, the knobs of the MLC LLM proposal plus where the cost model comes from.
:func:`resolve_settings` is the one place that applies the defaults that depend on the model and
the machine (the tensor-parallel degree, :func:`default_tp`) and loads the cost model the settings
name, or derives it from SLIT distances and ``numa_inter_node_penalty``.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from numaplan._base import Frozen
from numaplan.cost import (
    DEFAULT_PENALTY,
    CostModel,
    Penalty,
    cost_from_memory_spec,
    cost_from_slit,
    read_cost_json,
    read_mlc_files,
)
from numaplan.model import Workload, valid_tp_degrees
from numaplan.plan.planner import DEFAULT_TIME_LIMIT_S, PlanOptions
from numaplan.topology import Topology


class PlanSettings(Frozen):
    """A plan request as a user states it (MLC proposal names).

    Attributes
    ----------
    tensor_parallel_shards
        Workers W; ``None``: :func:`default_tp`.
    numa_nodes
        Nodes the plan may use; ``None``: all allowed.
    numa_inter_node_penalty
        The cost of crossing nodes when no measured cost model is given (0..1, see
        :mod:`numaplan.cost.slit`).
    numa_prefer_local_memory
        Bind every worker's memory to its own node.
    node_affinity
        ``{worker_id: node_id}`` the plan must honour.
    cost_model
        A cost model JSON (``numaplan probe -o``); checked to cover the machine.
    mlc_output
        Intel MLC output to use as the cost model instead.
    memory_spec
        Memory specifications to derive the cost model from instead
        (:mod:`numaplan.cost.memspec`: ``[NODES:]CHANNELSxMTS[@EFFICIENCY];...``).
    batch_size, context_tokens, solver, mip_backend, time_limit_s, oversubscribe
    max_total_seq_len, kv_windows, plan_against_free
        As in :class:`~numaplan.plan.planner.PlanOptions`.
    """

    tensor_parallel_shards: int | None = None
    numa_nodes: tuple[int, ...] | None = None
    numa_inter_node_penalty: Penalty = DEFAULT_PENALTY
    numa_prefer_local_memory: bool = True
    node_affinity: dict[int, int] = Field(default_factory=dict)
    cost_model: str | None = None
    mlc_output: str | None = None
    memory_spec: str | None = None
    batch_size: int = 1
    context_tokens: int | None = None
    solver: str = "auto"
    mip_backend: str = "auto"
    time_limit_s: float = DEFAULT_TIME_LIMIT_S
    oversubscribe: bool = False
    max_total_seq_len: int | None = Field(default=None, ge=1)
    kv_windows: int = Field(default=1, ge=1)
    plan_against_free: bool = False

    @model_validator(mode="after")
    def _one_cost_source(self) -> PlanSettings:
        if sum(bool(x) for x in (self.cost_model, self.mlc_output, self.memory_spec)) > 1:
            raise ValueError("give one of cost_model, mlc_output and memory_spec")
        return self


def default_tp(workload: Workload, topology: Topology) -> int:
    """The tensor-parallel degree when none is asked for.

    Parameters
    ----------
    workload
        The model.
    topology
        The machine.

    Returns
    -------
    int
        The config's ``tensor_parallel_shards`` if it is above 1, else the largest valid W not
        above the number of usable CPU nodes (1 when none is).
    """
    if workload.tensor_parallel_shards > 1:
        return workload.tensor_parallel_shards
    n = len(topology.cpu_node_ids())
    valid = [w for w in valid_tp_degrees(workload) if w <= n]
    return max(valid or [1])


def load_cost(settings: PlanSettings, topology: Topology) -> CostModel:
    """The cost model the settings name, checked against the machine.

    Parameters
    ----------
    settings
        Its ``cost_model`` or ``mlc_output`` file or its ``memory_spec``; none: SLIT distances
        and the penalty.
    topology
        The machine (not restricted to ``numa_nodes``: the planner restricts it).

    Raises
    ------
    CostModelError
        A cost file is malformed or lacks a figure the machine needs.
    """
    if settings.cost_model:
        cost = read_cost_json(settings.cost_model)
        cost.check_covers(topology, source=settings.cost_model)
        return cost
    if settings.mlc_output:
        return read_mlc_files(settings.mlc_output, None, topology)
    if settings.memory_spec:
        return cost_from_memory_spec(topology, settings.memory_spec,
                                     penalty=settings.numa_inter_node_penalty)
    return cost_from_slit(topology, penalty=settings.numa_inter_node_penalty)


def resolve_settings(settings: PlanSettings, workload: Workload, topology: Topology
                     ) -> tuple[PlanOptions, CostModel]:
    """The planner's options and cost model for a request.

    Parameters
    ----------
    settings
        What the user asked.
    workload
        The model (for the default W).
    topology
        The machine.

    Returns
    -------
    tuple
        ``(options, cost)``, ready for :func:`~numaplan.plan.planner.make_plan`.

    Raises
    ------
    CostModelError
        As :func:`load_cost`.
    """
    cost = load_cost(settings, topology)
    options = PlanOptions(
        tensor_parallel_shards=settings.tensor_parallel_shards or default_tp(workload, topology),
        numa_nodes=settings.numa_nodes,
        numa_inter_node_penalty=settings.numa_inter_node_penalty,
        numa_prefer_local_memory=settings.numa_prefer_local_memory,
        node_affinity=dict(settings.node_affinity),
        batch_size=settings.batch_size, context_tokens=settings.context_tokens,
        solver=settings.solver, mip_backend=settings.mip_backend,
        time_limit_s=settings.time_limit_s, oversubscribe=settings.oversubscribe,
        max_total_seq_len=settings.max_total_seq_len, kv_windows=settings.kv_windows,
        plan_against_free=settings.plan_against_free)
    return options, cost
