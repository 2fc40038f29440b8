"""Reading and writing plan files: version checks, migrations, atomic writes (the canonical text
itself is defined with the schema, :func:`numaplan.plan.schema.plan_text`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from numaplan._io import read_json, write_atomic
from numaplan.errors import PlanFormatError, SchemaVersionError
from numaplan.model.config import first_error
from numaplan.plan.schema import SCHEMA_CHANGES, SCHEMA_VERSION, Plan, plan_text

PLAN_FILE = "numa-plan.json"

#: ``{from_version: function(doc) -> doc of from_version + 1}``; applied one step at a time.
#: A version with no migration is refused with what the newer one added: version 1 lacks the
#: roofline's compute term and the KV-cache capacity, which only the planner can work out (they
#: need the cost model and the memory left after the weights), so a version-1 plan is re-made,
#: not converted.
MIGRATIONS: dict[int, Any] = {}




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
    while doc["schema_version"] < SCHEMA_VERSION:
        old = doc["schema_version"]
        if old not in MIGRATIONS:
            raise SchemaVersionError(
                f"plan schema_version {old} was written by an older numaplan; this one writes "
                f"{SCHEMA_VERSION} (adding {SCHEMA_CHANGES[old + 1]}): plan again with "
                "`numaplan compile`", path=source)
        doc = MIGRATIONS[old](doc)
    try:
        return Plan.model_validate(doc)
    except ValidationError as exc:
        raise PlanFormatError(first_error(exc), path=source) from None


def read_plan(path: str | Path) -> Plan:
    """Read a plan file (``OUT/numa-plan.json`` or a directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / PLAN_FILE
    return plan_from_dict(read_json(p, error=PlanFormatError), source=str(p))
