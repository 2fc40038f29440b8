"""The user-facing engine: the configuration surface of the MLC LLM NUMA proposal, on top of
numaplan's real planner, compiler and runtime.

Examples
--------
>>> from numaplan import Engine, EngineConfig            # doctest: +SKIP
>>> cfg = EngineConfig(model="out/demo/model", tensor_parallel_shards=2,
...                    numa_tensor_parallel=True, numa_inter_node_penalty=0.5)
>>> with Engine(cfg) as engine:
...     tokens = engine.generate([1, 2, 3], max_new_tokens=8)
...     engine.communicator.get_communication_stats()["inter_node_percentage"]
...     engine.allocator.get_allocation_stats()["local_percentage"]

Nothing here is estimated: statistics come from the running workers (page audits, collective
counters), placements from the plan the library carries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from numaplan._version import __version__
from numaplan.cost import DEFAULT_PENALTY, Penalty
from numaplan.errors import InfeasiblePlanError, ModelFormatError, NumaplanError, UsageError

if TYPE_CHECKING:
    from numaplan.plan.settings import PlanSettings

log = logging.getLogger(__name__)

CACHE_ENV = "NUMAPLAN_CACHE_DIR"


def default_cache_dir() -> Path:
    """Where compiled libraries are cached (``$NUMAPLAN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/numaplan/libs``, else ``~/.cache/numaplan/libs``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "numaplan" / "libs"


class NUMATensorParallelConfig(BaseModel):
    """The proposal's NUMA block; accepted wherever settings are (``EngineConfig.numa_config``).

    Attributes
    ----------
    enable_numa_tp
        Same as ``numa_tensor_parallel``.
    node_affinity
        ``{worker_id: node_id}`` the plan must honour.
    inter_node_bandwidth_penalty
        Same as ``numa_inter_node_penalty``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enable_numa_tp: bool = True
    node_affinity: dict[int, int] | None = None
    inter_node_bandwidth_penalty: Penalty = DEFAULT_PENALTY


class EngineConfig(BaseModel):
    """Engine settings (names from the MLC LLM proposal).

    Attributes
    ----------
    model
        MLC model directory (weights and ``mlc-chat-config.json``). May be left out while a
        configuration is only being stated (the proposal's tuning and benchmark examples); an
        engine needs it.
    model_lib
        A library built by ``numaplan compile``; ``None`` compiles one (cached by fingerprint,
        so a second start with the same inputs does not compile again).
    mode
        MLC's engine mode: the sequences the plan and the KV cache are sized for
        (:func:`run_capacity`): ``interactive`` one, ``local`` (default, as MLC's) four
        sharing one context window, ``server`` as many full context windows as memory
        allows (:func:`numaplan.plan.settings.mode_batch_size`).
    tensor_parallel_shards
        Workers W; default: the config's value, else the largest valid W not above the number
        of usable CPU nodes.
    numa_tensor_parallel
        Plan and enforce placement (pinned workers, node-bound memory); off is plain tensor
        parallelism with the OS deciding (the audit still reports where pages went).
    numa_nodes
        Nodes the plan may use.
    numa_inter_node_penalty
        Cost of crossing nodes when no measured matrix is given (see README).
    numa_prefer_local_memory
        Bind every worker's memory to its own node.
    numa_config
        A :class:`NUMATensorParallelConfig`; its fields override the flat ones.
    cost_model
        A cost model JSON from ``numaplan probe -o`` (default: SLIT + penalty).
    cache_dir
        Library cache (default :func:`default_cache_dir`).
    oversubscribe
        Let workers share cores (correctness runs on small machines).
    max_seq_len
        Tokens of KV cache over all sequences (default: what the plan reserved, the plan's
        ``kv_cache.max_total_seq_len``: as ``mode`` sizes it, or the largest that fits after
        the weights).
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    model_lib: str | None = None
    mode: Literal["local", "interactive", "server"] = "local"
    tensor_parallel_shards: int | None = None
    numa_tensor_parallel: bool = False
    numa_nodes: list[int] | None = None
    numa_inter_node_penalty: Penalty = DEFAULT_PENALTY
    numa_prefer_local_memory: bool = True
    numa_config: NUMATensorParallelConfig | None = None
    node_affinity: dict[int, int] = Field(default_factory=dict)
    cost_model: str | None = None
    cache_dir: str | None = None
    oversubscribe: bool = False
    max_seq_len: int | None = None

    @field_validator("tensor_parallel_shards")
    @classmethod
    def _w(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"tensor_parallel_shards must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _merge_numa_config(self) -> EngineConfig:
        c = self.numa_config
        if c is not None:
            self.numa_tensor_parallel = c.enable_numa_tp
            self.numa_inter_node_penalty = c.inter_node_bandwidth_penalty
            if c.node_affinity:
                self.node_affinity = dict(c.node_affinity)
        return self


class NodeView:
    """One node as the proposal's topology calls show it."""

    def __init__(self, node: Any, usable: tuple[int, ...]) -> None:
        self.node_id = node.node_id
        self.cpus = list(node.cpus)
        self.usable_cpus = list(usable)
        self.memory_mb = None if node.mem_total_bytes is None else node.mem_total_bytes >> 20
        self.free_memory_mb = None if node.mem_free_bytes is None else node.mem_free_bytes >> 20

    def __repr__(self) -> str:
        return f"NodeView(node_id={self.node_id}, cpus={len(self.cpus)}, " \
               f"memory_mb={self.memory_mb})"


class NumaTopologyView:
    """What :func:`get_numa_topology` returns: ``get_node_count()``, ``nodes[id].cpus``,
    ``nodes[id].memory_mb``; ``topology`` is the full :class:`numaplan.topology.Topology`."""

    def __init__(self, topology: Any) -> None:
        self.topology = topology
        self.nodes = {n.node_id: NodeView(n, topology.usable_cpus(n.node_id))
                      for n in topology.nodes}
        self.distances = {a: {b: topology.distance(a, b) for b in topology.node_ids}
                          for a in topology.node_ids}

    def get_node_count(self) -> int:
        """Number of NUMA nodes."""
        return len(self.nodes)


def get_numa_topology(*, sysfs_root: str | None = None) -> NumaTopologyView:
    """This machine's NUMA topology (read from sysfs)."""
    from numaplan.topology import read_sysfs

    return NumaTopologyView(read_sysfs(sysfs_root or "/"))


class Communicator:
    """Collective statistics of the running engine (measured by every worker)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get_communication_stats(self) -> dict[str, Any]:
        """``inter_node_percentage`` (share of collective bytes read from another node's
        segment), calls, bytes, per-step collective time, algorithm per message size."""
        s = self._engine.runtime_stats()
        plan = self._engine.plan
        return {
            "inter_node_percentage": s.inter_node_percentage,
            "calls": s.collective_calls,
            "bytes": s.collective_bytes,
            "cross_node_bytes": s.collective_cross_node_bytes,
            "collective_s_per_step": s.collective_s_per_step,
            "algorithms": {c.phase: c.algorithm for c in plan.collectives.choices},
            "groups": [list(g) for g in plan.collectives.intra_node_groups],
        }


class Allocator:
    """Weight placement statistics of the running engine (from every worker's page audit)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get_allocation_stats(self) -> dict[str, Any]:
        """``local_percentage`` (weight bytes found on their planned node), per worker.

        ``bytes_total`` counts what every worker reads (a shared copy once per reader);
        ``bytes_in_memory`` what the weights occupy (a shared copy once).
        """
        s = self._engine.runtime_stats()
        return {
            "local_percentage": s.weight_local_percentage,
            "bytes_total": sum(w.weight_bytes for w in s.workers),
            "bytes_in_memory": sum(w.weight_bytes_loaded for w in s.workers),
            "bytes_on_planned_node": sum(w.weight_bytes_on_planned_node for w in s.workers),
            "workers": [{"worker_id": w.worker_id, "node_id": w.node_id,
                         "mem_node_id": w.mem_node_id, "bytes": w.weight_bytes,
                         "bytes_loaded": w.weight_bytes_loaded,
                         "bytes_shared_mapped": w.weight_bytes_shared_mapped,
                         "bytes_on_planned_node": w.weight_bytes_on_planned_node,
                         "load_s": w.load_s} for w in s.workers],
        }


def create_numa_communicator(manager: Engine) -> Communicator:
    """The collective statistics of a running engine (the proposal's
    ``create_numa_communicator(numa_manager)``; the engine is the NUMA manager)."""
    if not isinstance(manager, Engine):
        raise UsageError(f"create_numa_communicator needs a running Engine, got "
                         f"{type(manager).__name__}")
    return manager.communicator


def create_numa_allocator(manager: Engine) -> Allocator:
    """The weight-placement statistics of a running engine (the proposal's
    ``create_numa_allocator(numa_manager)``)."""
    if not isinstance(manager, Engine):
        raise UsageError(f"create_numa_allocator needs a running Engine, got "
                         f"{type(manager).__name__}")
    return manager.allocator


class Engine:
    """Plan, compile (cached), start the workers, generate.

    Raises
    ------
    NumaplanError
        For an invalid configuration (nodes that do not exist, W invalid for the model), an
        infeasible plan, or a runtime failure.
    """

    def __init__(self, config: EngineConfig) -> None:
        from numaplan.model import load_workload
        from numaplan.topology import read_sysfs

        t0 = time.perf_counter()
        if config.model is None:
            raise UsageError("EngineConfig.model is not set: an engine needs an MLC model "
                             "directory (numaplan convert makes one from a GGUF file)")
        if not Path(config.model).is_dir():
            raise ModelFormatError(f"model {config.model!r} is not a local MLC model directory; "
                             "numaplan does not download models (convert a GGUF file with "
                             "`numaplan convert`, or give the directory mlc_llm wrote)")
        self.config = config
        self._tokenizer: Any = None
        self.workload = load_workload(config.model)
        self.topology = read_sysfs("/")
        missing = set(config.numa_nodes or ()) - set(self.topology.node_ids)
        if missing:
            raise UsageError(f"numa_nodes {sorted(missing)} do not exist on this machine "
                             f"(nodes {list(self.topology.node_ids)})")
        self.compiled = False
        self.lib_path, self.plan_dir = self._library()
        from numaplan.plan import read_plan
        from numaplan.runtime.session import NumaRuntime, RunOptions

        self.plan = read_plan(self.plan_dir)
        self.max_batch, self.max_total_tokens = run_capacity(
            config.mode, self.workload, self.topology, self.plan, numa_nodes=config.numa_nodes,
            max_seq_len=config.max_seq_len)
        self.runtime = NumaRuntime(
            config.model, self.lib_path, plan_path=self.plan_dir,
            options=RunOptions(enforce_placement=config.numa_tensor_parallel,
                               max_seq_len=self.max_total_tokens, max_batch=self.max_batch))
        self.runtime.start()
        from numaplan.runtime.paged_kv import PAGE_SIZE

        #: Tokens per page of the workers' KV cache (a sequence holds whole pages).
        self.kv_page_tokens = PAGE_SIZE
        self.start_s = time.perf_counter() - t0
        self.communicator = Communicator(self)
        self.allocator = Allocator(self)
        log.info("engine started in %.2f s (%s)", self.start_s,
                 "compiled" if self.compiled else "library from cache/given")

    # -- library ----------------------------------------------------------------------------
    def plan_settings(self) -> PlanSettings:
        """The configuration's plan request, as ``numaplan compile`` states its options.

        Returns
        -------
        PlanSettings
            What :func:`numaplan.plan.settings.resolve_settings` turns into the planner's
            options and cost model.
        """
        from numaplan.plan.settings import PlanSettings

        c = self.config
        return PlanSettings(
            tensor_parallel_shards=c.tensor_parallel_shards,
            numa_nodes=tuple(c.numa_nodes) if c.numa_nodes else None,
            numa_inter_node_penalty=c.numa_inter_node_penalty,
            numa_prefer_local_memory=c.numa_prefer_local_memory,
            node_affinity=dict(c.node_affinity), cost_model=c.cost_model,
            oversubscribe=c.oversubscribe, max_total_seq_len=c.max_seq_len, mode=c.mode)

    def _library(self) -> tuple[Path, Path]:
        from numaplan.plan import make_plan, resolve_settings, write_plan

        if self.config.model_lib:
            lib = Path(self.config.model_lib)
            return lib, lib.parent
        from numaplan.model.relax_source import relax_source_for

        src, why_not = relax_source_for(self.config.model)
        if src is None:
            raise NumaplanError(f"no model_lib given and no library can be built: {why_not}",
                                path=self.config.model)
        from numaplan.passes.build import library_name, library_sources_digest

        opts, cost = resolve_settings(self.plan_settings(), self.workload, self.topology)
        # Keyed on stable inputs (not on the plan file: it records free memory, which moves).
        key = hashlib.sha256(json.dumps({
            "numaplan": __version__, "model": self.workload.fingerprint,
            "topology": self.topology.fingerprint(), "cost": cost.fingerprint(),
            "options": opts.model_dump(mode="json"),
            "sources": library_sources_digest(self.config.model, src),
        }, sort_keys=True).encode()).hexdigest()[:24]
        out = Path(self.config.cache_dir or default_cache_dir()) / key

        name = Path(self.config.model).resolve().name
        lib = out / library_name(name)
        if lib.exists() and (out / "numa-plan.json").exists():
            log.info("library cache hit: %s", lib)
            return lib, out
        plan = make_plan(self.workload, self.topology, cost, opts, model_name=name).plan
        from numaplan.passes.build import build_library

        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build_library(self.config.model, src, plan, tmp / lib.name)
        write_plan(plan, tmp)
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)  # the cache entry appears complete or not at all
        self.compiled = True
        return lib, out

    # -- use --------------------------------------------------------------------------------
    def generate(self, prompts: Any, max_new_tokens: int = 128, **sampling: Any) -> Any:
        """Generate for one prompt or several at once (batched on the workers).

        Parameters
        ----------
        prompts
            Token ids (``list[int]``), text (``str``, encoded with the model's tokenizer), or
            a list of either.
        max_new_tokens
            Tokens to generate at most.
        **sampling
            :class:`numaplan.sampling.SamplingParams` fields (``temperature``, ``top_p``,
            ``top_k``, ``seed``, ``stop``, ``ignore_eos``).

        Returns
        -------
        list[int] or str, or a list of them
            For ids, the new ids (the model's EOS ends a text prompt's answer, not an id
            prompt's); for text, the new text; a list for a list of prompts.
        """
        from numaplan.sampling import SamplingParams

        single = isinstance(prompts, str) or (
            isinstance(prompts, list | tuple) and prompts and isinstance(prompts[0], int))
        batch = [prompts] if single else list(prompts)
        text = [isinstance(p, str) for p in batch]
        ids = [self.tokenizer.encode(p) if t else [int(i) for i in p]
               for p, t in zip(batch, text, strict=True)]
        params = SamplingParams(max_new_tokens=max_new_tokens, **sampling)
        eos = self.eos_ids if any(text) else ()
        outs, _ = self.runtime.run(ids, params, tokenizer=self.tokenizer if any(text) else None,
                                   eos_ids=eos)
        results = [o.text if t else list(o.output_ids) for o, t in zip(outs, text, strict=True)]
        return results[0] if single else results

    @property
    def tokenizer(self) -> Any:
        """The model directory's tokenizer (``tokenizer.json``)."""
        if self._tokenizer is None:
            from numaplan.tokenizer import Tokenizer

            self._tokenizer = Tokenizer(self.config.model)
        return self._tokenizer

    @property
    def chat_config(self) -> dict[str, Any]:
        """The model's ``mlc-chat-config.json``."""
        from numaplan.model.config import MLC_CONFIG_NAME

        path = Path(self.config.model) / MLC_CONFIG_NAME
        return json.loads(path.read_text()) if path.exists() else {}

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """The model's end-of-sequence ids (config and conversation template)."""
        doc = self.chat_config
        eos = doc.get("eos_token_id", [])
        conv = (doc.get("conv_template") or {}).get("stop_token_ids") or []
        return tuple(dict.fromkeys([*(eos if isinstance(eos, list) else [eos]), *conv]))

    @property
    def chat(self) -> Any:
        """OpenAI-style chat: ``engine.chat.completions.create(messages=[...], stream=...)``
        (MLC's MLCEngine field names)."""
        from numaplan.openai_api import Chat

        return Chat(self)

    def runtime_stats(self) -> Any:
        """The runtime's measured statistics (:class:`numaplan.runtime.session.RuntimeStats`)."""
        return self.runtime.stats()

    def prediction_check(self) -> dict[str, Any]:
        """The plan's predicted time per decode token next to the last generation's measured
        one, part by part (:func:`numaplan.runtime.compare.compare_prediction`), with the
        ratios measured / predicted."""
        from numaplan.runtime.compare import compare_prediction

        c = compare_prediction(self.plan, self.runtime_stats())
        return c.model_dump() | {"token_ratio": c.token_ratio}

    def optimize_tensor_placement(self, name: str, shape: tuple[int, ...] | list[int],
                                  worker_id: int) -> dict[str, Any]:
        """Where the plan puts worker ``worker_id``'s piece of tensor ``name``.

        For a tensor of the model, ``shape`` is its full shape and must match (a guard against
        asking about another model's tensor). Any other name (the proposal's
        ``"attention_weights"``) asks where a weight matrix of that shape would go under this
        plan (:func:`_placement_for_new_tensor`); the answer says ``"planned": False``.
        """
        plan = self.plan
        if not 0 <= worker_id < len(plan.workers):
            raise UsageError(f"worker_id must be in 0..{len(plan.workers) - 1}")
        t = next((t for t in plan.tensors if t.name == name), None)
        if t is None:
            return _placement_for_new_tensor(plan, self.workload.quantization, name,
                                             tuple(int(d) for d in shape), worker_id)
        info = self.workload.tensor(name)
        if tuple(shape) != tuple(info.shape):
            raise UsageError(f"{name} has shape {list(info.shape)}, not {list(shape)}")
        w = plan.workers[worker_id]
        homes = plan.tensor_homes(t, worker_id)
        return {"tensor": name, "role": t.role, "worker_id": worker_id, "node_id": w.node_id,
                "cpus": w.cpus, "split_dim": t.split_dim, "replicated": t.replicated,
                "piece_shape": list(info.shard_shape(len(plan.workers))),
                "piece_nbytes": t.piece_nbytes,
                "homes": [{"node_id": h.node_id, "nbytes": h.nbytes} for h in homes],
                "local": all(h.node_id == w.mem_node_id for h in homes), "planned": True}

    def close(self) -> None:
        """Stop the workers."""
        self.runtime.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MLCEngine(Engine):
    """The engine under the name MLC LLM gives it (the proposal's ``MLCEngine(config)``)."""

    @classmethod
    def from_pretrained(cls, model: str, **config: Any) -> MLCEngine:
        """An engine for a local MLC model directory (``config``: :class:`EngineConfig`
        fields). A hub name is refused: numaplan reads local directories only."""
        return cls(EngineConfig(model=model, **config))


#: Words in a tensor name that say how MLC's tensor parallelism would split it: attention and
#: MLP input projections split their output rows (column parallel, dim 0), output projections
#: their input columns (row parallel, dim 1), embeddings and norms are replicated.
_SPLIT_HINTS = ((("o_proj", "out_proj", "down", "dense_4h", "c_proj", "w2"), 1),
                (("embed", "norm", "lm_head", "wte", "bias"), None),
                (("attn", "attention", "qkv", "q_proj", "k_proj", "v_proj", "mlp", "ffn",
                  "gate", "up", "fc", "w1", "w3", "weight"), 0))


def _placement_for_new_tensor(plan: Any, quantization: str, name: str, shape: tuple[int, ...],
                              worker_id: int) -> dict[str, Any]:
    """Where a weight of ``shape`` that the plan does not list would go for ``worker_id``.

    Split as its name suggests (:data:`_SPLIT_HINTS`; replicated when the dimension does not
    divide by W), stored as the model's quantization stores a linear weight, and homed where
    the plan homes a worker's new bytes: its memory node while the node has room left after
    what the plan put there, else the node with the most room left.
    """
    from numaplan.model.dtypes import dtype_itemsize
    from numaplan.model.quantization import get_quantization

    if len(shape) != 2 or min(shape) <= 0:
        raise UsageError(f"{name}: expected a weight matrix shape [out, in], got {list(shape)}")
    W = len(plan.workers)
    lowered = name.lower()
    split_dim = next((dim for words, dim in _SPLIT_HINTS if any(x in lowered for x in words)), 0)
    if split_dim is not None and shape[split_dim] % W:
        split_dim = None
    piece = list(shape)
    if split_dim is not None:
        piece[split_dim] //= W
    nbytes = sum(dtype_itemsize(spec.dtype) * math.prod(spec.shape)
                 for spec in get_quantization(quantization).linear_params(name, *piece))
    w = plan.workers[worker_id]
    room = {n.node_id: (n.mem_capacity_bytes - n.bytes_homed)
            for n in plan.nodes if n.mem_capacity_bytes}
    copies = 1 if split_dim is None else sum(1 for x in plan.workers
                                             if x.mem_node_id == w.mem_node_id)
    if room.get(w.mem_node_id, 0) >= nbytes * copies:
        home, why = w.mem_node_id, "the worker's own memory node has room"
    elif room:
        home = max(room, key=lambda n: (room[n], -n))
        why = f"node {w.mem_node_id} is full; node {home} has the most room left"
    else:
        raise InfeasiblePlanError(f"{name}: no node has room for {nbytes} bytes")
    return {"tensor": name, "role": "split" if split_dim is not None else "replicated",
            "worker_id": worker_id, "node_id": w.node_id, "cpus": w.cpus,
            "split_dim": split_dim, "replicated": split_dim is None, "piece_shape": piece,
            "piece_nbytes": nbytes, "homes": [{"node_id": home, "nbytes": nbytes}],
            "local": home == w.mem_node_id, "planned": False, "why": why}


def run_capacity(mode: str, workload: Any, topology: Any, plan: Any, *,
                 numa_nodes: list[int] | None = None,
                 max_seq_len: int | None = None) -> tuple[int, int]:
    """The KV cache a mode runs with: ``(sequences, tokens over all of them)``.

    Parameters
    ----------
    mode
        ``interactive``: one sequence; ``local``: four (MLC's local mode); ``server``: as many
        as memory allows (:func:`numaplan.plan.settings.mode_batch_size`).
    workload, topology
        The model and the machine.
    plan
        The library's plan: the tokens are what it reserved (one context window shared by the
        sequences in the interactive and local modes, one per sequence in server mode, shrunk
        to what fits after the weights: ``plan.kv_cache``).
    numa_nodes
        The nodes the plan may use.
    max_seq_len
        Tokens over all sequences, instead of the plan's.

    Returns
    -------
    tuple of int
        What :class:`~numaplan.runtime.protocol.RunOptions` takes as ``max_batch`` and
        ``max_seq_len``.
    """
    from numaplan.plan.settings import mode_batch_size

    batch = mode_batch_size(mode, workload, topology,  # type: ignore[arg-type]
                            numa_nodes=tuple(numa_nodes) if numa_nodes else None)
    return batch, int(max_seq_len or plan.kv_cache.max_total_seq_len)

