"""The plan file: one versioned, deterministic JSON document a person reviews in CI.

Same inputs give a byte-identical file: no timestamps, no solve times (those go to the report),
floats rounded to 6 significant digits, dictionaries in sorted order, lists in id order. The
committed JSON Schema (``numaplan/schema/plan.v2.json``) is generated from these models and a test
keeps the two equal. A change that removes or renames a field bumps ``schema_version`` and adds a
migration in :mod:`numaplan.plan.io`.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import Field, model_validator

from numaplan._base import Frozen

#: 2: the prediction is a roofline (per-node read, compute and binding ceiling; the compute
#: term's source and the collective alpha's), and the plan states the KV cache every worker
#: reserves and the basis of each node's memory capacity. Version 1 plans are refused by
#: :func:`numaplan.plan.io.plan_from_dict` (see :data:`SCHEMA_CHANGES`).
SCHEMA_VERSION = 2
#: What each version added, for the message that refuses an older plan.
SCHEMA_CHANGES = {2: "a roofline prediction (read and compute per node), the KV-cache "
                     "capacity every worker reserves and the basis of each node's memory "
                     "capacity"}

_SCALAR_LIST = re.compile(r"\[\s*((?:-?[\d.eE+-]+|null|true|false|\"[^\"\n]*\")"
                          r"(?:,\s*(?:-?[\d.eE+-]+|null|true|false|\"[^\"\n]*\"))*)\s*\]")


def r6(x: float) -> float:
    """Round to 6 significant digits (stable across platforms, readable in diffs)."""
    return float(f"{x:.6g}")


class PlanModelInfo(Frozen):
    """The model the plan is for."""

    name: str
    model_type: str
    quantization: str
    model_dtype: str
    num_hidden_layers: int
    hidden_size: int
    num_key_value_heads: int
    weight_bytes: int
    index_source: str
    fingerprint: str


class PlanNode(Frozen):
    """A node as the plan saw it, and what the plan puts on it."""

    node_id: int
    socket_id: int
    cpus: str
    mem_total_bytes: int | None
    mem_capacity_bytes: int | None
    mem_capacity_basis: str
    worker_ids: tuple[int, ...]
    bytes_homed: int
    predicted_read_s: float | None
    predicted_compute_s: float | None
    bound: Literal["read", "compute"] | None


class PlanTopology(Frozen):
    """The machine, summarised."""

    source: str
    fingerprint: str
    cpu_model: str | None
    distances: tuple[tuple[int, ...], ...]
    distances_node_ids: tuple[int, ...]


class PlanCostModel(Frozen):
    """Which cost model priced the plan."""

    method: str
    fingerprint: str
    nominal: bool
    params: dict[str, str | float | int | bool]


class PlanRequest(Frozen):
    """The knobs the plan was made with (MLC proposal names)."""

    tensor_parallel_shards: int
    numa_tensor_parallel: bool = True
    numa_nodes: tuple[int, ...] | None = None
    numa_inter_node_penalty: float
    numa_prefer_local_memory: bool = True
    node_affinity: dict[int, int] = Field(default_factory=dict)
    batch_size: int = 1
    context_tokens: int
    mem_headroom: float
    solver: str
    oversubscribe: bool = False
    max_total_seq_len: int | None = None
    plan_against_free: bool = False
    mode: Literal["local", "interactive", "server"] | None = None


class PlanKVCache(Frozen):
    """The KV cache every worker reserves, on its own memory node (MLC's
    ``max_total_sequence_length``: tokens summed over the sequences a worker holds).

    ``limited_by`` says what set the capacity: the model's ``context window`` (it fits),
    ``memory`` (less fits after the weights: the rest of the window is given up), or the
    ``request`` (``--max-total-seq-len``).
    """

    max_total_seq_len: int
    context_window_size: int
    page_tokens: int
    bytes_per_token: int
    bytes_per_worker: int
    limited_by: Literal["context window", "memory", "request"]


class PlanSolver(Frozen):
    """Who found the placement and how good it is known to be."""

    name: str
    status: str
    gap: float | None
    objective_s: float | None


class PlanWorker(Frozen):
    """One tensor-parallel worker: where it runs and where its memory is bound."""

    worker_id: int
    node_id: int
    cpus: str
    num_threads: int
    mem_node_id: int
    mem_policy: Literal["bind", "preferred"]


class TensorHome(Frozen):
    """``nbytes`` of a piece live on ``node_id``."""

    node_id: int
    nbytes: int


class PlanTensor(Frozen):
    """One tensor: its role, how it is split, and where each worker's piece lives.

    ``homes`` is ``"local"`` when every worker keeps its piece on its own ``mem_node_id``;
    otherwise it maps each reader node (as a string, JSON keys are strings) to the homes of that
    node's workers' pieces (split tensors) or of the copy they share (replicated tensors).
    """

    name: str
    role: str
    layer: int | None
    split_dim: int | None
    split_segments: tuple[int, ...] | None
    replicated: bool
    piece_nbytes: int
    homes: Literal["local"] | dict[str, tuple[TensorHome, ...]]


class CollectiveChoice(Frozen):
    """The algorithm the runtime uses for one message size."""

    phase: Literal["decode", "prefill"]
    message_bytes: int
    algorithm: str
    predicted_s: float


class PlanCollectives(Frozen):
    """Collective groups and algorithms."""

    kind: Literal["none", "numaplan-shm"]
    intra_node_groups: tuple[tuple[int, ...], ...]
    inter_node_leaders: tuple[int, ...]
    allreduces_per_token: int
    broadcasts_per_token: int
    choices: tuple[CollectiveChoice, ...]
    segment_bytes: int


class BaselinePrediction(Frozen):
    """The same prediction for an obvious alternative."""

    tokens_per_s: float
    token_s: float
    fits: bool
    workers_per_node: dict[int, int]
    cross_node_read_bytes_per_token: int


class PlanPrediction(Frozen):
    """Predicted decode speed (a prediction: ``nominal`` says whether the cost figures were
    measured or assumed).

    ``token_s = max(read_s, compute_s) + collective_s`` (the roofline of
    :mod:`numaplan.plan.predict`). ``compute_source`` names the kernel figures of the compute
    term; ``None`` means the cost model had none for this quantization on every CPU node, so
    ``compute_s`` is 0 and the prediction counts memory reads and collectives only.
    ``collective_alpha_source`` says whether the per-call collective cost was measured.
    """

    batch_size: int
    token_s: float
    tokens_per_s: float
    read_s: float
    compute_s: float
    collective_s: float
    compute_source: str | None
    collective_alpha_s: float
    collective_alpha_source: Literal["measured", "nominal", "request"]
    per_node_read_s: dict[int, float]
    per_node_compute_s: dict[int, float]
    bytes_read_per_token: int
    cross_node_read_bytes_per_token: int
    lower_bound_token_s: float
    lower_bound_tokens_per_s: float
    fraction_of_bound: float
    nominal: bool
    baselines: dict[str, BaselinePrediction]


class Plan(Frozen):
    """A placement plan (schema version 2)."""

    schema_version: Literal[2] = SCHEMA_VERSION
    numaplan_version: str
    model: PlanModelInfo
    topology: PlanTopology
    cost_model: PlanCostModel
    request: PlanRequest
    solver: PlanSolver
    workers: tuple[PlanWorker, ...]
    nodes: tuple[PlanNode, ...]
    kv_cache: PlanKVCache
    collectives: PlanCollectives
    prediction: PlanPrediction
    tensors: tuple[PlanTensor, ...]

    @model_validator(mode="after")
    def _workers_and_groups(self) -> Plan:
        # What the runtime, the collective and the tables index by: worker w is workers[w], and
        # every worker is in exactly one non-empty intra-node group.
        ids = [w.worker_id for w in self.workers]
        if ids != list(range(len(ids))):
            raise ValueError(f"workers must be numbered 0..{len(ids) - 1} in order, got {ids}")
        grouped = [w for g in self.collectives.intra_node_groups for w in g]
        if any(not g for g in self.collectives.intra_node_groups) or sorted(grouped) != ids:
            raise ValueError("collectives.intra_node_groups must split the workers into "
                             "non-empty groups, each worker in exactly one")
        if not set(self.collectives.inter_node_leaders) <= set(ids):
            raise ValueError("collectives.inter_node_leaders names a worker that does not exist")
        return self

    def to_json(self) -> str:
        """The canonical file text (see :func:`plan_text`)."""
        return plan_text(self)

    def digest(self) -> str:
        """sha256 of the canonical text: what the compiled library embeds."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def worker(self, worker_id: int) -> PlanWorker:
        """The worker with that id."""
        return self.workers[worker_id]

    def tensor_homes(self, tensor: PlanTensor, worker_id: int) -> tuple[TensorHome, ...]:
        """Where ``worker_id``'s piece (or the copy it reads) of ``tensor`` lives."""
        w = self.workers[worker_id]
        if tensor.homes == "local":
            return (TensorHome(node_id=w.mem_node_id, nbytes=tensor.piece_nbytes),)
        return tensor.homes[str(w.node_id)]


def plan_text(plan: Plan) -> str:
    """The canonical text of a plan: field order, two-space indent, lists of scalars on one line.

    Part of the schema: the digest a compiled library embeds is taken over this text.

    Parameters
    ----------
    plan
        The plan.

    Returns
    -------
    str
        The file's text, with a trailing newline.
    """
    text = json.dumps(plan.model_dump(mode="json"), indent=2, ensure_ascii=False)
    text = _SCALAR_LIST.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    return text + "\n"
