"""Cost-model layer: what crossing a node costs (bandwidth and latency matrices)."""

from numaplan.cost.intel_mlc import cost_from_mlc, parse_mlc_matrix, read_mlc_files
from numaplan.cost.memspec import MemorySpec, cost_from_memory_spec, parse_memory_spec
from numaplan.cost.model import (
    CellAudit,
    CollectiveFit,
    CostModel,
    NodeCompute,
    build_cost_model,
    read_cost_json,
)
from numaplan.cost.slit import (
    DEFAULT_PENALTY,
    Penalty,
    bandwidth_factor,
    check_penalty,
    cost_from_slit,
)

__all__ = [
    "DEFAULT_PENALTY",
    "CellAudit",
    "CollectiveFit",
    "CostModel",
    "MemorySpec",
    "NodeCompute",
    "Penalty",
    "bandwidth_factor",
    "build_cost_model",
    "check_penalty",
    "cost_from_memory_spec",
    "cost_from_mlc",
    "cost_from_slit",
    "parse_memory_spec",
    "parse_mlc_matrix",
    "read_cost_json",
    "read_mlc_files",
]
