"""Reading and writing plan files: version checks, migrations, atomic writes (the canonical text
itself is defined with the schema, :func:`numaplan.plan.schema.plan_text`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from numaplan._io import read_json, write_atomic
from numaplan.errors import PlanFormatError, SchemaVersionError
from numaplan.plan.schema import SCHEMA_VERSION, Plan, plan_text

PLAN_FILE = "numa-plan.json"

#: ``{from_version: function(doc) -> doc of from_version + 1}``; applied one step at a time.
MIGRATIONS: dict[int, Any] = {}
#: ``{version: why}`` for versions read no more: no step can recompute what they lack.
REFUSED: dict[int, str] = {
    1: "its prediction counted memory reads only (schema 2 adds the roofline's compute term, "
       "which needs the cost model and the placement problem); re-plan with `numaplan compile`",
}




def write_plan_file(plan: Plan, path: str | Path) -> Path:
    """Write a plan atomically (creating the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, plan_text(plan))
    return path


def plan_from_dict(doc: Any, *, source: str | None = None) -> Plan:
    """Validate (and migrate) a decoded plan document.

    Raises
    ------
    SchemaVersionError
        Unknown or missing ``schema_version``.
    PlanFormatError
        Anything else that does not match the schema (first problem named).
    """
    if not isinstance(doc, dict):
        raise PlanFormatError("expected a JSON object", path=source)
    version = doc.get("schema_version")
    if not isinstance(version, int) or version < 1 or version > SCHEMA_VERSION:
        raise SchemaVersionError(f"unknown plan schema_version {version!r}; this numaplan reads "
                                 f"1..{SCHEMA_VERSION}", path=source)
    if version in REFUSED:
        raise SchemaVersionError(f"plan schema_version {version} is no longer read: "
                                 f"{REFUSED[version]} (this numaplan writes {SCHEMA_VERSION})",
                                 path=source)
    while doc["schema_version"] < SCHEMA_VERSION:
        doc = MIGRATIONS[doc["schema_version"]](doc)
    try:
        return Plan.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise PlanFormatError(f"{loc}: {err['msg']}", path=source) from None


def read_plan(path: str | Path) -> Plan:
    """Read a plan file (``OUT/numa-plan.json`` or a directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / PLAN_FILE
    return plan_from_dict(read_json(p, error=PlanFormatError), source=str(p))
