"""A cost model from SLIT distances when nothing was measured.

The definition of ``numa_inter_node_penalty`` (p, 0..1) lives here:

.. math::

    bw_{ij} = bw_j \\cdot \\left(\\frac{d_{ii}}{d_{ij}}\\right)^{4p}, \\qquad
    lat_{ij} = lat_0 \\cdot \\frac{d_{ij}}{d_{ii}}

where :math:`d` is the SLIT matrix (10 = local), :math:`bw_j` the local read bandwidth of memory
node j (its HMAT figure when firmware publishes one, else the nominal ``local_bw_gbps``) and
:math:`lat_0` the nominal local latency. SLIT values are relative *latencies* (ACPI), so latency
scales linearly with them; bandwidth falls faster than latency rises, by an unknown exponent,
which is what the penalty sets:

- p = 0: crossing nodes is free (bandwidth everywhere equals local);
- p = 0.3 (the default, as in the MLC proposal): exponent 1.2, so a one-socket hop (SLIT 21)
  reads at 0.41x local, a same-socket SNC/NPS neighbour (SLIT 12) at 0.80x, two hops (SLIT 32)
  at 0.25x: the ranges measured on 2-socket Xeon and EPYC servers;
- p = 1: exponent 4, a socket hop is worth 0.05x local: placement avoids crossing at almost any
  price.

Monotone by construction: for every remote pair (d_ij > d_ii) the bandwidth strictly decreases
as p grows, so a higher penalty never makes crossing cheaper.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from numaplan.cost.model import CostModel, build_cost_model
from numaplan.errors import CostModelError
from numaplan.topology import Topology

#: Nominal local figures used when nothing better is known: a DDR4/DDR5 node's sustained read
#: bandwidth is 40-120 GB/s and its idle latency 80-120 ns; predictions built on them are labelled
#: nominal in the plan.
NOMINAL_LOCAL_BW_GBPS = 50.0
NOMINAL_LOCAL_LAT_NS = 100.0
#: Bandwidth exponent per unit of penalty (see the module docstring).
PENALTY_EXPONENT_SCALE = 4.0
#: ``numa_inter_node_penalty`` when none is given: every default of the knob (command line,
#: engine, planner options) is this name.
DEFAULT_PENALTY = 0.3


def check_penalty(penalty: float) -> float:
    """Check that ``penalty`` is a valid ``numa_inter_node_penalty`` (0..1).

    The one range check of the knob: the settings models use it through :data:`Penalty`.

    Parameters
    ----------
    penalty
        The value to check.

    Returns
    -------
    float
        ``penalty``, unchanged.

    Raises
    ------
    CostModelError
        When ``penalty`` is outside 0..1.

    Examples
    --------
    >>> check_penalty(0.5)
    0.5
    """
    if not 0.0 <= penalty <= 1.0:
        raise CostModelError(f"numa_inter_node_penalty must be in 0..1, got {penalty}")
    return penalty


def _penalty_field(value: float) -> float:
    # pydantic turns a ValueError into a validation error of the field; the rule stays above.
    try:
        return check_penalty(value)
    except CostModelError as exc:
        raise ValueError(exc.message) from None


#: The type of a ``numa_inter_node_penalty`` field in a pydantic model (checked by
#: :func:`check_penalty`).
Penalty = Annotated[float, AfterValidator(_penalty_field)]


def bandwidth_factor(local_distance: int, distance: int, penalty: float) -> float:
    """The factor a remote read's bandwidth gets under ``penalty``.

    Examples
    --------
    >>> round(bandwidth_factor(10, 21, 0.3), 2)
    0.41
    >>> bandwidth_factor(10, 10, 0.9)
    1.0
    """
    check_penalty(penalty)
    return (local_distance / distance) ** (PENALTY_EXPONENT_SCALE * penalty)


def cost_from_slit(
    topology: Topology,
    *,
    penalty: float = DEFAULT_PENALTY,
    local_bw_gbps: float | None = None,
    local_lat_ns: float | None = None,
) -> CostModel:
    """Derive a cost model from the topology's SLIT distances.

    Parameters
    ----------
    topology
        The machine.
    penalty
        ``numa_inter_node_penalty`` in 0..1 (see the module docstring for its exact meaning).
    local_bw_gbps
        Local read bandwidth per memory node. Default: the node's HMAT read bandwidth when the
        firmware publishes it, else :data:`NOMINAL_LOCAL_BW_GBPS`.
    local_lat_ns
        Local latency. Default: HMAT read latency, else :data:`NOMINAL_LOCAL_LAT_NS`.

    Returns
    -------
    CostModel
        ``method="slit"``; rows of CPU-less nodes and columns of memoryless nodes are ``None``.
    """
    check_penalty(penalty)
    if local_bw_gbps is not None and local_bw_gbps <= 0:
        raise CostModelError("local bandwidth must be positive")
    ids = topology.node_ids
    base_bw: list[float] = []
    base_lat: list[float] = []
    bw_src = set()
    for n in topology.nodes:
        if local_bw_gbps is None and n.hmat and n.hmat.read_bw_mbps:
            base_bw.append(n.hmat.read_bw_mbps / 1000.0)
            bw_src.add("hmat")
        else:
            base_bw.append(local_bw_gbps or NOMINAL_LOCAL_BW_GBPS)
            bw_src.add("given" if local_bw_gbps else "nominal")
        if local_lat_ns is None and n.hmat and n.hmat.read_lat_ns:
            base_lat.append(float(n.hmat.read_lat_ns))
        else:
            base_lat.append(local_lat_ns or NOMINAL_LOCAL_LAT_NS)
    bw: list[tuple[float | None, ...]] = []
    lat: list[tuple[float | None, ...]] = []
    for i, reader in enumerate(topology.nodes):
        brow: list[float | None] = []
        lrow: list[float | None] = []
        for j, mem in enumerate(topology.nodes):
            if not reader.has_cpus or not mem.has_memory:
                brow.append(None)
                lrow.append(None)
                continue
            d_local = topology.distances[i][i]
            d = topology.distances[i][j]
            brow.append(base_bw[j] * bandwidth_factor(d_local, d, penalty))
            lrow.append(base_lat[j] * d / d_local)
        bw.append(tuple(brow))
        lat.append(tuple(lrow))
    return build_cost_model(
        None,
        node_ids=ids,
        read_bw_gbps=tuple(bw),
        lat_ns=tuple(lat),
        method="slit",
        params={
            "numa_inter_node_penalty": penalty,
            "bandwidth_exponent": PENALTY_EXPONENT_SCALE * penalty,
            "local_bw_source": "+".join(sorted(bw_src)),
            "distances_assumed": topology.distances_assumed,
            **({"local_bw_gbps_arg": local_bw_gbps} if local_bw_gbps else {}),
            **({"local_lat_ns_arg": local_lat_ns} if local_lat_ns else {}),
        },
        topology_fingerprint=topology.fingerprint(),
    )
