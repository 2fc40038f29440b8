"""The :class:`CostModel`: what reading memory of node j from the CPUs of node i costs.

Two square matrices over the topology's node ids, rows = reader node, columns = memory node:
sustained read bandwidth in GB/s (1e9 bytes per second) and dependent-load latency in ns. A cell
is ``None`` when it has no meaning (the reader has no CPUs, the column has no memory) or was not
measured. ``method`` says where the numbers came from, because a measured matrix and one guessed
from SLIT distances deserve different trust; the plan file repeats it.
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

Method = Literal["probe", "intel-mlc", "slit", "json"]
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
    """

    schema_version: Literal[1] = 1
    node_ids: tuple[int, ...]
    read_bw_gbps: Matrix
    lat_ns: Matrix
    method: Method
    params: dict[str, str | float | int | bool] = Field(default_factory=dict)
    topology_fingerprint: str | None = None
    audit: tuple[CellAudit, ...] = ()

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

    def fingerprint(self) -> str:
        """sha256 of the matrices and method (not of audit details)."""
        data = [self.node_ids, self.read_bw_gbps, self.lat_ns, self.method]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()

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
