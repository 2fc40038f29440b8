"""A cost model from memory specifications, for machines nobody here can measure.

Each memory node's local read bandwidth is its DIMM channels' theoretical peak times an
efficiency factor:

.. math::

    bw_j = channels_j \\cdot MT/s_j \\cdot 8 \\text{ bytes} \\cdot efficiency_j

(a DDR channel moves 8 bytes per transfer). The efficiency is what sustained streaming reads
reach of that peak; :data:`DEFAULT_EFFICIENCY` unless given. Remote bandwidth and all latencies
follow SLIT distances and ``numa_inter_node_penalty`` exactly as :mod:`numaplan.cost.slit`
derives them, only the local figures differ. Such a model has no compute term: predictions
built on it are labelled nominal and count memory reads and collectives only.

The text form (``numaplan compile --memory-spec``) is one or more ``;``-separated entries
``[NODES:]CHANNELSxMTS[@EFFICIENCY]``: ``8x4800`` gives every memory node 8 channels of
DDR5-4800 at the default efficiency; ``0-2:4x8800@0.8;3-5:4x8800@0.7`` names nodes (a node list
as ``numactl`` writes CPU lists). A later entry overrides an earlier one for the nodes it names.
"""

from __future__ import annotations

import re

from pydantic import Field

from numaplan._base import Frozen
from numaplan.cost.model import CostModel, build_cost_model
from numaplan.cost.slit import DEFAULT_PENALTY, cost_from_slit
from numaplan.errors import CostModelError
from numaplan.topology import Topology, parse_cpulist

#: Share of the theoretical peak that sustained reads reach when no efficiency is given: STREAM-
#: class reads on server DDR4/DDR5 sockets land at roughly 0.7-0.9 of channels x MT/s x 8.
DEFAULT_EFFICIENCY = 0.8

_ENTRY = re.compile(r"^(?:(?P<nodes>[0-9,\- ]+):)?\s*(?P<ch>\d+)\s*[xX]\s*(?P<mts>\d+)"
                    r"(?:\s*@\s*(?P<eff>[0-9.]+))?$")


class MemorySpec(Frozen):
    """One memory node's DIMM figures.

    Attributes
    ----------
    channels
        DDR channels the node's memory controller drives.
    mts
        Transfers per second of each channel in millions (the ``4800`` of DDR5-4800).
    efficiency
        Share of the theoretical peak sustained reads reach (0..1].
    """

    channels: int = Field(ge=1)
    mts: int = Field(ge=1)
    efficiency: float = Field(default=DEFAULT_EFFICIENCY, gt=0, le=1)

    @property
    def bw_gbps(self) -> float:
        """Sustained local read bandwidth in GB/s (1e9 bytes per second)."""
        return self.channels * self.mts * 8 * self.efficiency / 1e3


def parse_memory_spec(text: str, node_ids: tuple[int, ...]) -> dict[int, MemorySpec]:
    """Read the ``--memory-spec`` text form (see the module docstring).

    Parameters
    ----------
    text
        E.g. ``"12x6400"`` or ``"0-2:4x8800@0.8;3-5:4x8800"``.
    node_ids
        The memory nodes an entry without nodes applies to.

    Returns
    -------
    dict
        Node id -> its figures.

    Raises
    ------
    CostModelError
        For an entry that does not parse or a figure out of range.

    Examples
    --------
    >>> round(parse_memory_spec("12x6400@0.8", (0, 1))[1].bw_gbps, 2)
    491.52
    """
    out: dict[int, MemorySpec] = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        m = _ENTRY.match(part)
        if m is None:
            raise CostModelError(f"memory spec entry {part!r}: expected "
                                 "[NODES:]CHANNELSxMTS[@EFFICIENCY], e.g. 0-1:8x4800@0.8")
        try:
            nodes = parse_cpulist(m["nodes"]) if m["nodes"] else node_ids
        except ValueError as exc:
            raise CostModelError(f"memory spec entry {part!r}: {exc}") from None
        eff = float(m["eff"]) if m["eff"] else DEFAULT_EFFICIENCY
        if not 0 < eff <= 1:
            raise CostModelError(f"memory spec entry {part!r}: efficiency must be in (0, 1], "
                                 f"got {eff:g}")
        if int(m["ch"]) < 1 or int(m["mts"]) < 1:
            raise CostModelError(f"memory spec entry {part!r}: channels and MT/s must be >= 1")
        spec = MemorySpec(channels=int(m["ch"]), mts=int(m["mts"]), efficiency=eff)
        for n in nodes:
            out[n] = spec
    return out


def cost_from_memory_spec(topology: Topology, spec: str | dict[int, MemorySpec], *,
                          penalty: float = DEFAULT_PENALTY) -> CostModel:
    """A cost model whose local bandwidths come from memory specifications.

    Parameters
    ----------
    topology
        The machine (a ``numactl -H`` dump or a synthetic one).
    spec
        The text form or node id -> :class:`MemorySpec`; every memory node needs one.
    penalty
        ``numa_inter_node_penalty`` for remote reads (as :func:`~numaplan.cost.cost_from_slit`).

    Returns
    -------
    CostModel
        ``method="memory-spec"``, ``params`` recording every node's figures.

    Raises
    ------
    CostModelError
        When a memory node has no figures or the text does not parse.
    """
    mem_nodes = tuple(n.node_id for n in topology.nodes if n.has_memory)
    specs = parse_memory_spec(spec, mem_nodes) if isinstance(spec, str) else dict(spec)
    missing = [n for n in mem_nodes if n not in specs]
    if missing:
        raise CostModelError(f"memory spec has no figures for memory node(s) {missing}")
    # The SLIT model at 1 GB/s local everywhere is the matrix of remote factors; scaling each
    # memory node's column by its own bandwidth gives bw_ij = bw_j x factor_ij.
    unit = cost_from_slit(topology, penalty=penalty, local_bw_gbps=1.0)
    ids = unit.node_ids
    bw = tuple(tuple(None if v is None else v * specs[ids[j]].bw_gbps
                     for j, v in enumerate(row)) for row in unit.read_bw_gbps)
    params: dict[str, str | float | int | bool] = {
        "numa_inter_node_penalty": penalty,
        "local_bw_source": "memory-spec",
        "distances_assumed": topology.distances_assumed,
    }
    for n in mem_nodes:
        s = specs[n]
        params[f"node{n}"] = (f"{s.channels} x {s.mts} MT/s x 8 B x {s.efficiency:g} = "
                              f"{s.bw_gbps:.1f} GB/s")
    return build_cost_model(None, node_ids=ids, read_bw_gbps=bw, lat_ns=unit.lat_ns,
                            method="memory-spec", params=params,
                            topology_fingerprint=topology.fingerprint())
