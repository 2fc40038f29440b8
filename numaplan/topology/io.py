"""Topology JSON files and detection of the running machine."""

from __future__ import annotations

import logging
from pathlib import Path

from numaplan._io import read_json
from numaplan.errors import SchemaVersionError, TopologyError
from numaplan.topology.hwloc import read_hwloc_file
from numaplan.topology.model import Topology, build_topology
from numaplan.topology.sysfs import read_sysfs
from numaplan.topology.text import read_lscpu_file, read_numactl_file

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = (1,)


def topology_from_dict(data: object, *, source: str | None = None) -> Topology:
    """Validate a decoded topology JSON document.

    Raises
    ------
    SchemaVersionError
        When ``schema_version`` is missing or unknown.
    TopologyError
        When the document does not describe a valid topology.
    """
    if not isinstance(data, dict):
        raise TopologyError("expected a JSON object", path=source)
    version = data.get("schema_version")
    if version not in SUPPORTED_VERSIONS:
        raise SchemaVersionError(
            f"unknown topology schema_version {version!r}; this numaplan reads "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}", path=source)
    return build_topology(source, **data)


def read_topology_json(path: str | Path) -> Topology:
    """Read a topology written by ``numaplan topology --json`` (or :meth:`Topology.to_json`)."""
    return topology_from_dict(read_json(path, error=TopologyError), source=str(path))


def load_topology(
    *,
    json_path: str | Path | None = None,
    sysfs_root: str | Path | None = None,
    numactl_file: str | Path | None = None,
    lscpu_file: str | Path | None = None,
    hwloc_file: str | Path | None = None,
) -> Topology:
    """Load a topology from the one source given, or detect the running machine.

    Exactly one of the arguments may be set; with none, ``/`` is read through sysfs (falling
    back to a single node when the kernel exposes no NUMA information).
    """
    given = [(k, v) for k, v in (("json", json_path), ("sysfs", sysfs_root),
                                 ("numactl", numactl_file), ("lscpu", lscpu_file),
                                 ("hwloc", hwloc_file))
             if v is not None]
    if len(given) > 1:
        raise TopologyError(f"give one topology source, got {', '.join(k for k, _ in given)}")
    if not given:
        return read_sysfs("/")
    kind, value = given[0]
    if kind == "json":
        return read_topology_json(value)
    if kind == "sysfs":
        if not Path(value).is_dir():
            raise TopologyError("sysfs root is not a directory", path=value)
        return read_sysfs(value)
    if kind == "numactl":
        return read_numactl_file(value)
    if kind == "hwloc":
        return read_hwloc_file(value)
    return read_lscpu_file(value)
