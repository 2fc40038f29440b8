"""Read a :class:`Topology` from hwloc 2.x XML (``lstopo --of xml``).

hwloc's XML is the topology format HPC tools exchange (Open MPI, Slurm and other hwloc-using
schedulers read it), so a cluster often already has one per node type. The format is documented
in hwloc's ``hwloc2.dtd`` and the "Importing and exporting topologies from/to XML files" chapter
of its manual; what this reader relies on:

- ``<topology version="2.0">`` holds one ``<object type="Machine">`` tree. Every object is an
  ``<object type=... os_index=...>`` element; PUs (logical CPUs) sit under Cores, Packages and
  Groups.
- NUMA nodes are *memory children* (``type="NUMANode"``, ``local_memory`` in bytes, left out
  when zero), attached to the object whose CPUs they are local to: a Package, a Group (sub-NUMA
  clustering, NPS) or the Machine. Memory-side caches (``type="MemCache"``) may stand between
  the object and its node. A CPU-less node (HBM in flat mode, CXL) is attached beside the node
  that owns the CPUs, or higher up.
- Distances are ``<distances2 type="NUMANode" nbobjs=N kind=K name=... indexing="os">`` with
  ``<indexes>`` and row-major ``<u64values>``, each possibly split over several elements.
  ``kind`` is a bit set of ``hwloc/distances.h``: 4 means latency; Linux's SLIT table is
  exported as ``name="NUMALatency"``, kind 5 (from the OS, latency).

Linux gives each CPU to exactly one node; hwloc instead gives every node attached to an object
that object's CPUs. The reader gives each PU to the lowest-numbered node attached nearest above
it: the node Linux names for it when a DDR node shares its CPUs with HBM or CXL nodes, which
Linux numbers after the DDR nodes. The other nodes there are CPU-less.

hwloc 1.x XML (NUMA nodes as ordinary parents, relative ``<distances>``) is refused with a
message saying how to export 2.x.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from numaplan._io import read_bytes
from numaplan.errors import TopologyError
from numaplan.topology.model import (
    CpuInfo,
    Node,
    Topology,
    assumed_distances,
    build_topology,
)

#: Memory object types: their elements hang off the object whose CPUs they serve.
_MEMORY_TYPES = ("NUMANode", "MemCache")
#: I/O and Misc objects carry no CPUs and no memory.
_SKIPPED_TYPES = ("Bridge", "PCIDev", "OSDev", "Misc")
#: Real trees are about ten levels deep (Machine, Package, Die, Group, caches, Core, PU); the
#: limit keeps a hostile file from exhausting Python's recursion limit.
_MAX_DEPTH = 100
#: ``hwloc/distances.h``: HWLOC_DISTANCES_KIND_MEANS_LATENCY.
_KIND_MEANS_LATENCY = 4


@dataclass
class _Walk:
    """What the tree walk collects."""

    node_memory: dict[int, int] = field(default_factory=dict)
    node_socket: dict[int, int | None] = field(default_factory=dict)
    node_gp: dict[int, int] = field(default_factory=dict)
    cpus: dict[int, CpuInfo] = field(default_factory=dict)
    cpu_model: str | None = None


def parse_hwloc_xml(text: str | bytes, *, source: str = "hwloc") -> Topology:
    """Parse hwloc 2.x XML, as written by ``lstopo --of xml`` or ``hwloc_topology_export_xml``.

    Parameters
    ----------
    text
        The XML document.
    source
        Name used in error messages and recorded as the topology's source (usually the file).

    Returns
    -------
    Topology
        Nodes with their CPUs, memory (``local_memory``; free memory unknown) and package, per-CPU
        core, package and SMT siblings, the SLIT distances hwloc recorded (assumed 10/20 and
        marked so when it recorded none), and the cpuset of the exporting process
        (``allowed_cpuset`` / ``allowed_nodeset`` of the Machine).

    Raises
    ------
    TopologyError
        On text that is not XML, XML that is not hwloc 2.x, or a tree or distance matrix that is
        cut short or inconsistent.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise TopologyError(f"not XML, or cut short: {exc}", path=source) from None
    except LookupError as exc:  # an encoding declaration Python does not know
        raise TopologyError(f"not readable XML: {exc}", path=source) from None
    if root.tag != "topology":
        raise TopologyError(f"not hwloc XML: the root element is <{root.tag[:40]}>, expected "
                            f"<topology>", path=source)
    version = root.get("version", "")
    if not version.startswith("2."):
        raise TopologyError(f"hwloc XML version {version or '1.x'} is not supported: export it "
                            f"with hwloc 2.x (`lstopo --of xml`)", path=source)
    machines = root.findall("object")
    if len(machines) != 1 or machines[0].get("type") != "Machine":
        raise TopologyError("hwloc XML has no single <object type=\"Machine\"> tree (cut short?)",
                            path=source)
    machine = machines[0]
    walk = _Walk()
    _visit(machine, walk, source, socket=None, local_node=None, core=None)
    if not walk.node_memory:
        raise TopologyError("hwloc XML has no NUMANode object", path=source)
    if not walk.cpus:
        raise TopologyError("hwloc XML has no PU object (cut short?)", path=source)
    ids = sorted(walk.node_memory)
    node_cpus: dict[int, list[int]] = {n: [] for n in ids}
    for c in walk.cpus.values():
        node_cpus[c.node_id].append(c.cpu_id)
    nodes = tuple(Node(node_id=n, cpus=tuple(node_cpus[n]), mem_total_bytes=walk.node_memory[n],
                       socket_id=walk.node_socket[n]) for n in ids)
    distances = _distances(root, ids, walk.node_gp, source)
    allowed_cpus = _allowed(machine, "allowed_cpuset", sorted(walk.cpus), source)
    allowed_mems = _allowed(machine, "allowed_nodeset", ids, source)
    return build_topology(
        source, source=f"hwloc:{source}", nodes=nodes,
        distances=distances if distances is not None else assumed_distances(ids),
        distances_assumed=distances is None,
        cpus=tuple(walk.cpus[c] for c in sorted(walk.cpus)),
        allowed_cpus=allowed_cpus, allowed_mem_node_ids=allowed_mems, cpu_model=walk.cpu_model)


def read_hwloc_file(path: str | Path) -> Topology:
    """:func:`parse_hwloc_xml` on a file."""
    data = read_bytes(path, error=TopologyError, expected="an hwloc XML file")
    return parse_hwloc_xml(data, source=str(path))


def _visit(obj: ET.Element, walk: _Walk, source: str, *, socket: int | None,
           local_node: int | None, core: int | None, depth: int = 0) -> None:
    """Record the nodes attached to ``obj`` and the PUs below it."""
    kind = obj.get("type")
    if kind == "Package":
        socket = _int(obj, "os_index", source)
        for info in obj.findall("info"):
            if info.get("name") == "CPUModel" and walk.cpu_model is None:
                walk.cpu_model = info.get("value") or None
    elif kind == "Core":
        core = _int(obj, "os_index", source)
    attached = _attached_nodes(obj, source)
    for node in attached:
        nid = _int(node, "os_index", source)
        if nid in walk.node_memory:
            raise TopologyError(f"NUMANode P#{nid} appears twice", path=source)
        walk.node_memory[nid] = _int(node, "local_memory", source, default=0)
        walk.node_socket[nid] = socket
        if node.get("gp_index") is not None:
            walk.node_gp[_int(node, "gp_index", source)] = nid
    if attached:
        local_node = min(_int(n, "os_index", source) for n in attached)
    if kind == "PU":
        cpu = _int(obj, "os_index", source)
        if local_node is None:
            raise TopologyError(f"PU P#{cpu} has no NUMANode above it", path=source)
        if cpu in walk.cpus:
            raise TopologyError(f"PU P#{cpu} appears twice", path=source)
        walk.cpus[cpu] = CpuInfo(cpu_id=cpu, node_id=local_node, core_id=core, socket_id=socket)
        return
    if depth >= _MAX_DEPTH:
        raise TopologyError(f"objects nested deeper than {_MAX_DEPTH} levels", path=source)
    before = set(walk.cpus)
    for child in obj.findall("object"):
        if child.get("type") not in _MEMORY_TYPES + _SKIPPED_TYPES:
            _visit(child, walk, source, socket=socket, local_node=local_node, core=core,
                   depth=depth + 1)
    if kind == "Core":
        siblings = tuple(sorted(set(walk.cpus) - before))
        for c in siblings:
            walk.cpus[c] = walk.cpus[c].model_copy(update={"thread_siblings": siblings})


def _attached_nodes(obj: ET.Element, source: str) -> list[ET.Element]:
    """The NUMANode elements among ``obj``'s memory children, looking through MemCaches."""
    out: list[ET.Element] = []
    for child in obj.findall("object"):
        kind = child.get("type")
        if kind is None:
            raise TopologyError("an <object> has no type attribute", path=source)
        if kind == "NUMANode":
            out.append(child)
        elif kind == "MemCache":
            out.extend(_attached_nodes(child, source))
    return out


def _int(obj: ET.Element, name: str, source: str, *, default: int | None = None) -> int:
    value = obj.get(name)
    if value is None:
        if default is not None:
            return default
        raise TopologyError(f"{obj.get('type', 'an')} object has no {name} attribute",
                            path=source)
    if not value.isascii() or not value.isdigit():
        raise TopologyError(f"{obj.get('type')} object has {name}={value[:40]!r}, expected a "
                            f"non-negative integer", path=source)
    return int(value)


def _bitmap(text: str, source: str) -> set[int] | None:
    """An hwloc bitmap string (``0x000000ff,0xffffffff``); ``None`` when it is infinite."""
    words = text.split(",")
    if words[0] == "0xf...f":
        return None
    out: set[int] = set()
    for k, word in enumerate(reversed(words)):
        try:
            value = int(word.removeprefix("0x"), 16)
        except ValueError:
            raise TopologyError(f"bad hwloc bitmap {text[:40]!r}", path=source) from None
        out.update(32 * k + i for i in range(value.bit_length()) if value >> i & 1)
    return out


def _allowed(machine: ET.Element, name: str, present: list[int], source: str
             ) -> tuple[int, ...]:
    """The present ids the exporting process was allowed (all of them when not recorded)."""
    text = machine.get(name)
    bits = None if text is None else _bitmap(text, source)
    return tuple(i for i in present if bits is None or i in bits)


def _distances(root: ET.Element, ids: list[int], gp_to_os: dict[int, int], source: str
               ) -> tuple[tuple[int, ...], ...] | None:
    """The NUMA latency matrix hwloc recorded, in node-id order; ``None`` when there is none."""
    candidates = [d for d in root.findall("distances2") if d.get("type") == "NUMANode"
                  and _int(d, "kind", source, default=0) & _KIND_MEANS_LATENCY]
    if not candidates:
        return None
    # Linux's SLIT is the one named NUMALatency; others are user-provided (hwloc-annotate).
    chosen = next((d for d in candidates if d.get("name") == "NUMALatency"), candidates[0])
    name = chosen.get("name", "unnamed")
    n = _int(chosen, "nbobjs", source)
    try:
        index = [int(t) for e in chosen.findall("indexes") for t in (e.text or "").split()]
        values = [int(t) for e in chosen.findall("u64values") for t in (e.text or "").split()]
    except ValueError:
        raise TopologyError(f"distances {name!r}: an index or value is not an integer",
                            path=source) from None
    if len(index) != n or len(values) != n * n:
        raise TopologyError(f"distances {name!r}: {len(index)} indexes and {len(values)} values "
                            f"for {n} objects, expected {n} and {n * n} (cut short?)",
                            path=source)
    if chosen.get("indexing") == "gp":
        if any(g not in gp_to_os for g in index):
            raise TopologyError(f"distances {name!r} name objects that are not NUMA nodes",
                                path=source)
        index = [gp_to_os[g] for g in index]
    if sorted(index) != ids:
        raise TopologyError(f"distances {name!r} cover nodes {sorted(index)}, the topology has "
                            f"{ids}", path=source)
    pos = {nid: k for k, nid in enumerate(index)}
    return tuple(tuple(values[pos[a] * n + pos[b]] for b in ids) for a in ids)
