"""numaplan: plan and enforce NUMA placement for tensor-parallel LLM inference on CPUs.

Importing this package is cheap: it never imports tvm or pulp. Those are loaded lazily by the
layers that need them (``numaplan.passes``, ``numaplan.plan.solver_ilp``, ``numaplan.runtime``).
"""

__version__ = "0.1.0"

from numaplan.engine import (
    Engine,
    EngineConfig,
    NUMATensorParallelConfig,
    get_numa_topology,
)
from numaplan.errors import (
    CostModelError,
    InfeasiblePlanError,
    ModelFormatError,
    NumaplanError,
    PlacementError,
    SchemaVersionError,
    TopologyError,
)

__all__ = [
    "CostModelError",
    "Engine",
    "EngineConfig",
    "InfeasiblePlanError",
    "ModelFormatError",
    "NUMATensorParallelConfig",
    "NumaplanError",
    "PlacementError",
    "SchemaVersionError",
    "TopologyError",
    "__version__",
    "get_numa_topology",
]
