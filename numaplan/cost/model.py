"""The :class:`CostModel`: what reading memory of node j from the CPUs of node i costs.

Two square matrices over the topology's node ids, rows = reader node, columns = memory node:
sustained read bandwidth in GB/s (1e9 bytes per second) and dependent-load latency in ns. A cell
is ``None`` when it has no meaning (the reader has no CPUs, the column has no memory) or was not
measured. ``method`` says where the numbers came from, because a measured matrix and one guessed
from SLIT distances deserve different trust; the plan file repeats it.

Two optional figures make the predictor a roofline (docs/cost-model.md, "Compute"):
``compute`` says how fast numaplan's decode kernels consume weight bytes per core of each CPU
node, per quantization, and ``collective`` the measured per-call cost of numaplan's all-reduce.
A model without them (SLIT, Intel MLC, a cost file written before they existed) prices memory
reads only, and the plan says so.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from numaplan._base import Frozen
from numaplan._io import read_json
from numaplan.errors import CostModelError, SchemaVersionError
from numaplan.topology import Topology

Method = Literal["probe", "intel-mlc", "slit", "json", "memory-spec"]
Matrix = tuple[tuple[float | None, ...], ...]


class CellAudit(Frozen):
    """Where a probe buffer's pages really were (``move_pages``), for one (reader, memory) cell."""

    reader_node_id: int
    mem_node_id: int
    pages_checked: int
    pages_on_target: int
    nodes_seen: tuple[int, ...]

    @property
    def on_target_fraction(self) -> float:
        """Share of checked pages that were on the intended node."""
        return self.pages_on_target / self.pages_checked if self.pages_checked else 0.0


class NodeCompute(Frozen):
    """How fast numaplan's decode kernels consume weights on one CPU node.

    Attributes
    ----------
    node_id
        The CPU node.
    weight_bytes_per_s_per_core
        Quantization name (``q4f16_1``, ``q0f16``, ...) -> weight bytes one physical core's
        worth of decode products consumes per second, measured with the weights in cache so
        that memory does not set the pace (the roofline's compute ceiling).
    cores_measured
        Physical cores the kernels ran on (the figure is the total divided by this).
    call_s
        Quantization -> fixed seconds of one decode product on the node's cores (entering and
        leaving the thread pool), beside the bytes' time; absent: not measured (0).
    """

    node_id: int
    weight_bytes_per_s_per_core: dict[str, float]
    cores_measured: int = Field(ge=1)
    call_s: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _positive(self) -> NodeCompute:
        for q, v in self.weight_bytes_per_s_per_core.items():
            if not v > 0:
                raise ValueError(f"compute figure for {q} must be positive, got {v}")
        for q, v in self.call_s.items():
            if not v >= 0:
                raise ValueError(f"call cost for {q} must be >= 0, got {v}")
        return self


class CollectiveFit(Frozen):
    """The per-call cost of numaplan's CPU all-reduce, ``alpha + beta * bytes``, fitted from a
    short run on this machine.

    Attributes
    ----------
    alpha_s
        Seconds per call at zero size (entering, publishing, polling, leaving).
    beta_s_per_byte
        Seconds per byte of message.
    ranks
        Ranks the fit was measured with.
    """

    alpha_s: float = Field(ge=0)
    beta_s_per_byte: float = Field(ge=0)
    ranks: int = Field(ge=2)


class CostModel(Frozen):
    """Read bandwidth and latency between NUMA nodes.

    Attributes
    ----------
    node_ids
        The nodes, in matrix index order (same order as the topology's nodes).
    read_bw_gbps, lat_ns
        ``[reader][memory]`` matrices; ``None`` where undefined.
    method
        ``probe`` (measured here), ``intel-mlc`` (parsed from Intel MLC output), ``slit`` (derived
        from SLIT distances and ``numa_inter_node_penalty``), ``json``.
    params
        How the numbers were obtained (penalty, nominal bandwidth, probe buffer size, kernel...).
    audit
        For a probe: the page audit of every measured cell.
    compute
        Per CPU node, the decode kernels' weight consumption per core (empty: no compute term).
    collective
        The measured all-reduce cost per call (``None``: the nominal alpha of the planner).
    """

    schema_version: Literal[1] = 1
    node_ids: tuple[int, ...]
    read_bw_gbps: Matrix
    lat_ns: Matrix
    method: Method
    params: dict[str, str | float | int | bool] = Field(default_factory=dict)
    topology_fingerprint: str | None = None
    audit: tuple[CellAudit, ...] = ()
    compute: tuple[NodeCompute, ...] = ()
    collective: CollectiveFit | None = None

    @model_validator(mode="after")
    def _square(self) -> CostModel:
        k = len(self.node_ids)
        if k == 0:
            raise ValueError("no node")
        if list(self.node_ids) != sorted(set(self.node_ids)):
            raise ValueError("node_ids must be unique and sorted")
        for name in ("read_bw_gbps", "lat_ns"):
            m = getattr(self, name)
            if len(m) != k or any(len(r) != k for r in m):
                raise ValueError(f"{name} must be {k}x{k}")
            for r in m:
                for v in r:
                    if v is not None and not v > 0:
                        raise ValueError(f"{name} has a non-positive entry {v}")
        seen = [c.node_id for c in self.compute]
        if len(seen) != len(set(seen)) or any(n not in self.node_ids for n in seen):
            raise ValueError(f"compute names nodes {seen}: each once, among {list(self.node_ids)}")
        return self

    def _idx(self, node_id: int) -> int:
        try:
            return self.node_ids.index(node_id)
        except ValueError:
            raise CostModelError(f"cost model has no node {node_id}") from None

    def bw(self, reader: int, mem: int) -> float | None:
        """Read bandwidth in GB/s from CPUs of ``reader`` to memory of ``mem``."""
        return self.read_bw_gbps[self._idx(reader)][self._idx(mem)]

    def lat(self, reader: int, mem: int) -> float | None:
        """Dependent-load latency in ns from ``reader`` to ``mem``."""
        return self.lat_ns[self._idx(reader)][self._idx(mem)]

    def compute_rate(self, node_id: int, quantization: str) -> float | None:
        """Weight bytes per second per core the decode kernels of ``quantization`` consume on
        ``node_id`` (``None``: not measured)."""
        for c in self.compute:
            if c.node_id == node_id:
                return c.weight_bytes_per_s_per_core.get(quantization)
        return None

    def call_cost(self, node_id: int, quantization: str) -> float:
        """Fixed seconds of one decode product of ``quantization`` on ``node_id`` (0 when not
        measured)."""
        for c in self.compute:
            if c.node_id == node_id:
                return c.call_s.get(quantization, 0.0)
        return 0.0

    def fingerprint(self) -> str:
        """sha256 of the matrices, method and compute figures (not of audit details).

        The compute and collective figures enter only when present, so a cost model without
        them keeps the fingerprint it had before they existed.
        """
        data: list = [self.node_ids, self.read_bw_gbps, self.lat_ns, self.method]
        if self.compute or self.collective:
            data += [[c.model_dump() for c in self.compute],
                     self.collective.model_dump() if self.collective else None]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def check_covers(self, topology: Topology, *, source: str | None = None) -> None:
        """Raise unless every CPU node -> memory node pair of ``topology`` has a bandwidth.

        Raises
        ------
        CostModelError
            Naming the first pair without a figure.
        """
        for r in topology.cpu_node_ids():
            for m in topology.memory_node_ids():
                if r not in self.node_ids or m not in self.node_ids:
                    gap = r if r not in self.node_ids else m
                    raise CostModelError(f"cost model has no node {gap} of the topology "
                                         f"(cost model nodes {list(self.node_ids)})", path=source)
                if self.bw(r, m) is None:
                    raise CostModelError(f"cost model has no bandwidth for CPUs of node {r} "
                                         f"reading node {m}", path=source)

    def to_json(self) -> str:
        """JSON text, ``schema_version`` first."""
        return self.model_dump_json(indent=2) + "\n"


def build_cost_model(source: str | None, **fields: object) -> CostModel:
    """Construct a :class:`CostModel`, turning validation failures into one-line errors."""
    try:
        return CostModel(**fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise CostModelError(f"{loc + ': ' if loc else ''}{msg}", path=source) from None


def read_cost_json(path: str) -> CostModel:
    """Read a cost model written by ``numaplan probe -o`` or :meth:`CostModel.to_json`.

    Raises
    ------
    SchemaVersionError
        For an unknown ``schema_version``.
    CostModelError
        For anything else that is wrong, naming the file.
    """
    data = read_json(path, error=CostModelError)
    if not isinstance(data, dict):
        raise CostModelError("expected a JSON object", path=path)
    if data.get("schema_version") != 1:
        raise SchemaVersionError(f"unknown cost model schema_version "
                                 f"{data.get('schema_version')!r}; this numaplan reads 1",
                                 path=path)
    return build_cost_model(path, **data)
