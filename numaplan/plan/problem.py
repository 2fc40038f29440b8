"""The placement problem: plain data built from a workload, a topology and a cost model.

Nothing here solves anything. :func:`build_problem` aggregates the model the way the solvers
need it (docs/background.md 1.2: aggregate before solving):

- every worker holds the same split bytes (MLC's tensor parallelism splits evenly), so workers are
  interchangeable and the solvers decide *how many* run on each node;
- replicated tensors form two groups: ``stream`` (norms, lm_head, or the tied embedding: read in
  full by every worker at every token) and ``sparse`` (an untied embedding: only ``batch`` rows
  are read per token, but a full copy must live somewhere);
- the KV cache of a worker lives at the worker's memory home and is read every token;
- when the cost model measured the decode kernels (``CostModel.compute``), every CPU node also
  has a compute ceiling: the weight bytes per second all its cores' products consume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field, PrivateAttr

from numaplan._base import Frozen
from numaplan.cost import CostModel
from numaplan.errors import CostModelError, InfeasiblePlanError, UsageError
from numaplan.model import Role, Workload, validate_tp
from numaplan.model.sizes import kv_cache_bytes_per_token, kv_window
from numaplan.topology import Node, Topology

#: The granularity at which a memory home is bound (mbind works on pages): a planned piece
#: smaller than this cannot live on a node of its own.
PAGE = 4096

#: Software cost of one collective call (enter, publish, poll, leave), nominal until the
#: runtime's measured figure replaces it (``numaplan bench``); DeepSpeed/SGLang-class shared
#: memory all-reduces sit at 3-20 us for decode sizes (docs/background.md 3.3).
DEFAULT_COLLECTIVE_ALPHA_S = 5e-6
#: Share of a node's free memory left to the OS, page cache and fragmentation.
DEFAULT_MEM_HEADROOM = 0.10
#: Activation scratch per worker beyond the KV cache (logits, intermediate buffers).
ACTIVATION_RESERVE_BYTES = 64 << 20
#: The smallest KV cache a plan shrinks to before refusing (with the prefill chunk, if
#: larger): a context shorter than this is no longer a useful chat model.
MIN_KV_TOKENS = 4096


class NodeResources(Frozen):
    """What one node offers the plan; ``capacity_basis`` says which figure its capacity is."""

    node_id: int
    socket_id: int
    cores: tuple[tuple[int, ...], ...]
    mem_capacity_bytes: int | None
    mem_total_bytes: int | None
    capacity_basis: str = "total"

    @property
    def cpus(self) -> tuple[int, ...]:
        """Usable logical CPUs (all SMT siblings of the usable cores)."""
        return tuple(sorted(c for core in self.cores for c in core))


class ReplicaGroup(Frozen):
    """Replicated tensors that share one placement decision."""

    name: Literal["stream", "sparse"]
    mem_bytes: int
    read_bytes_per_token: int
    tensor_names: tuple[str, ...]


class PlacementProblem(Frozen):
    """Everything a solver needs, nothing it does not.

    Matrices are indexed like :attr:`nodes`. ``bw_gbps[i][j]`` is the read bandwidth of node i's
    CPUs from node j's memory (``None``: impossible). ``home_of`` maps every CPU node to the
    memory node its workers bind to when memory is kept local (itself, or the nearest memory node
    for a memoryless node).
    """

    num_workers: int
    nodes: tuple[NodeResources, ...]
    cpu_node_ids: tuple[int, ...]
    mem_node_ids: tuple[int, ...]
    bw_gbps: tuple[tuple[float | None, ...], ...]
    lat_ns: tuple[tuple[float | None, ...], ...]
    home_of: dict[int, int]
    split_bytes_per_worker: int
    replicas: tuple[ReplicaGroup, ...]
    kv_read_bytes_per_worker: int
    kv_bytes_per_token: int
    kv_capacity_tokens: int
    reserve_bytes_per_worker: int
    prefill_tokens: int
    allreduce_bytes: int
    prefill_allreduce_bytes: int
    allreduces_per_token: int
    broadcasts_per_token: int
    collective_alpha_s: float = DEFAULT_COLLECTIVE_ALPHA_S
    prefer_local_memory: bool = True
    min_workers: dict[int, int] = Field(default_factory=dict)
    max_workers: dict[int, int] = Field(default_factory=dict)
    batch_size: int = 1
    context_tokens: int = 0
    compute_bytes_per_s: dict[int, float] = Field(default_factory=dict)
    compute_bytes_per_worker: int = 0
    compute_fixed_s: dict[int, float] = Field(default_factory=dict)
    compute_source: str | None = None
    _index: dict[int, int] = PrivateAttr(default_factory=dict)
    _dram: dict[int, float] = PrivateAttr(default_factory=dict)

    def model_post_init(self, __context: object) -> None:
        # Lookups run millions of times on large machines: index once.
        self._index = {n.node_id: i for i, n in enumerate(self.nodes)}

    def idx(self, node_id: int) -> int:
        """Index of a node id in :attr:`nodes` and the matrices."""
        return self._index[node_id]

    def node(self, node_id: int) -> NodeResources:
        """Resources of a node."""
        return self.nodes[self.idx(node_id)]

    def bw(self, reader: int, mem: int) -> float | None:
        """Read bandwidth in bytes/s (``None`` when impossible)."""
        v = self.bw_gbps[self.idx(reader)][self.idx(mem)]
        return None if v is None else v * 1e9

    def lat_s(self, reader: int, mem: int) -> float:
        """Latency in seconds (0 when unknown)."""
        v = self.lat_ns[self.idx(reader)][self.idx(mem)]
        return 0.0 if v is None else v * 1e-9

    def dram_bw(self, mem: int) -> float:
        """What a memory node's DRAM can serve in total, bytes/s: its local bandwidth, or for a
        CPU-less node the best any reader gets from it."""
        if mem in self._dram:
            return self._dram[mem]
        vals = [self.bw(r, mem) for r in self.cpu_node_ids]
        local = self.bw(mem, mem) if mem in self.cpu_node_ids else None
        best = local if local is not None else max((v for v in vals if v), default=None)
        if best is None:
            raise CostModelError(f"no bandwidth figure for memory node {mem}")
        self._dram[mem] = best
        return best

    def compute_s_per_worker(self, node_id: int) -> float:
        """Seconds of node ``node_id``'s whole compute one worker's products take per token
        (0 when the node has no compute figure: no compute term)."""
        rate = self.compute_bytes_per_s.get(node_id)
        return self.compute_bytes_per_worker / rate if rate else 0.0

    def compute_time(self, node_id: int, k: int) -> float:
        """Seconds node ``node_id``'s ``k`` workers' products take per token: their bytes on
        the node's cores plus one worker's fixed call costs (each worker runs its own products
        at the same time as the others); 0 for no worker or no compute term."""
        if k <= 0 or node_id not in self.compute_bytes_per_s:
            return 0.0
        return k * self.compute_s_per_worker(node_id) + self.compute_fixed_s.get(node_id, 0.0)

    def node_speed(self, node_id: int) -> float:
        """How fast node ``node_id`` serves workers with its memory local: its local bandwidth
        without a compute term (the same order and proportions as tokens per second), else
        workers' tokens per second under the roofline (the slower of its reads and its
        products). Greedy counts, bisection weights and the single-node baseline follow it."""
        bw = self.bw(node_id, self.home_of[node_id]) or 0.0
        if not self.compute_bytes_per_s:
            return bw
        read = self.split_bytes_per_worker + self.replica_stream_bytes + \
            self.kv_read_bytes_per_worker
        t = max(read / bw if bw else float("inf"), self.compute_time(node_id, 1))
        return 1.0 / t if t > 0 else 0.0

    @property
    def replica_stream_bytes(self) -> int:
        """Bytes of replicated tensors every worker reads per token."""
        return sum(g.read_bytes_per_token for g in self.replicas)


def _stream_or_sparse(workload: Workload, role: Role) -> Literal["stream", "sparse"] | None:
    if role is Role.EMBEDDING:
        # A tied embedding doubles as lm_head: read in full at every token.
        return "stream" if workload.tie_word_embeddings else "sparse"
    if role in (Role.NORM, Role.LM_HEAD, Role.BIAS, Role.OTHER):
        return "stream"
    return None


def build_problem(
    workload: Workload,
    topology: Topology,
    cost: CostModel,
    *,
    num_workers: int,
    batch_size: int = 1,
    context_tokens: int | None = None,
    prefer_local_memory: bool = True,
    node_affinity: Mapping[int, int] | None = None,
    mem_headroom: float = DEFAULT_MEM_HEADROOM,
    collective_alpha_s: float | None = None,
    prefill_tokens: int | None = None,
    oversubscribe: bool = False,
    kv_capacity_tokens: int | None = None,
    plan_against_free: bool = False,
) -> PlacementProblem:
    """Aggregate a workload on a machine into a :class:`PlacementProblem`.

    Parameters
    ----------
    workload, topology, cost
        The model, the machine (already restricted to ``numa_nodes``), the cost model.
    num_workers
        Tensor-parallel degree W (validated against the model).
    batch_size
        Sequences decoded together.
    context_tokens
        Context length whose KV cache is read per token (default: half the context window,
        a typical mid-conversation length).
    prefer_local_memory
        Bind every worker's memory to its own node (the nearest memory node for a memoryless
        node); off lets the solver home shards anywhere.
    node_affinity
        ``{worker_id: node_id}`` that must be honoured.
    mem_headroom
        Share of each node's memory left unplanned (see :func:`node_capacity`).
    collective_alpha_s
        Software cost of one collective call; ``None``: the cost model's measured figure, else
        :data:`DEFAULT_COLLECTIVE_ALPHA_S`.
    prefill_tokens
        Tokens per prefill chunk, for the prefill all-reduce size (default: 2048 or the context
        window if smaller).
    oversubscribe
        Allow more workers on a node than it has physical cores (they share cores): for
        correctness runs on small machines, never for speed.
    kv_capacity_tokens
        Tokens of KV cache each worker reserves, summed over its sequences (MLC's
        ``max_total_sequence_length``; default: the context window).
    plan_against_free
        Also cap each node at the free memory its source reported (see :func:`node_capacity`).

    Raises
    ------
    InfeasiblePlanError
        W invalid for the model, more workers than usable cores, affinity to an unusable node.
    CostModelError
        The cost model lacks a figure the problem needs.
    """
    validate_tp(workload, num_workers)
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    if not 0 <= mem_headroom < 1:
        raise UsageError(f"memory headroom must be in [0, 1), got {mem_headroom}")
    cpu_nodes = topology.cpu_node_ids()
    mem_nodes = topology.memory_node_ids()
    if not cpu_nodes:
        raise InfeasiblePlanError("no node with usable CPUs (check numa_nodes and the cpuset)")
    if not mem_nodes:
        raise InfeasiblePlanError("no node with usable memory (check numa_nodes and the cpuset)")
    cost.check_covers(topology)
    ids = tuple(n for n in topology.node_ids if n in cpu_nodes or n in mem_nodes)
    nodes = []
    for nid in ids:
        n = topology.node(nid)
        cap, basis = node_capacity(n, usable=nid in mem_nodes, mem_headroom=mem_headroom,
                                   plan_against_free=plan_against_free)
        nodes.append(NodeResources(
            node_id=nid, socket_id=topology.socket_of(nid),
            cores=topology.physical_cores(nid) if nid in cpu_nodes else (),
            mem_capacity_bytes=cap, mem_total_bytes=n.mem_total_bytes, capacity_basis=basis))
    bw = tuple(tuple(cost.bw(r, m) if r in cpu_nodes and m in mem_nodes else None for m in ids)
               for r in ids)
    lat = tuple(tuple(cost.lat(r, m) if r in cpu_nodes and m in mem_nodes else None for m in ids)
                for r in ids)
    home_of = {}
    for r in cpu_nodes:
        candidates = [m for m in mem_nodes if cost.bw(r, m) is not None]
        if r in candidates:
            home_of[r] = r
        else:
            # Memoryless CPU node: its workers' memory goes to the fastest memory node for them;
            # among equally fast ones (penalty 0 makes all equal) the nearest by latency.
            home_of[r] = max(candidates, key=lambda m: (cost.bw(r, m), -(cost.lat(r, m) or 0),
                                                        -m))
    W = num_workers
    split = sum(t.shard_mem_nbytes(W) for t in workload.tensors if t.is_split)
    groups: dict[str, list] = {"stream": [], "sparse": []}
    for t in workload.tensors:
        if t.is_split:
            continue
        g = _stream_or_sparse(workload, t.role)
        groups[g or "stream"].append(t)
    replicas = []
    for name, ts in groups.items():
        if not ts:
            continue
        mem = sum(t.mem_nbytes for t in ts)
        if name == "stream":
            read = mem
        else:
            # Sparse lookup: batch rows of each embedding table.
            read = sum(min(t.mem_nbytes, batch_size * t.mem_nbytes // max(t.shape[0], 1))
                       for t in ts)
        replicas.append(ReplicaGroup(name=name, mem_bytes=mem, read_bytes_per_token=read,
                                     tensor_names=tuple(t.name for t in ts)))
    # A sliding-window model with no known window reports -1: plan for a 4096-token context.
    window = kv_window(workload)
    ctx = window // 2 if context_tokens is None else context_tokens
    kv_tok = kv_cache_bytes_per_token(workload, num_workers=W)
    kv_read = batch_size * ctx * kv_tok
    capacity = window if kv_capacity_tokens is None else kv_capacity_tokens
    if capacity < 0:
        raise UsageError(f"KV cache capacity must be >= 0 tokens, got {capacity}")
    reserve = capacity * kv_tok + ACTIVATION_RESERVE_BYTES
    itemsize = _itemsize(workload.model_dtype)
    chunk = prefill_tokens or min(2048, window)
    max_workers = {r: W if oversubscribe else len(topology.physical_cores(r))
                   for r in cpu_nodes}
    min_workers: dict[int, int] = {}
    for w, nid in (node_affinity or {}).items():
        if not 0 <= w < W:
            raise InfeasiblePlanError(f"node_affinity names worker {w}, but workers are "
                                      f"0..{W - 1}")
        if nid not in cpu_nodes:
            raise InfeasiblePlanError(f"node_affinity puts worker {w} on node {nid}, which has "
                                      f"no usable CPUs (usable: {list(cpu_nodes)})")
        min_workers[nid] = min_workers.get(nid, 0) + 1
    for nid, k in min_workers.items():
        if k > max_workers[nid]:
            raise InfeasiblePlanError(f"node_affinity puts {k} workers on node {nid}, which has "
                                      f"{max_workers[nid]} usable cores")
    if sum(max_workers.values()) < W:
        raise InfeasiblePlanError(f"{W} workers need {W} physical cores; the usable nodes have "
                                  f"{sum(max_workers.values())} (--oversubscribe lets workers "
                                  f"share cores, for correctness runs only)")
    if collective_alpha_s is None:
        collective_alpha_s = (cost.collective.alpha_s if cost.collective is not None
                              else DEFAULT_COLLECTIVE_ALPHA_S)
    compute, compute_source = _compute_ceilings(workload, cost, nodes)
    products = products_per_token(workload)
    fixed = {n: products * cost.call_cost(n, workload.quantization) for n in compute}
    stream_reads = sum(g.read_bytes_per_token for g in replicas)
    return PlacementProblem(
        num_workers=W, nodes=tuple(nodes), cpu_node_ids=cpu_nodes, mem_node_ids=mem_nodes,
        bw_gbps=bw, lat_ns=lat, home_of=home_of, split_bytes_per_worker=split,
        replicas=tuple(replicas), kv_read_bytes_per_worker=kv_read,
        kv_bytes_per_token=kv_tok, kv_capacity_tokens=capacity,
        reserve_bytes_per_worker=reserve, prefill_tokens=chunk,
        allreduce_bytes=batch_size * workload.hidden_size * itemsize,
        prefill_allreduce_bytes=chunk * workload.hidden_size * itemsize,
        allreduces_per_token=2 * workload.num_hidden_layers if W > 1 else 0,
        broadcasts_per_token=1 if W > 1 else 0,
        collective_alpha_s=collective_alpha_s, prefer_local_memory=prefer_local_memory,
        min_workers=min_workers, max_workers=max_workers, batch_size=batch_size,
        context_tokens=ctx, compute_bytes_per_s=compute,
        compute_bytes_per_worker=split + stream_reads if compute else 0,
        compute_fixed_s={n: v for n, v in fixed.items() if v > 0},
        compute_source=compute_source,
    )


def node_capacity(node: Node, *, usable: bool, mem_headroom: float,
                  plan_against_free: bool = False) -> tuple[int | None, str]:
    """Bytes a plan may put on a node, and which figure bounds it.

    A node's memory less ``mem_headroom`` (left to the OS, the page cache and fragmentation);
    on the live machine the kernel's available figure when lower (MemAvailable, not MemFree:
    page cache is reclaimable). A dump's free figure is a snapshot of someone else's machine,
    so it bounds the plan only when asked (``plan_against_free``).

    Parameters
    ----------
    node
        The node as the topology source saw it.
    usable
        Whether the plan may put memory there (allowed and has memory).
    mem_headroom
        Share of the node's memory left unplanned.
    plan_against_free
        Cap at the reported free memory (less headroom) too.

    Returns
    -------
    tuple
        ``(capacity_bytes or None when the size is unknown, basis)``.
    """
    if not usable:
        return 0, "no usable memory"
    cap: int | None = None
    basis = "size unknown"
    if node.mem_total_bytes is not None:
        cap = int(node.mem_total_bytes * (1 - mem_headroom))
        basis = f"total less {mem_headroom:.0%} headroom"
    if node.mem_available_bytes is not None and (cap is None or node.mem_available_bytes < cap):
        cap, basis = node.mem_available_bytes, "MemAvailable (live, below total less headroom)"
    if plan_against_free and node.mem_free_bytes is not None:
        free = int(node.mem_free_bytes * (1 - mem_headroom))
        if cap is None or free < cap:
            cap, basis = free, f"reported free less {mem_headroom:.0%} headroom"
    return cap, basis


#: Roles whose weights a decode step multiplies by the activation, one kernel call each.
_PRODUCT_ROLES = frozenset({Role.ATTN_QKV, Role.ATTN_OUT, Role.MLP_IN, Role.MLP_OUT, Role.LM_HEAD})


def products_per_token(workload: Workload) -> int:
    """Weight products (kernel calls) one worker runs per decode token: every linear's weight,
    and the tied embedding as the output projection."""
    n = sum(1 for t in workload.tensors if t.role in _PRODUCT_ROLES and
            t.name.rsplit(".", 1)[-1] in ("weight", "q_weight"))
    return n + (1 if workload.tie_word_embeddings else 0)


def _compute_ceilings(workload: Workload, cost: CostModel, nodes: Sequence[NodeResources]
                      ) -> tuple[dict[int, float], str | None]:
    """Each CPU node's weight bytes per second (per-core figure x its physical cores), and where
    the figures came from; empty and ``None`` unless every CPU node has one for the model's
    quantization (a partial compute term would favour the unmeasured nodes)."""
    cpu = [n for n in nodes if n.cores]
    rates = {n.node_id: cost.compute_rate(n.node_id, workload.quantization) for n in cpu}
    if not cpu or any(r is None for r in rates.values()):
        return {}, None
    return ({n.node_id: rates[n.node_id] * len(n.cores) for n in cpu},  # type: ignore[operator]
            f"{cost.method}: {workload.quantization} decode kernels")


def _itemsize(dtype: str) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4}.get(dtype, 2)


def largest_remainder(total: int, weights: Sequence[float], caps: Sequence[int]) -> list[int]:
    """Split ``total`` integers proportionally to ``weights`` under per-item ``caps``.

    Examples
    --------
    >>> largest_remainder(5, [1, 1], [10, 10])
    [3, 2]
    >>> largest_remainder(4, [3, 1], [2, 10])
    [2, 2]
    """
    n = len(weights)
    out = [0] * n
    remaining = total
    active = [i for i in range(n) if caps[i] > 0 and weights[i] > 0]
    while remaining > 0 and active:
        wsum = sum(weights[i] for i in active)
        quota = {i: remaining * weights[i] / wsum for i in active}
        add = {i: min(math.floor(quota[i]), caps[i] - out[i]) for i in active}
        for i, a in add.items():
            out[i] += a
        remaining -= sum(add.values())
        if remaining > 0:
            order = sorted(active, key=lambda i: (-(quota[i] - math.floor(quota[i])), i))
            for i in order:
                if remaining == 0:
                    break
                if out[i] < caps[i]:
                    out[i] += 1
                    remaining -= 1
        active = [i for i in active if out[i] < caps[i]]
    if remaining:
        raise InfeasiblePlanError(f"cannot place {total} workers: capacity {sum(caps)}")
    return out
