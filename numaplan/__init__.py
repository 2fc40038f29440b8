"""numaplan: plan and enforce NUMA placement for tensor-parallel LLM inference on CPUs.

Importing this package is cheap: it never imports tvm or pulp. The names below are loaded on
first use (PEP 562), so ``import numaplan`` does not even import the engine; tvm and pulp are
loaded lazily by the layers that need them (``numaplan.passes``, ``numaplan.plan.solver_ilp``,
``numaplan.runtime``). Modules inside the package import what they need from its submodules
(``numaplan._version``, ``numaplan.errors``, ...), never from this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from numaplan._version import __version__

if TYPE_CHECKING:
    from numaplan.engine import (
        Engine,
        EngineConfig,
        MLCEngine,
        NUMATensorParallelConfig,
        create_numa_allocator,
        create_numa_communicator,
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

#: Public name -> the submodule that defines it.
_WHERE = {
    "Engine": "engine", "EngineConfig": "engine", "NUMATensorParallelConfig": "engine",
    "get_numa_topology": "engine", "MLCEngine": "engine",
    "create_numa_communicator": "engine", "create_numa_allocator": "engine",
    "LlamaConfig": "llama", "LlamaForCausalLM": "llama",
    "CostModelError": "errors", "InfeasiblePlanError": "errors", "ModelFormatError": "errors",
    "NumaplanError": "errors", "PlacementError": "errors", "SchemaVersionError": "errors",
    "TopologyError": "errors",
}

__all__ = [
    "CostModelError",
    "Engine",
    "EngineConfig",
    "InfeasiblePlanError",
    "LlamaConfig",
    "LlamaForCausalLM",
    "MLCEngine",
    "ModelFormatError",
    "NUMATensorParallelConfig",
    "NumaplanError",
    "PlacementError",
    "SchemaVersionError",
    "TopologyError",
    "__version__",
    "create_numa_allocator",
    "create_numa_communicator",
    "get_numa_topology",
]


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
