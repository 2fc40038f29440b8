"""A cost model from Intel Memory Latency Checker output.

Many server owners already have ``mlc --bandwidth_matrix`` and ``mlc --latency_matrix`` output
(or a plain ``mlc`` run, which prints both). The matrix sections look like::

    Measuring Memory Bandwidths between nodes within system
    Bandwidths are in MB/sec (1 MB/sec = 1,000,000 Bytes/sec)
    ...
                    Numa node
    Numa node            0       1
           0        82542.2 76679.9
           1        76536.0 82986.5

Rows are the CPU nodes, columns every memory node (a CXL or HBM node without CPUs has a column
and no row). Bandwidth is MB/s of 1e6 bytes; latency is ns.
"""

from __future__ import annotations

import re
from pathlib import Path

from numaplan.cost.model import CostModel, build_cost_model
from numaplan.errors import CostModelError
from numaplan.topology import Topology

_HEADER = re.compile(r"^\s*Numa node((?:\s+\d+)+)\s*$")
# A value is a decimal number (MLC prints "82.1", "79670.3"), or "-" / "N/A" for no figure.
_ROW = re.compile(r"^\s*(\d+)((?:\s+(?:\d+(?:\.\d+)?|-|N/A))+)\s*$")


def parse_mlc_matrix(text: str, kind: str, *, source: str = "mlc") -> dict[tuple[int, int], float]:
    """Extract one matrix from MLC text.

    Parameters
    ----------
    text
        MLC output, possibly with other sections.
    kind
        ``"bandwidth"`` (the "Measuring Memory Bandwidths between nodes" section) or ``"latency"``
        (the "Measuring idle latencies" section).
    source
        Name for error messages.

    Returns
    -------
    dict
        ``{(reader, memory): value}`` in MB/s or ns.
    """
    marker = "Memory Bandwidths between nodes" if kind == "bandwidth" else "idle latencies"
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if marker in ln), None)
    if start is None:
        flag = "--bandwidth_matrix" if kind == "bandwidth" else "--latency_matrix"
        raise CostModelError(f"no '{marker}' section: not Intel MLC {flag} output", path=source)
    cols: list[int] | None = None
    out: dict[tuple[int, int], float] = {}
    for ln in lines[start + 1:]:
        if cols is None:
            m = _HEADER.match(ln)
            if m:
                cols = [int(t) for t in m.group(1).split()]
            continue
        m = _ROW.match(ln)
        if not m:
            if out:
                break
            if ln.strip():
                raise CostModelError(f"unexpected line in the {kind} matrix: {ln.strip()[:60]!r}",
                                     path=source)
            continue
        values = m.group(2).split()
        if len(values) != len(cols):
            raise CostModelError(f"{kind} row of node {m.group(1)} has {len(values)} values for "
                                 f"{len(cols)} columns", path=source)
        for c, v in zip(cols, values, strict=True):
            if v not in ("-", "N/A"):
                out[(int(m.group(1)), c)] = float(v)
    if cols is None:
        raise CostModelError(f"{kind} section has no 'Numa node' header row", path=source)
    if not out:
        raise CostModelError(f"{kind} matrix has no rows (truncated?)", path=source)
    return out


def cost_from_mlc(
    bandwidth_text: str,
    latency_text: str | None,
    topology: Topology,
    *,
    source: str = "mlc",
) -> CostModel:
    """Build a cost model from MLC output, on the nodes of ``topology``.

    Latency cells MLC did not report are derived from the SLIT ratio to the reader's local
    latency (marked in ``params``); bandwidth cells are never invented.

    Raises
    ------
    CostModelError
        When the text is not MLC output, is truncated, or names nodes the topology lacks.
    """
    bw = parse_mlc_matrix(bandwidth_text, "bandwidth", source=source)
    lat = (parse_mlc_matrix(latency_text, "latency", source=source)
           if latency_text is not None and "idle latencies" in latency_text else {})
    ids = topology.node_ids
    unknown = {n for pair in list(bw) + list(lat) for n in pair} - set(ids)
    if unknown:
        raise CostModelError(f"MLC output names nodes {sorted(unknown)} that the topology "
                             f"(nodes {list(ids)}) does not have", path=source)
    derived_lat = False
    bw_m, lat_m = [], []
    for i, r in enumerate(ids):
        brow: list[float | None] = []
        lrow: list[float | None] = []
        local = lat.get((r, r))
        for k, c in enumerate(ids):
            v = bw.get((r, c))
            brow.append(None if v is None else v / 1000.0)
            lv = lat.get((r, c))
            if lv is None and v is not None and local is not None:
                lv = local * topology.distances[i][k] / topology.distances[i][i]
                derived_lat = True
            lrow.append(lv)
        bw_m.append(tuple(brow))
        lat_m.append(tuple(lrow))
    return build_cost_model(
        source, node_ids=ids, read_bw_gbps=tuple(bw_m), lat_ns=tuple(lat_m), method="intel-mlc",
        params={"latency_derived_from_slit": derived_lat or not lat, "file": source},
        topology_fingerprint=topology.fingerprint(),
    )


def read_mlc_files(bandwidth_path: str | Path, latency_path: str | Path | None,
                   topology: Topology) -> CostModel:
    """:func:`cost_from_mlc` on files (one file holding a full ``mlc`` run may serve as both)."""
    def read(p: str | Path) -> str:
        try:
            return Path(p).read_text(errors="replace")
        except OSError as exc:
            raise CostModelError(f"cannot read: {exc.strerror}", path=p) from None
    bw_text = read(bandwidth_path)
    lat_text = read(latency_path) if latency_path is not None else bw_text
    return cost_from_mlc(bw_text, lat_text, topology, source=str(bandwidth_path))
