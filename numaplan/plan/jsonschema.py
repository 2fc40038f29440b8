"""The committed JSON Schema of the plan file (``numaplan/schema/plan.v2.json``).

Generated from the pydantic models; ``tests/plan/test_schema.py`` fails when the committed file
and the code disagree. Regenerate with ``python -m numaplan.plan.jsonschema``.
"""

from __future__ import annotations

import json
from pathlib import Path

from numaplan.plan.schema import SCHEMA_VERSION, Plan

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schema" / f"plan.v{SCHEMA_VERSION}.json"


def plan_json_schema() -> str:
    """The schema text, deterministic."""
    schema = Plan.model_json_schema()
    schema["$id"] = f"https://numaplan.invalid/schema/plan.v{SCHEMA_VERSION}.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    SCHEMA_PATH.write_text(plan_json_schema())
    print(f"wrote {SCHEMA_PATH}")
