"""Build topologies that do not exist (yet): for tests and for what-if planning.

:func:`synthetic_topology` describes a machine as sockets x nodes per socket x cores, with SMT,
memory, distances and the awkward cases real servers have (memoryless CPU nodes, CPU-less memory
nodes, uneven core counts, interleaved CPU numbering, sparse node ids, a cpuset).
:func:`write_sysfs_tree` writes any topology as a fake ``/sys`` + ``/proc`` tree that
:func:`numaplan.topology.read_sysfs` reads back, so the sysfs reader is tested on trees of every
shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from numaplan.errors import TopologyError
from numaplan.topology.cpulist import format_cpulist
from numaplan.topology.model import SLIT_LOCAL, CpuInfo, Node, Topology, build_topology

GiB = 1 << 30


def synthetic_topology(
    *,
    sockets: int = 2,
    nodes_per_socket: int = 1,
    cores_per_node: int | Sequence[int] = 4,
    smt: int = 1,
    mem_per_node_bytes: int | Sequence[int] = 64 * GiB,
    free_fraction: float = 0.95,
    same_socket_distance: int = 12,
    cross_socket_distance: int = 21,
    memoryless_nodes: Sequence[int] = (),
    cpuless_nodes_per_socket: int = 0,
    cpuless_mem_bytes: int = 16 * GiB,
    cpuless_local_distance: int = 13,
    interleave_cpus: bool = False,
    node_id_stride: int = 1,
    allowed_cpus: Sequence[int] | None = None,
    allowed_mem_node_ids: Sequence[int] | None = None,
    cpu_model: str | None = "synthetic",
) -> Topology:
    """Describe a machine by its shape.

    Parameters
    ----------
    sockets, nodes_per_socket
        Machine shape: ``sockets * nodes_per_socket`` CPU nodes (SNC / NPS sub-nodes share a
        socket).
    cores_per_node
        Physical cores per CPU node, one value for all or one per node (uneven, e.g. Xeon 6 SNC3
        ``[43, 43, 42]``).
    smt
        Hardware threads per core. Sibling numbering follows Linux: the second thread of every
        core is numbered after all first threads.
    mem_per_node_bytes
        Memory per CPU node (one value or one per node); ``memoryless_nodes`` override it to 0.
    free_fraction
        Free memory as a fraction of the total.
    same_socket_distance, cross_socket_distance
        SLIT values between nodes of one socket and across sockets (local is 10).
    memoryless_nodes
        Indices (0-based, in CPU-node order) of CPU nodes without memory.
    cpuless_nodes_per_socket, cpuless_mem_bytes, cpuless_local_distance
        CPU-less memory nodes (HBM in flat mode, CXL) appended after the CPU nodes, their SLIT
        distance from their own socket's CPU nodes, and ``cross_socket_distance + 2`` from the
        other socket (the Xeon Max pattern: 13 local, 23 remote).
    interleave_cpus
        Number CPUs round-robin across nodes (cpu 0 on node 0, cpu 1 on node 1, ...), as some
        BIOSes do.
    node_id_stride
        Node ids are ``index * stride`` (stride > 1 gives sparse ids).
    allowed_cpus, allowed_mem_node_ids
        A cpuset restriction (default: everything).
    cpu_model
        Model name to record.

    Returns
    -------
    Topology

    Examples
    --------
    >>> t = synthetic_topology(sockets=2, nodes_per_socket=2, cores_per_node=4)
    >>> [n.node_id for n in t.nodes], t.distances[0]
    ([0, 1, 2, 3], (10, 12, 21, 21))
    """
    n_cpu_nodes = sockets * nodes_per_socket
    cores = _per_node(cores_per_node, n_cpu_nodes, "cores_per_node")
    mems = _per_node(mem_per_node_bytes, n_cpu_nodes, "mem_per_node_bytes")
    if smt < 1 or sockets < 1 or nodes_per_socket < 1 or node_id_stride < 1:
        raise TopologyError("sockets, nodes_per_socket, smt and node_id_stride must be >= 1")
    for i in memoryless_nodes:
        if not 0 <= i < n_cpu_nodes:
            raise TopologyError(f"memoryless node index {i} out of range")
        mems[i] = 0
    total_cores = sum(cores)
    # Logical CPU numbering: thread t of core c gets id t * total_cores + c (Linux style).
    core_ids_by_node: list[list[int]] = [[] for _ in range(n_cpu_nodes)]
    if interleave_cpus:
        node_cycle = [i for r in range(max(cores)) for i in range(n_cpu_nodes) if r < cores[i]]
        for core_global, node_idx in enumerate(node_cycle):
            core_ids_by_node[node_idx].append(core_global)
    else:
        start = 0
        for i, c in enumerate(cores):
            core_ids_by_node[i] = list(range(start, start + c))
            start += c
    node_socket = [i // nodes_per_socket for i in range(n_cpu_nodes)]
    n_all = n_cpu_nodes + sockets * cpuless_nodes_per_socket
    ids = [i * node_id_stride for i in range(n_all)]
    socket_of = node_socket + [s for s in range(sockets) for _ in range(cpuless_nodes_per_socket)]

    nodes: list[Node] = []
    cpus: list[CpuInfo] = []
    for i in range(n_all):
        if i < n_cpu_nodes:
            logical = sorted(t * total_cores + c for c in core_ids_by_node[i] for t in range(smt))
            mem = mems[i]
            for core in core_ids_by_node[i]:
                sib = tuple(t * total_cores + core for t in range(smt))
                for s in sib:
                    cpus.append(CpuInfo(cpu_id=s, node_id=ids[i], core_id=core,
                                        socket_id=socket_of[i], thread_siblings=sib))
        else:
            logical, mem = [], cpuless_mem_bytes
        nodes.append(Node(node_id=ids[i], cpus=tuple(logical), mem_total_bytes=mem,
                          mem_free_bytes=int(mem * free_fraction) // 1024 * 1024,
                          socket_id=socket_of[i]))
    dist = []
    for i in range(n_all):
        row = []
        for k in range(n_all):
            same = socket_of[i] == socket_of[k]
            if i == k:
                d = SLIT_LOCAL
            elif i >= n_cpu_nodes or k >= n_cpu_nodes:
                if i >= n_cpu_nodes and k >= n_cpu_nodes:
                    d = cross_socket_distance + 2
                else:
                    d = cpuless_local_distance if same else cross_socket_distance + 2
            else:
                d = same_socket_distance if same else cross_socket_distance
            row.append(d)
        dist.append(tuple(row))
    cpus.sort(key=lambda c: c.cpu_id)
    all_cpus = tuple(c.cpu_id for c in cpus)
    return build_topology(
        None,
        source="synthetic",
        nodes=tuple(nodes),
        distances=tuple(dist),
        cpus=tuple(cpus),
        allowed_cpus=tuple(sorted(allowed_cpus)) if allowed_cpus is not None else all_cpus,
        allowed_mem_node_ids=(tuple(sorted(allowed_mem_node_ids))
                              if allowed_mem_node_ids is not None else tuple(ids)),
        cpu_model=cpu_model,
    )


def _per_node(value: int | Sequence[int], n: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise TopologyError(f"{name} has {len(values)} entries for {n} CPU nodes")
    return values


def write_sysfs_tree(topology: Topology, root: str | Path) -> Path:
    """Write ``topology`` as a fake ``sys/`` + ``proc/`` tree below ``root``.

    The tree has exactly the files :func:`numaplan.topology.read_sysfs` reads, in the kernel's
    formats, plus a few irrelevant ones the reader must skip (``node0/vmstat``, ``power/``).

    Returns
    -------
    Path
        ``root``.
    """
    root = Path(root)
    node_root = root / "sys/devices/system/node"
    cpu_root = root / "sys/devices/system/cpu"
    node_root.mkdir(parents=True, exist_ok=True)
    ids = topology.node_ids
    (node_root / "online").write_text(format_cpulist(ids) + "\n")
    (node_root / "possible").write_text(format_cpulist(ids) + "\n")
    (node_root / "has_cpu").write_text(format_cpulist(n.node_id for n in topology.nodes
                                                      if n.cpus) + "\n")
    (node_root / "has_memory").write_text(format_cpulist(n.node_id for n in topology.nodes
                                                         if n.has_memory) + "\n")
    (node_root / "power").mkdir(exist_ok=True)
    for i, n in enumerate(topology.nodes):
        d = node_root / f"node{n.node_id}"
        d.mkdir(exist_ok=True)
        (d / "cpulist").write_text(format_cpulist(n.cpus) + "\n")
        total_kb = (n.mem_total_bytes or 0) // 1024
        free_kb = (n.mem_free_bytes or 0) // 1024
        (d / "meminfo").write_text(
            f"Node {n.node_id} MemTotal:       {total_kb:>8} kB\n"
            f"Node {n.node_id} MemFree:        {free_kb:>8} kB\n"
            f"Node {n.node_id} MemUsed:        {total_kb - free_kb:>8} kB\n"
            f"Node {n.node_id} HugePages_Total:     0\n"
        )
        (d / "distance").write_text(" ".join(str(x) for x in topology.distances[i]) + "\n")
        (d / "vmstat").write_text("nr_free_pages 0\n")
        if n.hmat is not None:
            init = d / "access0" / "initiators"
            init.mkdir(parents=True, exist_ok=True)
            for nid in n.hmat.initiator_node_ids:
                (init / f"node{nid}").mkdir(exist_ok=True)
            for name, v in (("read_bandwidth", n.hmat.read_bw_mbps),
                            ("read_latency", n.hmat.read_lat_ns),
                            ("write_bandwidth", n.hmat.write_bw_mbps),
                            ("write_latency", n.hmat.write_lat_ns)):
                if v is not None:
                    (init / name).write_text(f"{v}\n")
    all_cpus = sorted(c for n in topology.nodes for c in n.cpus)
    cpu_root.mkdir(parents=True, exist_ok=True)
    (cpu_root / "online").write_text(format_cpulist(all_cpus) + "\n")
    details = {c.cpu_id: c for c in topology.cpus}
    for c in all_cpus:
        t = cpu_root / f"cpu{c}" / "topology"
        t.mkdir(parents=True, exist_ok=True)
        info = details.get(c)
        if info is None:
            continue
        if info.core_id is not None:
            (t / "core_id").write_text(f"{info.core_id}\n")
        (t / "physical_package_id").write_text(
            f"{-1 if info.socket_id is None else info.socket_id}\n")
        (t / "thread_siblings_list").write_text(
            format_cpulist(info.thread_siblings or (c,)) + "\n")
    proc = root / "proc/self"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "status").write_text(
        "Name:\tpython3\nState:\tR (running)\n"
        f"Cpus_allowed_list:\t{format_cpulist(topology.allowed_cpus)}\n"
        f"Mems_allowed_list:\t{format_cpulist(topology.allowed_mem_node_ids)}\n"
        "voluntary_ctxt_switches:\t1\n"
    )
    if topology.cpu_model:
        (root / "proc/cpuinfo").write_text(
            "".join(f"processor\t: {c}\nmodel name\t: {topology.cpu_model}\n\n" for c in all_cpus))
    return root
