"""Read a :class:`Topology` from Linux sysfs and procfs.

Files used (kernel ``Documentation/ABI/stable/sysfs-devices-node``,
``Documentation/admin-guide/cputopology.rst``, ``Documentation/admin-guide/mm/numaperf.rst``):

- ``/sys/devices/system/node/online`` and ``nodeN/{cpulist,meminfo,distance}``;
- ``/sys/devices/system/node/has_memory`` (a memoryless node still has a ``meminfo``);
- ``nodeN/access0/initiators/{read,write}_{bandwidth,latency}`` (HMAT, when firmware has it);
- ``/sys/devices/system/cpu/cpuN/topology/{core_id,physical_package_id,thread_siblings_list}``;
- ``/proc/self/status`` (``Cpus_allowed_list``, ``Mems_allowed_list``: the cpuset);
- ``/proc/meminfo`` and ``/proc/cpuinfo`` for the no-NUMA fallback and the CPU model name.

Every path is taken below ``root`` so that tests read fake trees.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from numaplan.errors import TopologyError
from numaplan.topology.cpulist import parse_cpulist
from numaplan.topology.model import (
    SLIT_LOCAL,
    CpuInfo,
    MemoryAttributes,
    Node,
    Topology,
    build_topology,
)

log = logging.getLogger(__name__)

FALLBACK_MESSAGE = "NUMA not detected, using single node fallback"
_NODE_DIR = re.compile(r"^node(\d+)$")
_MEMINFO = re.compile(r"^Node\s+(\d+)\s+([\w()]+):\s+(\d+)\s*kB\s*$")
#: Per-node meminfo fields the kernel could hand out without swapping: free pages, the file
#: page cache and reclaimable slab, the parts ``/proc/meminfo``'s MemAvailable is built from
#: (Documentation/filesystems/proc.rst; mm/show_mem.c si_mem_available). A node's own meminfo
#: has no MemAvailable line.
_RECLAIMABLE = ("Active(file)", "Inactive(file)", "SReclaimable")


def read_sysfs(root: str | Path = "/") -> Topology:
    """Read the topology below ``root`` (``/`` for the running machine).

    Parameters
    ----------
    root
        Directory that holds ``sys/`` and ``proc/``.

    Returns
    -------
    Topology
        With per-CPU core and socket details, HMAT attributes where present, and the process's
        cpuset. When the tree has no NUMA information the result is one node holding every
        online CPU and all memory, and ``FALLBACK_MESSAGE`` is logged as a warning.

    Raises
    ------
    TopologyError
        When a file is malformed or the files contradict each other; the message names the file.
    """
    root = Path(root)
    node_root = root / "sys/devices/system/node"
    node_ids = _list_nodes(node_root)
    if not node_ids:
        return _fallback(root)
    nodes = []
    distances = []
    has_memory = _read_optional_list(node_root / "has_memory")
    for nid in node_ids:
        d = node_root / f"node{nid}"
        cpus = _read_list(d / "cpulist")
        total, free, available = _read_node_meminfo(d / "meminfo", nid)
        if has_memory is not None and nid not in has_memory:
            total, free, available = 0, 0, 0
        row = _read_ints(d / "distance")
        if len(row) != len(node_ids):
            raise TopologyError(f"distance row has {len(row)} entries but {len(node_ids)} nodes "
                                f"are online", path=d / "distance")
        distances.append(tuple(row))
        nodes.append(Node(node_id=nid, cpus=cpus, mem_total_bytes=total, mem_free_bytes=free,
                          mem_available_bytes=available, hmat=_read_hmat(d)))
    nodes = _scale_available(nodes, _read_proc_meminfo(root).get("MemAvailable"))
    cpus = _read_cpu_details(root, nodes)
    sockets = _node_sockets(nodes, cpus)
    nodes = [n.model_copy(update={"socket_id": sockets.get(n.node_id)}) for n in nodes]
    all_cpus = sorted(c for n in nodes for c in n.cpus)
    allowed_cpus, allowed_mems = _read_cpuset(root, all_cpus, node_ids)
    return build_topology(
        str(node_root),
        source=f"sysfs:{root}",
        nodes=tuple(nodes),
        distances=tuple(distances),
        cpus=tuple(cpus),
        allowed_cpus=tuple(allowed_cpus),
        allowed_mem_node_ids=tuple(allowed_mems),
        cpu_model=_read_cpu_model(root),
    )


def _list_nodes(node_root: Path) -> list[int]:
    if not node_root.is_dir():
        return []
    present = sorted(int(m.group(1)) for p in node_root.iterdir()
                     if (m := _NODE_DIR.match(p.name)) and p.is_dir())
    online = _read_optional_list(node_root / "online")
    if online is not None:
        missing = set(online) - set(present)
        if missing:
            raise TopologyError(f"lists online nodes {sorted(missing)} that have no directory",
                                path=node_root / "online")
        present = [n for n in present if n in online]
    return present


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise TopologyError("file missing", path=path) from None
    except OSError as exc:
        raise TopologyError(f"cannot read: {exc.strerror}", path=path) from None


def _read_list(path: Path) -> tuple[int, ...]:
    try:
        return parse_cpulist(_read_text(path))
    except ValueError as exc:
        raise TopologyError(str(exc), path=path) from None


def _read_optional_list(path: Path) -> tuple[int, ...] | None:
    return _read_list(path) if path.exists() else None


def _read_ints(path: Path) -> list[int]:
    text = _read_text(path)
    try:
        values = [int(t) for t in text.split()]
    except ValueError:
        raise TopologyError(f"expected integers, got {text.strip()[:60]!r}", path=path) from None
    if not values:
        raise TopologyError("file is empty", path=path)
    return values


def _read_node_meminfo(path: Path, nid: int) -> tuple[int, int, int]:
    """``(total, free, available)`` bytes of a node; available = free + reclaimable."""
    fields: dict[str, int] = {}
    for line in _read_text(path).splitlines():
        m = _MEMINFO.match(line.strip())
        if m and int(m.group(1)) == nid:
            fields[m.group(2)] = int(m.group(3)) * 1024
    if "MemTotal" not in fields or "MemFree" not in fields:
        raise TopologyError(f"no MemTotal/MemFree line for node {nid}", path=path)
    total = fields["MemTotal"]
    free = min(fields["MemFree"], total)
    available = min(free + sum(fields.get(k, 0) for k in _RECLAIMABLE), total)
    return total, free, available


def _read_proc_meminfo(root: Path) -> dict[str, int]:
    """``/proc/meminfo`` as ``{field: bytes}`` (empty when absent, as in a fake tree)."""
    path = root / "proc/meminfo"
    out: dict[str, int] = {}
    if not path.exists():
        return out
    for line in _read_text(path).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def _scale_available(nodes: list[Node], system_available: int | None) -> list[Node]:
    """Scale the nodes' available estimates down to the system's MemAvailable when lower.

    The kernel's figure also subtracts the watermarks and the half of the page cache it expects
    to be unable to reclaim; the per-node files lack those terms, so the system figure is the
    bound and each node keeps its share.
    """
    estimate = sum(n.mem_available_bytes or 0 for n in nodes)
    if system_available is None or estimate <= system_available or estimate == 0:
        return nodes
    f = system_available / estimate
    return [n.model_copy(update={"mem_available_bytes": int((n.mem_available_bytes or 0) * f)})
            for n in nodes]


def _read_hmat(node_dir: Path) -> MemoryAttributes | None:
    init = node_dir / "access0" / "initiators"
    if not init.is_dir():
        return None

    def value(name: str) -> int | None:
        p = init / name
        return int(p.read_text().strip()) if p.exists() else None

    initiators = sorted(int(m.group(1)) for p in init.iterdir() if (m := _NODE_DIR.match(p.name)))
    return MemoryAttributes(
        initiator_node_ids=tuple(initiators),
        read_bw_mbps=value("read_bandwidth"),
        read_lat_ns=value("read_latency"),
        write_bw_mbps=value("write_bandwidth"),
        write_lat_ns=value("write_latency"),
    )


def _read_cpu_details(root: Path, nodes: list[Node]) -> list[CpuInfo]:
    cpu_root = root / "sys/devices/system/cpu"
    out = []
    for n in nodes:
        for c in n.cpus:
            topo = cpu_root / f"cpu{c}" / "topology"
            if not topo.is_dir():
                # Without per-CPU topology (some containers) SMT and sockets are simply unknown.
                out.append(CpuInfo(cpu_id=c, node_id=n.node_id))
                continue
            core = _read_ints(topo / "core_id")[0] if (topo / "core_id").exists() else None
            pkg = (_read_ints(topo / "physical_package_id")[0]
                   if (topo / "physical_package_id").exists() else None)
            sib_path = topo / "thread_siblings_list"
            sib = _read_list(sib_path) if sib_path.exists() else (c,)
            out.append(CpuInfo(cpu_id=c, node_id=n.node_id, core_id=core,
                               socket_id=None if pkg is None or pkg < 0 else pkg,
                               thread_siblings=sib))
    return sorted(out, key=lambda c: c.cpu_id)


def _node_sockets(nodes: list[Node], cpus: list[CpuInfo]) -> dict[int, int]:
    """A CPU node's socket is its CPUs' package when they agree; CPU-less nodes stay unknown."""
    out: dict[int, int] = {}
    for n in nodes:
        pkgs = {c.socket_id for c in cpus if c.node_id == n.node_id}
        if len(pkgs) == 1 and None not in pkgs:
            out[n.node_id] = pkgs.pop()  # type: ignore[assignment]
    return out


def _read_status_list(status: Path, key: str) -> tuple[int, ...] | None:
    if not status.exists():
        return None
    for line in _read_text(status).splitlines():
        if line.startswith(key + ":"):
            try:
                return parse_cpulist(line.split(":", 1)[1])
            except ValueError as exc:
                raise TopologyError(f"{key}: {exc}", path=status) from None
    return None


def _read_cpuset(root: Path, all_cpus: list[int], node_ids: list[int]
                 ) -> tuple[list[int], list[int]]:
    status = root / "proc/self/status"
    cpus = _read_status_list(status, "Cpus_allowed_list")
    mems = _read_status_list(status, "Mems_allowed_list")
    # The kernel lists *possible* CPUs/nodes here; keep the ones that exist and are online.
    allowed_cpus = [c for c in all_cpus if cpus is None or c in cpus]
    allowed_mems = [n for n in node_ids if mems is None or n in mems]
    return allowed_cpus, allowed_mems


def _read_cpu_model(root: Path) -> str | None:
    p = root / "proc/cpuinfo"
    if not p.exists():
        return None
    for line in p.read_text(errors="replace").splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip() or None
    return None


def _fallback(root: Path) -> Topology:
    log.warning(FALLBACK_MESSAGE)
    online = root / "sys/devices/system/cpu/online"
    if online.exists():
        cpus = _read_list(online)
    elif root == Path("/"):
        cpus = tuple(sorted(os.sched_getaffinity(0)))
    else:
        raise TopologyError("no NUMA node directory and no CPU list", path=online)
    kv = _read_proc_meminfo(root)
    total, free, available = kv.get("MemTotal"), kv.get("MemFree"), kv.get("MemAvailable")
    allowed_cpus, _ = _read_cpuset(root, list(cpus), [0])
    return build_topology(
        str(root),
        source=f"sysfs-fallback:{root}",
        nodes=(Node(node_id=0, cpus=cpus, mem_total_bytes=total, mem_free_bytes=free,
                    mem_available_bytes=available),),
        distances=((SLIT_LOCAL,),),
        allowed_cpus=tuple(allowed_cpus),
        allowed_mem_node_ids=(0,),
        cpu_model=_read_cpu_model(root),
    )
