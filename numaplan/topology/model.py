"""The :class:`Topology` data model: NUMA nodes, their CPUs and memory, and the distances.

A topology is plain, validated data. It is produced by the readers in this package (sysfs,
``numactl -H``, ``lscpu``, hwloc XML, JSON, synthetic) and consumed by the cost model and the
planner.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Literal

from pydantic import ValidationError, field_validator, model_validator

from numaplan._base import Frozen
from numaplan.errors import TopologyError
from numaplan.topology.cpulist import format_cpulist

#: SLIT convention (ACPI 6.x, "System Locality Information Table"): 10 is local; firmware writes
#: >= 20 for a remote socket. Used only when socket ids are not known.
SLIT_LOCAL = 10
SLIT_CROSS_SOCKET = 20


class CpuInfo(Frozen):
    """One logical CPU, as far as the source knows it.

    ``core_id`` and ``socket_id`` come from ``/sys/devices/system/cpu/cpuN/topology``;
    ``thread_siblings`` lists the logical CPUs sharing this physical core (itself included).
    """

    cpu_id: int
    node_id: int
    core_id: int | None = None
    socket_id: int | None = None
    thread_siblings: tuple[int, ...] = ()


class MemoryAttributes(Frozen):
    """Firmware (ACPI HMAT) performance of a memory node as seen from its best initiators.

    Read from ``/sys/devices/system/node/nodeN/access0/initiators/`` (kernel
    ``Documentation/admin-guide/mm/numaperf.rst``). Bandwidth in MB/s and latency in ns as the
    kernel reports them.
    """

    initiator_node_ids: tuple[int, ...] = ()
    read_bw_mbps: int | None = None
    read_lat_ns: int | None = None
    write_bw_mbps: int | None = None
    write_lat_ns: int | None = None


class Node(Frozen):
    """A NUMA node.

    A node may have CPUs and no memory (Threadripper NPS4, EPYC Naples), memory and no CPUs
    (Xeon Max HBM in flat mode, CXL expanders), or both. ``mem_total_bytes`` is ``None`` when
    the source does not say (``lscpu``).

    ``mem_free_bytes`` is the free figure the source printed (``MemFree``: a snapshot, and for a
    dump a snapshot of someone else's machine). ``mem_available_bytes`` is set only when read
    from the live machine: what the kernel could hand out now, free pages plus reclaimable page
    cache and slab, as ``/proc/meminfo``'s ``MemAvailable`` counts it (see
    :func:`numaplan.topology.sysfs.read_sysfs`).
    """

    node_id: int
    cpus: tuple[int, ...] = ()
    mem_total_bytes: int | None = None
    mem_free_bytes: int | None = None
    mem_available_bytes: int | None = None
    socket_id: int | None = None
    hmat: MemoryAttributes | None = None

    @field_validator("cpus")
    @classmethod
    def _sorted_unique(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(v)) != len(v):
            raise ValueError("a CPU is listed twice")
        return tuple(sorted(v))

    @model_validator(mode="after")
    def _memory_sane(self) -> Node:
        if self.node_id < 0:
            raise ValueError(f"node id {self.node_id} is negative")
        if self.mem_total_bytes is not None and self.mem_total_bytes < 0:
            raise ValueError(f"node {self.node_id}: negative memory size")
        if self.mem_free_bytes is not None:
            if self.mem_free_bytes < 0:
                raise ValueError(f"node {self.node_id}: negative free memory")
            if self.mem_total_bytes is not None and self.mem_free_bytes > self.mem_total_bytes:
                raise ValueError(f"node {self.node_id}: free memory exceeds total")
        if self.mem_available_bytes is not None:
            if self.mem_available_bytes < 0:
                raise ValueError(f"node {self.node_id}: negative available memory")
            if self.mem_total_bytes is not None and \
                    self.mem_available_bytes > self.mem_total_bytes:
                raise ValueError(f"node {self.node_id}: available memory exceeds total")
        return self

    @property
    def has_cpus(self) -> bool:
        """Whether the node has any CPU."""
        return bool(self.cpus)

    @property
    def has_memory(self) -> bool:
        """Whether the node has memory (unknown size counts as yes)."""
        return self.mem_total_bytes is None or self.mem_total_bytes > 0


class Topology(Frozen):
    """A machine's NUMA topology as the process sees it.

    ``distances[i][k]`` is the SLIT distance from ``nodes[i]`` to ``nodes[k]`` (index order, not
    node id: ids may be sparse). ``allowed_cpus`` and ``allowed_mem_node_ids`` come from the
    process's cpuset (``Cpus_allowed_list`` / ``Mems_allowed_list`` in ``/proc/self/status``);
    plans must stay inside them.
    """

    schema_version: Literal[1] = 1
    source: str
    nodes: tuple[Node, ...]
    distances: tuple[tuple[int, ...], ...]
    distances_assumed: bool = False
    cpus: tuple[CpuInfo, ...] = ()
    allowed_cpus: tuple[int, ...]
    allowed_mem_node_ids: tuple[int, ...]
    cpu_model: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        if not self.nodes:
            raise ValueError("no NUMA node")
        ids = [n.node_id for n in self.nodes]
        if ids != sorted(set(ids)):
            raise ValueError(f"node ids must be unique and sorted, got {ids}")
        owner: dict[int, int] = {}
        for n in self.nodes:
            for c in n.cpus:
                if c in owner:
                    raise ValueError(f"CPU {c} is listed on node {owner[c]} and node {n.node_id}")
                owner[c] = n.node_id
        k = len(self.nodes)
        if len(self.distances) != k:
            raise ValueError(f"distance matrix has {len(self.distances)} rows for {k} nodes")
        for i, row in enumerate(self.distances):
            if len(row) != k:
                raise ValueError(f"distance row of node {ids[i]} has {len(row)} entries, "
                                 f"expected {k}")
            if any(d <= 0 for d in row):
                raise ValueError(f"distance row of node {ids[i]} has a non-positive entry")
            if row[i] > min(row):
                raise ValueError(f"node {ids[i]}: local distance {row[i]} is not the smallest "
                                 f"in its row {list(row)}")
        if self.cpus:
            seen = {c.cpu_id: c for c in self.cpus}
            if len(seen) != len(self.cpus):
                raise ValueError("a CPU appears twice in the CPU details")
            if set(seen) != set(owner):
                raise ValueError("CPU details do not cover exactly the nodes' CPUs")
            for c in self.cpus:
                if owner[c.cpu_id] != c.node_id:
                    raise ValueError(f"CPU {c.cpu_id} details say node {c.node_id}, "
                                     f"node lists say {owner[c.cpu_id]}")
        bad = set(self.allowed_cpus) - set(owner)
        if bad:
            raise ValueError(f"allowed CPUs {format_cpulist(bad)} are on no node")
        bad_nodes = set(self.allowed_mem_node_ids) - set(ids)
        if bad_nodes:
            raise ValueError(f"allowed memory nodes {sorted(bad_nodes)} do not exist")
        if tuple(sorted(set(self.allowed_cpus))) != self.allowed_cpus:
            raise ValueError("allowed_cpus must be sorted and unique")
        if tuple(sorted(set(self.allowed_mem_node_ids))) != self.allowed_mem_node_ids:
            raise ValueError("allowed_mem_node_ids must be sorted and unique")
        return self

    # -- lookups ---------------------------------------------------------------------------
    @property
    def node_ids(self) -> tuple[int, ...]:
        """Node ids in index order."""
        return tuple(n.node_id for n in self.nodes)

    def index_of(self, node_id: int) -> int:
        """Index of ``node_id`` in :attr:`nodes` (and in the distance matrix)."""
        for i, n in enumerate(self.nodes):
            if n.node_id == node_id:
                return i
        raise KeyError(f"no node {node_id}")

    def node(self, node_id: int) -> Node:
        """The node with id ``node_id``."""
        return self.nodes[self.index_of(node_id)]

    def distance(self, from_node: int, to_node: int) -> int:
        """SLIT distance between two node ids."""
        return self.distances[self.index_of(from_node)][self.index_of(to_node)]

    def usable_cpus(self, node_id: int) -> tuple[int, ...]:
        """The node's CPUs that the process may run on."""
        allowed = set(self.allowed_cpus)
        return tuple(c for c in self.node(node_id).cpus if c in allowed)

    def physical_cores(
        self, node_id: int, *, usable_only: bool = True
    ) -> tuple[tuple[int, ...], ...]:
        """The node's physical cores, each as the tuple of its logical CPUs (SMT siblings).

        When the source carries no SMT information each logical CPU counts as one core.
        """
        cpus = self.usable_cpus(node_id) if usable_only else self.node(node_id).cpus
        cpu_set = set(cpus)
        detail = {c.cpu_id: c for c in self.cpus}
        cores: dict[tuple[int, ...], None] = {}
        for c in cpus:
            info = detail.get(c)
            sib = info.thread_siblings if info and info.thread_siblings else (c,)
            cores.setdefault(tuple(s for s in sorted(sib) if s in cpu_set), None)
        return tuple(sorted(cores, key=lambda t: t[0]))

    def cpu_node_ids(self) -> tuple[int, ...]:
        """Ids of nodes with at least one usable CPU."""
        return tuple(n.node_id for n in self.nodes if self.usable_cpus(n.node_id))

    def memory_node_ids(self) -> tuple[int, ...]:
        """Ids of nodes with memory that the process may allocate on."""
        allowed = set(self.allowed_mem_node_ids)
        return tuple(n.node_id for n in self.nodes if n.has_memory and n.node_id in allowed)

    def socket_of(self, node_id: int) -> int:
        """Socket of a node: the known socket id, else inferred from SLIT distances.

        Inference groups nodes whose distance is below 20 (the ACPI convention for a remote
        socket), so SNC / NPS sub-nodes and local HBM land on their socket. A machine whose
        firmware hides sockets (uniform distances) looks like one socket.
        """
        node = self.node(node_id)
        if node.socket_id is not None:
            return node.socket_id
        return self._inferred_sockets()[node_id]

    def _inferred_sockets(self) -> dict[int, int]:
        ids = self.node_ids
        parent = list(range(len(ids)))

        def find(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i in range(len(ids)):
            for k in range(len(ids)):
                if i != k and max(self.distances[i][k], self.distances[k][i]) < SLIT_CROSS_SOCKET:
                    parent[find(i)] = find(k)
        roots: dict[int, int] = {}
        out: dict[int, int] = {}
        for i, nid in enumerate(ids):
            r = find(i)
            out[nid] = roots.setdefault(r, len(roots))
        return out

    # -- derived views -----------------------------------------------------------------------
    def fingerprint(self) -> str:
        """sha256 of the structure: nodes, their CPUs, which have memory, distances, cpuset.

        Memory sizes are left out: free memory moves all the time, and so does total memory on
        virtual machines with memory hotplug (virtio-mem, ballooning) without the machine
        changing. Whether a plan still fits is a separate check (``numaplan check`` re-prices
        it against current free memory). The source name is left out too.
        """
        data = {
            "nodes": [[n.node_id, list(n.cpus), n.has_memory] for n in self.nodes],
            "distances": [list(r) for r in self.distances],
            "allowed_cpus": list(self.allowed_cpus),
            "allowed_mem_node_ids": list(self.allowed_mem_node_ids),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def restricted_to(self, node_ids: Iterable[int]) -> Topology:
        """The same machine with the process allowed only ``node_ids`` (CPUs and memory).

        Implements ``numa_nodes``: the plan may use only these nodes.
        """
        keep = set(node_ids)
        missing = keep - set(self.node_ids)
        if missing:
            raise TopologyError(f"numa_nodes names nodes {sorted(missing)} that do not exist; "
                                f"nodes are {list(self.node_ids)}")
        cpus = tuple(c for c in self.allowed_cpus if self._owner()[c] in keep)
        mems = tuple(n for n in self.allowed_mem_node_ids if n in keep)
        return self.model_copy(update={"allowed_cpus": cpus, "allowed_mem_node_ids": mems})

    def _owner(self) -> dict[int, int]:
        return {c: n.node_id for n in self.nodes for c in n.cpus}

    def to_json(self) -> str:
        """Canonical JSON text (``schema_version`` first)."""
        return self.model_dump_json(indent=2) + "\n"


def assumed_distances(node_ids: Iterable[int]) -> tuple[tuple[int, ...], ...]:
    """10 local, 20 remote: what Linux itself assumes when firmware gives no SLIT.

    For sources that record no distances (``lscpu``, some ``numactl -H`` and hwloc XML); the
    topology then sets ``distances_assumed``.
    """
    ids = list(node_ids)
    return tuple(tuple(SLIT_LOCAL if a == b else SLIT_CROSS_SOCKET for b in ids) for a in ids)


def build_topology(source_path: str | None, **fields: object) -> Topology:
    """Construct a :class:`Topology`, turning validation failures into one-line errors.

    Parameters
    ----------
    source_path
        The file or directory the data came from, named in the error.
    **fields
        The :class:`Topology` fields.

    Raises
    ------
    TopologyError
        When the data is inconsistent (overlapping CPU lists, a non-square distance matrix...).
    """
    try:
        return Topology(**fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise TopologyError(_first_error(exc), path=source_path) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    return f"{loc + ': ' if loc else ''}{msg}{more}"
