"""What a user asks of a plan, turned into what the planner takes.

The command line (``numaplan compile``) and the engine (:class:`numaplan.engine.EngineConfig`)
accept the same settings, the knobs of the MLC LLM proposal plus where the cost model comes from.
:func:`resolve_settings` is the one place that applies the defaults that depend on the model and
the machine (the tensor-parallel degree, :func:`default_tp`) and loads the cost model the settings
name, or derives it from SLIT distances and ``numa_inter_node_penalty``.
"""

from __future__ import annotations

from typing import Literal

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
from numaplan.model import Workload, kv_cache_bytes_per_token, total_mem_nbytes, valid_tp_degrees
from numaplan.model.sizes import kv_window
from numaplan.plan.planner import DEFAULT_TIME_LIMIT_S, PlanOptions
from numaplan.plan.problem import DEFAULT_MEM_HEADROOM, node_capacity
from numaplan.topology import Topology

#: MLC's engine modes: what a deployment plans its batch and KV cache for.
Mode = Literal["local", "interactive", "server"]
#: Sequences the fixed modes plan for (MLC: interactive serves one, local a few).
MODE_BATCH = {"interactive": 1, "local": 4}
#: Server mode plans as many sequences as memory allows, up to this many (beyond it a CPU's
#: batch_decode stops gaining throughput and only adds latency).
SERVER_MAX_BATCH = 32
#: The share of the planned nodes' free memory, after the weights, that server mode gives to
#: the KV cache (the rest stays for activations, the OS and other tenants).
SERVER_KV_MEMORY_SHARE = 0.5


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
    mode
        MLC's engine mode; when set, it decides ``batch_size`` (:func:`mode_batch_size`) and
        the KV cache the plan reserves: one context window (interactive, local: the sequences
        share it, as in MLC), or one per sequence in server mode, shrunk to what fits.
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
    mode: Mode | None = None
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


def mode_batch_size(mode: Mode, workload: Workload, topology: Topology, *,
                    numa_nodes: tuple[int, ...] | None = None) -> int:
    """The sequences a mode plans for (the plan's ``batch_size``, the KV cache's sequences).

    Parameters
    ----------
    mode
        ``interactive``: 1; ``local``: 4 (:data:`MODE_BATCH`); ``server``: as many
        context-window-long sequences as :data:`SERVER_KV_MEMORY_SHARE` of the memory the plan
        may use (:func:`numaplan.plan.problem.node_capacity`) left after the weights holds,
        between 1 and :data:`SERVER_MAX_BATCH`.
    workload
        The model (weight bytes, KV bytes per token, context window).
    topology
        The machine (free memory per node).
    numa_nodes
        The nodes the plan may use (default: every memory node).

    Returns
    -------
    int
        The batch size.
    """
    if mode in MODE_BATCH:
        return MODE_BATCH[mode]
    nodes = set(numa_nodes or topology.memory_node_ids())
    # The same capacity the planner plans against (a dump's free figure is not it).
    free = sum(node_capacity(n, usable=True, mem_headroom=DEFAULT_MEM_HEADROOM)[0] or 0
               for n in topology.nodes if n.node_id in nodes)
    window = kv_window(workload)
    per_seq = window * kv_cache_bytes_per_token(workload)
    room = SERVER_KV_MEMORY_SHARE * (free - total_mem_nbytes(workload))
    return max(1, min(SERVER_MAX_BATCH, int(room // per_seq)))


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
    batch = (mode_batch_size(settings.mode, workload, topology, numa_nodes=settings.numa_nodes)
             if settings.mode else settings.batch_size)
    options = PlanOptions(
        tensor_parallel_shards=settings.tensor_parallel_shards or default_tp(workload, topology),
        numa_nodes=settings.numa_nodes,
        numa_inter_node_penalty=settings.numa_inter_node_penalty,
        numa_prefer_local_memory=settings.numa_prefer_local_memory,
        node_affinity=dict(settings.node_affinity),
        batch_size=batch,
        context_tokens=settings.context_tokens,
        solver=settings.solver, mip_backend=settings.mip_backend,
        time_limit_s=settings.time_limit_s, oversubscribe=settings.oversubscribe,
        max_total_seq_len=settings.max_total_seq_len,
        kv_windows=batch if settings.mode == "server" else settings.kv_windows,
        plan_against_free=settings.plan_against_free, mode=settings.mode)
    return options, cost
