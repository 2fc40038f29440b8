"""Admission: may this library's plan run here, with this model directory?

Checked by :meth:`numaplan.runtime.session.NumaRuntime.start` before any worker starts: the plan
compiled into the library (:func:`read_library_plan`) against the plan file given, the model
directory and the machine (:func:`check_plan_applies`), and the library's own metadata
(:func:`check_library_metadata`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from numaplan.errors import NumaplanError, PlacementError, StalePlanError
from numaplan.plan.io import plan_from_dict, read_plan
from numaplan.plan.schema import Plan
from numaplan.topology import Topology, parse_cpulist


def read_library_plan(lib_path: str | Path) -> tuple[Plan, dict[str, Any]]:
    """The plan and MLC-style ``_metadata`` compiled into a library.

    Raises
    ------
    NumaplanError
        When the library has no numaplan plan (not built by ``numaplan compile``).
    """
    import tvm
    from tvm import relax

    from numaplan.runtime.ccl.tvm_functions import register_placeholders

    register_placeholders()
    path = Path(lib_path)
    if not path.exists():
        raise NumaplanError("library not found", path=path)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
    try:
        plan_text = str(vm["_numaplan_plan"]())
    except (AttributeError, tvm.error.TVMError, RuntimeError):
        raise NumaplanError("the library carries no numaplan plan (build it with "
                            "`numaplan compile`)", path=path) from None
    meta = json.loads(str(vm["_metadata"]())) if _has(vm, "_metadata") else {}
    return plan_from_dict(json.loads(plan_text), source=str(path)), meta


def _has(vm: Any, name: str) -> bool:
    try:
        vm[name]
        return True
    except Exception:
        return False


def check_plan_file(plan: Plan, plan_path: str | Path | None) -> None:
    """The plan file, when one is given, must be the plan compiled into the library.

    Raises
    ------
    StalePlanError
        They differ.
    """
    if plan_path is not None and read_plan(plan_path).digest() != plan.digest():
        raise StalePlanError("the plan file differs from the plan compiled into the library",
                             path=plan_path)


def check_library_metadata(plan: Plan, meta: dict[str, Any], lib_path: str | Path) -> None:
    """The library's ``_metadata`` must be built for the plan's tensor-parallel degree.

    Raises
    ------
    NumaplanError
        It was built for another ``tensor_parallel_shards``.
    """
    W = plan.request.tensor_parallel_shards
    if meta and meta.get("tensor_parallel_shards", W) != W:
        raise NumaplanError(f"the library was built for tensor_parallel_shards="
                            f"{meta['tensor_parallel_shards']}, the plan says {W}",
                            path=lib_path)


def check_plan_applies(plan: Plan, model_fingerprint: str, topology: Topology, *,
                       force: bool) -> list[str]:
    """Reasons a plan must not run here; raises when it cannot, returns warnings when forced.

    Raises
    ------
    StalePlanError
        Fingerprints differ and ``force`` is off.
    PlacementError
        The plan needs nodes or CPUs this machine (or cpuset) does not offer.
    """
    problems = []
    if model_fingerprint != plan.model.fingerprint:
        problems.append("the model directory's index differs from the one the plan was made for")
    used = topology.restricted_to(plan.request.numa_nodes) if plan.request.numa_nodes \
        else topology
    if used.fingerprint() != plan.topology.fingerprint:
        problems.append(f"this machine differs from the one the plan was made for "
                        f"({plan.topology.source})")
    allowed = set(topology.allowed_cpus)
    for w in plan.workers:
        if w.node_id not in topology.node_ids:
            raise PlacementError(f"the plan puts worker {w.worker_id} on node {w.node_id}, "
                                 f"which this machine does not have")
        missing = set(parse_cpulist(w.cpus)) - allowed
        if missing:
            raise PlacementError(f"worker {w.worker_id} needs CPUs {sorted(missing)[:8]} that "
                                 f"this process may not use")
        if w.mem_node_id not in topology.allowed_mem_node_ids:
            raise PlacementError(f"worker {w.worker_id} needs memory of node {w.mem_node_id}, "
                                 f"which this process may not use")
    if problems and not force:
        raise StalePlanError("stale plan: " + "; ".join(problems) + " (re-plan with `numaplan "
                             "compile`, or pass --force)")
    return problems
