"""Read a :class:`Topology` from the text of ``numactl -H`` or ``lscpu``.

Server owners paste these into bug reports, chat and job logs, so they are the most common way
to plan for a machine you are not logged into, and they rarely arrive bare. The formats are not
specified anywhere; the readers accept what numactl 2.0.x and util-linux print (plain and
``--cpu-compress`` CPU fields, empty ``cpus:`` fields for CPU-less nodes, ``size: 0 MB`` for
memoryless ones, ``<not available>`` sizes, ``No distance information available.``, the sectioned
and indented ``lscpu`` of util-linux 2.37+) with anything around the block: shell prompts, the
command line, comments, blank lines, CRLF line ends, indentation, trailing spaces, text after it.
They find the block and reject one that is truncated or inconsistent with a message that says
what is missing.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from numaplan._io import read_bytes
from numaplan.errors import TopologyError
from numaplan.topology.cpulist import parse_cpulist, parse_cpumask, parse_numactl_cpus
from numaplan.topology.model import (
    SLIT_LOCAL,
    Node,
    Topology,
    assumed_distances,
    build_topology,
)

log = logging.getLogger(__name__)

_AVAILABLE_START = re.compile(r"^available:")
_AVAILABLE = re.compile(r"^available:\s*(\d+)\s+nodes?\s*\(([^)]*)\)$")
_NODE_LINE = re.compile(r"^node\s+(\d+)\s+(cpus|size|free):\s*(.*)$")
_SIZE = re.compile(r"^(\d+)\s*(MB|kB|KB|GB)?$")
_NOT_AVAILABLE = "<not available>"
_NO_DISTANCES = "No distance information available."
_DIST_ROW = re.compile(r"^(\d+):\s*(.*)$")
_UNITS = {"kB": 1024, "KB": 1024, "MB": 1 << 20, "GB": 1 << 30, None: 1 << 20}


def _numbered(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line without surrounding whitespace) of the non-blank lines.

    ``splitlines`` also splits at a lone ``\\r`` (CRLF and old Mac line ends); stripping drops
    the indentation of text quoted in documents and the trailing spaces numactl itself prints.
    """
    out = []
    for no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line:
            out.append((no, line))
    return out


def _show(line: str) -> str:
    return repr(line[:60] + ("..." if len(line) > 60 else ""))


def parse_numactl(text: str, *, source: str = "numactl") -> Topology:
    """Parse the output of ``numactl -H`` (``--hardware``), wherever it sits in the text.

    The block starts at the ``available: N nodes (...)`` line and ends after the distance row of
    the last node; lines before and after it (prompts, the command, other output) are ignored.

    Parameters
    ----------
    text
        The command's output, as saved or pasted.
    source
        Name used in error messages and recorded as the topology's source (usually the file).

    Returns
    -------
    Topology
        Nodes, CPUs, memory (``size``/``free``, MB; unknown where numactl says
        ``<not available>``) and SLIT distances (assumed 10/20 and marked so when numactl says
        ``No distance information available.``). Per-CPU SMT and socket details are unknown in
        this format. The whole machine is taken as allowed.

    Raises
    ------
    TopologyError
        On empty or foreign text, two blocks, or a block that is truncated (a node's line, the
        distance table or one of its rows missing, a row cut short) or inconsistent.

    Examples
    --------
    >>> t = parse_numactl('''user@host:~$ LANG=C numactl --hardware
    ... available: 1 nodes (0)
    ... node 0 cpus: 0-3 (4)
    ... node 0 size: 1024 MB
    ... node 0 free: 512 MB
    ... node distances:
    ... node   0
    ...   0:  10
    ... user@host:~$ ''')
    >>> t.node(0).cpus
    (0, 1, 2, 3)
    """
    lines = _numbered(text)
    if not lines:
        raise TopologyError("empty numactl -H output", path=source)
    if any("No NUMA available" in ln for _, ln in lines):
        raise TopologyError("numactl reports 'No NUMA available on this system'", path=source)
    starts = [k for k, (_, ln) in enumerate(lines) if _AVAILABLE_START.match(ln)]
    if not starts:
        raise TopologyError("not numactl -H output: no 'available: N nodes (...)' line",
                            path=source)
    if len(starts) > 1:
        raise TopologyError(f"{len(starts)} numactl -H blocks (lines {lines[starts[0]][0]} and "
                            f"{lines[starts[1]][0]}); keep one", path=source)
    k = starts[0]
    no, first = lines[k]
    m = _AVAILABLE.match(first)
    if not m:
        raise TopologyError(f"line {no}: {_show(first)} is not 'available: N nodes (...)'",
                            path=source)
    try:
        node_ids = parse_cpulist(m.group(2))
    except ValueError as exc:
        raise TopologyError(f"line {no}: bad node list in 'available:' line: {exc}",
                            path=source) from None
    if len(node_ids) != int(m.group(1)):
        raise TopologyError(f"'available:' says {m.group(1)} nodes but lists {len(node_ids)}",
                            path=source)
    fields: dict[int, dict[str, str]] = {n: {} for n in node_ids}
    k += 1
    while k < len(lines) and (nm := _NODE_LINE.match(lines[k][1])):
        nid, key, value = int(nm.group(1)), nm.group(2), nm.group(3)
        if nid not in fields:
            raise TopologyError(f"line {lines[k][0]}: node {nid} is not in the 'available:' list",
                                path=source)
        if key in fields[nid]:
            raise TopologyError(f"line {lines[k][0]}: node {nid} has two '{key}:' lines",
                                path=source)
        fields[nid][key] = value
        k += 1
    where = _where(lines, k)
    nodes = []
    for nid in node_ids:
        missing = [key for key in ("cpus", "size", "free") if key not in fields[nid]]
        if missing:
            raise TopologyError(f"truncated: node {nid} has no '{missing[0]}:' line{where}",
                                path=source)
        try:
            cpus = parse_numactl_cpus(fields[nid]["cpus"])
        except ValueError as exc:
            raise TopologyError(f"node {nid} cpus: {exc}", path=source) from None
        total = _size(fields[nid]["size"], source, nid, "size")
        free = _size(fields[nid]["free"], source, nid, "free")
        if total is not None and free is not None:
            free = min(free, total)
        nodes.append(Node(node_id=nid, cpus=cpus, mem_total_bytes=total, mem_free_bytes=free))
    assumed = k < len(lines) and lines[k][1] == _NO_DISTANCES
    if assumed:
        distances = assumed_distances(node_ids)
    elif k < len(lines) and lines[k][1] == "node distances:":
        distances = _parse_distances(lines, k, node_ids, source)
    else:
        raise TopologyError(f"truncated: no 'node distances:' table{where}", path=source)
    all_cpus = tuple(sorted(c for n in nodes for c in n.cpus))
    return build_topology(
        source, source=f"numactl:{source}", nodes=tuple(nodes), distances=distances,
        distances_assumed=assumed, allowed_cpus=all_cpus, allowed_mem_node_ids=tuple(node_ids),
    )


def _where(lines: list[tuple[int, str]], k: int) -> str:
    """Where a block stopped, for a 'truncated' message."""
    if k >= len(lines):
        return " (the text ends there)"
    return f" (the block stops at line {lines[k][0]}: {_show(lines[k][1])})"


def _size(value: str, source: str, nid: int, key: str) -> int | None:
    if value == _NOT_AVAILABLE:
        return None
    m = _SIZE.match(value)
    if not m:
        raise TopologyError(f"node {nid} {key}: {_show(value)} is not a size in MB", path=source)
    return int(m.group(1)) * _UNITS[m.group(2)]


def _parse_distances(lines: list[tuple[int, str]], k: int, node_ids: tuple[int, ...],
                     source: str) -> tuple[tuple[int, ...], ...]:
    """The table after the ``node distances:`` line at ``lines[k]``."""
    k += 1
    header = lines[k][1].split() if k < len(lines) else []
    if not header or header[0] != "node":
        raise TopologyError(f"truncated: 'node distances:' has no 'node ...' header line"
                            f"{_where(lines, k)}", path=source)
    try:
        cols = [int(t) for t in header[1:]]
    except ValueError:
        raise TopologyError(f"line {lines[k][0]}: bad distance header {_show(lines[k][1])}",
                            path=source) from None
    if tuple(cols) != node_ids:
        raise TopologyError(f"line {lines[k][0]}: distance header lists nodes {cols}, expected "
                            f"{list(node_ids)}", path=source)
    rows: dict[int, tuple[int, ...]] = {}
    k += 1
    while k < len(lines) and len(rows) < len(node_ids) and (m := _DIST_ROW.match(lines[k][1])):
        no, nid = lines[k][0], int(m.group(1))
        try:
            row = tuple(int(t) for t in m.group(2).split())
        except ValueError:
            raise TopologyError(f"line {no}: distance row of node {nid} is not numeric",
                                path=source) from None
        if len(row) != len(node_ids):
            raise TopologyError(f"line {no}: distance row of node {nid} has {len(row)} entries, "
                                f"expected {len(node_ids)} (cut short, or matrix not square)",
                                path=source)
        if nid in rows or nid not in node_ids:
            raise TopologyError(f"line {no}: unexpected distance row for node {nid}", path=source)
        # Linux keeps 10 on the diagonal whatever the firmware says (x86 numa_set_distance and
        # the generic arch_numa refuse anything else), so another value is a cut or edited row.
        local = row[node_ids.index(nid)]
        if local != SLIT_LOCAL:
            raise TopologyError(f"line {no}: distance of node {nid} to itself is {local}, Linux "
                                f"reports {SLIT_LOCAL} (row cut short?)", path=source)
        rows[nid] = row
        k += 1
    missing = [n for n in node_ids if n not in rows]
    if missing:
        raise TopologyError(f"truncated: distance row of node {missing[0]} is missing"
                            f"{_where(lines, k)}", path=source)
    return tuple(rows[n] for n in node_ids)


_LSCPU_NODE = re.compile(r"^NUMA node(\d+) CPU\(s\):\s*(.*)$")


def parse_lscpu(text: str, *, source: str = "lscpu") -> Topology:
    """Parse the ``NUMA`` lines of plain ``lscpu`` output, wherever they sit in the text.

    ``lscpu`` names each node's CPUs but neither memory nor distances: memory sizes are left
    unknown and distances are *assumed* (10 local, 20 remote; ``distances_assumed`` is set so the
    cost model and the plan say so). CPU lists may be ranges or, from ``lscpu -x``, hex masks.
    A kernel without NUMA makes ``lscpu`` print no NUMA lines at all; such output is read as one
    node holding the ``On-line CPU(s) list``, but only when the text goes on past the place where
    the NUMA lines would be (a ``Vulnerability`` line, or ``Flags`` after the caches), so that a
    paste cut short is not mistaken for a one-node machine.

    Raises
    ------
    TopologyError
        When there are no ``NUMA`` lines (foreign, localized or truncated text), two blocks, or
        the per-node lines do not match the ``NUMA node(s):`` count.
    """
    count: int | None = None
    cpus: dict[int, tuple[int, ...]] = {}
    model = online = None
    keys: list[str] = []
    for no, line in _numbered(text):
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        keys.append(key)
        if key == "NUMA node(s)":
            if count is not None:
                raise TopologyError(f"line {no}: a second 'NUMA node(s):' line (two lscpu "
                                    f"blocks?); keep one", path=source)
            try:
                count = int(value)
            except ValueError:
                raise TopologyError(f"line {no}: bad 'NUMA node(s):' value {_show(value)}",
                                    path=source) from None
        elif key == "Model name" and model is None:
            model = value or None
        elif key == "On-line CPU(s) list" and online is None:
            online = (no, value)
        elif m := _LSCPU_NODE.match(line):
            nid = int(m.group(1))
            if nid in cpus:
                raise TopologyError(f"line {no}: a second 'NUMA node{nid} CPU(s):' line (two "
                                    f"lscpu blocks?); keep one", path=source)
            cpus[nid] = _lscpu_cpus(m.group(2).strip(), source, f"line {no}: NUMA node{nid}")
    if count is None:
        if cpus:
            raise TopologyError("'NUMA nodeN CPU(s):' lines without a 'NUMA node(s):' line "
                                "(truncated?)", path=source)
        if online is not None and _past_numa_lines(keys):
            log.warning("%s: lscpu shows no NUMA lines (a kernel without NUMA): one node", source)
            count, cpus = 1, {0: _lscpu_cpus(online[1], source,
                                             f"line {online[0]}: On-line CPU(s) list")}
        elif any("NUMA" in k for k in keys):
            raise TopologyError("no 'NUMA node(s):' line, but 'NUMA' appears: localized lscpu? "
                                "save the output of `LANG=C lscpu`", path=source)
        else:
            raise TopologyError("no 'NUMA node(s):' line: not lscpu output, truncated, or NUMA "
                                "not shown", path=source)
    if len(cpus) != count:
        raise TopologyError(f"'NUMA node(s): {count}' but {len(cpus)} 'NUMA nodeN CPU(s):' "
                            f"lines (truncated?)", path=source)
    ids = sorted(cpus)
    nodes = tuple(Node(node_id=n, cpus=cpus[n]) for n in ids)
    return build_topology(
        source, source=f"lscpu:{source}", nodes=nodes, distances=assumed_distances(ids),
        distances_assumed=True, allowed_cpus=tuple(sorted(c for n in nodes for c in n.cpus)),
        allowed_mem_node_ids=tuple(ids), cpu_model=model,
    )


def _lscpu_cpus(value: str, source: str, what: str) -> tuple[int, ...]:
    try:
        if value.lower().startswith("0x"):
            return parse_cpumask(value[2:])
        return parse_cpulist(value)
    except ValueError as exc:
        raise TopologyError(f"{what}: {exc}", path=source) from None


def _past_numa_lines(keys: list[str]) -> bool:
    """Whether lscpu's output reaches beyond where it prints NUMA lines.

    util-linux 2.34+ ends with the ``Vulnerability`` lines; older versions print the per-node
    lines after the caches and end with ``Flags``.
    """
    if any(k.startswith("Vulnerabilit") for k in keys):
        return True
    caches = [i for i, k in enumerate(keys) if k.endswith(" cache")]
    return bool(caches) and any(k == "Flags" and i > caches[-1] for i, k in enumerate(keys))


def read_numactl_file(path: str | Path) -> Topology:
    """:func:`parse_numactl` on a file."""
    return parse_numactl(_read(path), source=str(path))


def read_lscpu_file(path: str | Path) -> Topology:
    """:func:`parse_lscpu` on a file."""
    return parse_lscpu(_read(path), source=str(path))


def _read(path: str | Path) -> str:
    return read_bytes(path, error=TopologyError, expected="a text file").decode(
        errors="replace")
