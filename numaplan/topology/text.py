"""Read a :class:`Topology` from the text of ``numactl -H`` or ``lscpu``.

Server owners paste these into bug reports and job logs, so they are the most common way to plan
for a machine you are not logged into. The formats are not specified anywhere; the parsers accept
what numactl 2.0.x and util-linux print (plain and ``--cpu-compress`` CPU fields, empty
``cpus:`` fields for CPU-less nodes, trailing spaces, ``$ numactl -H`` prompts and ``#``
comments) and reject truncated or inconsistent text with a message that says what is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

from numaplan.errors import TopologyError
from numaplan.topology.cpulist import parse_cpulist, parse_numactl_cpus
from numaplan.topology.model import SLIT_LOCAL, Node, Topology, build_topology

_AVAILABLE = re.compile(r"^available:\s*(\d+)\s+nodes?\s*\(([^)]*)\)\s*$")
_NODE_LINE = re.compile(r"^node\s+(\d+)\s+(cpus|size|free):\s*(.*?)\s*$")
_SIZE = re.compile(r"^(\d+)\s*(MB|kB|KB|GB)?$")
_DIST_ROW = re.compile(r"^(\d+):\s*(.*?)\s*$")
_UNITS = {"kB": 1024, "KB": 1024, "MB": 1 << 20, "GB": 1 << 30, None: 1 << 20}


def _lines(text: str) -> list[str]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("$"):
            continue
        out.append(line)
    return out


def parse_numactl(text: str, *, source: str = "numactl") -> Topology:
    """Parse the output of ``numactl -H`` (``--hardware``).

    Parameters
    ----------
    text
        The command's output.
    source
        Name used in error messages and recorded as the topology's source (usually the file).

    Returns
    -------
    Topology
        Nodes, CPUs, memory (``size``/``free``, MB) and SLIT distances. Per-CPU SMT and socket
        details are unknown in this format. The whole machine is taken as allowed.

    Raises
    ------
    TopologyError
        On empty, garbage, truncated or inconsistent text.
    """
    lines = _lines(text)
    if not lines:
        raise TopologyError("empty numactl -H output", path=source)
    if any("No NUMA available" in ln for ln in lines):
        raise TopologyError("numactl reports 'No NUMA available on this system'", path=source)
    m = _AVAILABLE.match(lines[0])
    if not m:
        raise TopologyError(f"not numactl -H output: first line is {lines[0][:60]!r}, expected "
                            f"'available: N nodes (...)'", path=source)
    try:
        node_ids = parse_cpulist(m.group(2))
    except ValueError as exc:
        raise TopologyError(f"bad node list in 'available:' line: {exc}", path=source) from None
    if len(node_ids) != int(m.group(1)):
        raise TopologyError(f"'available:' says {m.group(1)} nodes but lists {len(node_ids)}",
                            path=source)
    fields: dict[int, dict[str, str]] = {n: {} for n in node_ids}
    i = 1
    while i < len(lines) and not lines[i].startswith("node distances"):
        nm = _NODE_LINE.match(lines[i])
        if not nm:
            raise TopologyError(f"unexpected line {i + 1}: {lines[i][:60]!r}", path=source)
        nid, key, value = int(nm.group(1)), nm.group(2), nm.group(3)
        if nid not in fields:
            raise TopologyError(f"node {nid} is not in the 'available:' list", path=source)
        if key in fields[nid]:
            raise TopologyError(f"node {nid} has two '{key}:' lines", path=source)
        fields[nid][key] = value
        i += 1
    nodes = []
    for nid in node_ids:
        missing = [k for k in ("cpus", "size", "free") if k not in fields[nid]]
        if missing:
            raise TopologyError(f"truncated: node {nid} has no '{missing[0]}:' line", path=source)
        try:
            cpus = parse_numactl_cpus(fields[nid]["cpus"])
        except ValueError as exc:
            raise TopologyError(f"node {nid} cpus: {exc}", path=source) from None
        total = _size(fields[nid]["size"], source, nid, "size")
        free = _size(fields[nid]["free"], source, nid, "free")
        nodes.append(Node(node_id=nid, cpus=cpus, mem_total_bytes=total,
                          mem_free_bytes=min(free, total)))
    distances = _parse_distances(lines[i:], node_ids, source)
    all_cpus = tuple(sorted(c for n in nodes for c in n.cpus))
    return build_topology(
        source, source=f"numactl:{source}", nodes=tuple(nodes), distances=distances,
        allowed_cpus=all_cpus, allowed_mem_node_ids=tuple(node_ids),
    )


def _size(value: str, source: str, nid: int, key: str) -> int:
    m = _SIZE.match(value)
    if not m:
        raise TopologyError(f"node {nid} {key}: {value!r} is not a size in MB", path=source)
    return int(m.group(1)) * _UNITS[m.group(2)]


def _parse_distances(lines: list[str], node_ids: tuple[int, ...], source: str
                     ) -> tuple[tuple[int, ...], ...]:
    if not lines:
        raise TopologyError("truncated: no 'node distances:' table", path=source)
    if len(lines) < 2:
        raise TopologyError("truncated: 'node distances:' has no header line", path=source)
    header = lines[1].split()
    if not header or header[0] != "node":
        raise TopologyError(f"distance header {lines[1][:60]!r} does not start with 'node'",
                            path=source)
    try:
        cols = [int(t) for t in header[1:]]
    except ValueError:
        raise TopologyError(f"bad distance header {lines[1][:60]!r}", path=source) from None
    if tuple(cols) != node_ids:
        raise TopologyError(f"distance header lists nodes {cols}, expected {list(node_ids)}",
                            path=source)
    rows: dict[int, tuple[int, ...]] = {}
    for line in lines[2:]:
        m = _DIST_ROW.match(line)
        if not m:
            raise TopologyError(f"unexpected line in distance table: {line[:60]!r}", path=source)
        nid = int(m.group(1))
        try:
            row = tuple(int(t) for t in m.group(2).split())
        except ValueError:
            raise TopologyError(f"distance row of node {nid} is not numeric", path=source) \
                from None
        if len(row) != len(node_ids):
            raise TopologyError(f"distance row of node {nid} has {len(row)} entries, expected "
                                f"{len(node_ids)} (matrix not square)", path=source)
        if nid in rows or nid not in node_ids:
            raise TopologyError(f"unexpected distance row for node {nid}", path=source)
        rows[nid] = row
    missing = [n for n in node_ids if n not in rows]
    if missing:
        raise TopologyError(f"truncated: distance row of node {missing[0]} is missing",
                            path=source)
    return tuple(rows[n] for n in node_ids)


_LSCPU_NODE = re.compile(r"^NUMA node(\d+) CPU\(s\):\s*(.*)$")


def parse_lscpu(text: str, *, source: str = "lscpu") -> Topology:
    """Parse the ``NUMA`` lines of plain ``lscpu`` output.

    ``lscpu`` names each node's CPUs but neither memory nor distances: memory sizes are left
    unknown and distances are *assumed* (10 local, 20 remote; ``distances_assumed`` is set so the
    cost model and the plan say so).

    Raises
    ------
    TopologyError
        When there is no ``NUMA node(s):`` line, or the per-node lines do not match its count.
    """
    count: int | None = None
    cpus: dict[int, tuple[int, ...]] = {}
    model = None
    for line in _lines(text):
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "NUMA node(s)":
            try:
                count = int(value)
            except ValueError:
                raise TopologyError(f"bad 'NUMA node(s):' value {value!r}", path=source) \
                    from None
        elif key == "Model name" and model is None:
            model = value or None
        elif m := _LSCPU_NODE.match(line):
            try:
                cpus[int(m.group(1))] = parse_cpulist(m.group(2))
            except ValueError as exc:
                raise TopologyError(f"NUMA node{m.group(1)}: {exc}", path=source) from None
    if count is None:
        raise TopologyError("no 'NUMA node(s):' line: not lscpu output, or NUMA not shown",
                            path=source)
    if len(cpus) != count:
        raise TopologyError(f"'NUMA node(s): {count}' but {len(cpus)} 'NUMA nodeN CPU(s):' "
                            f"lines (truncated?)", path=source)
    ids = sorted(cpus)
    distances = tuple(tuple(SLIT_LOCAL if a == b else 2 * SLIT_LOCAL for b in ids) for a in ids)
    nodes = tuple(Node(node_id=n, cpus=cpus[n]) for n in ids)
    return build_topology(
        source, source=f"lscpu:{source}", nodes=nodes, distances=distances,
        distances_assumed=True, allowed_cpus=tuple(sorted(c for n in nodes for c in n.cpus)),
        allowed_mem_node_ids=tuple(ids), cpu_model=model,
    )


def read_numactl_file(path: str | Path) -> Topology:
    """:func:`parse_numactl` on a file."""
    return parse_numactl(_read(path), source=str(path))


def read_lscpu_file(path: str | Path) -> Topology:
    """:func:`parse_lscpu` on a file."""
    return parse_lscpu(_read(path), source=str(path))


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        raise TopologyError("file not found", path=path) from None
    except OSError as exc:
        raise TopologyError(f"cannot read: {exc.strerror}", path=path) from None
