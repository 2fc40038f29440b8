"""The committed plan JSON Schema matches the code; plan files are validated on read."""

from __future__ import annotations

import json

import pytest

from numaplan.errors import SchemaVersionError
from numaplan.plan import read_plan
from numaplan.plan.io import PlanFormatError
from numaplan.plan.jsonschema import SCHEMA_PATH, plan_json_schema
from numaplan.plan.schema import SCHEMA_VERSION

from .test_golden import GOLDEN


def test_committed_schema_matches_code():
    assert SCHEMA_PATH.read_text() == plan_json_schema(), \
        "run `python -m numaplan.plan.jsonschema` and commit the result"


def test_schema_version_first_in_files():
    text = (GOLDEN / "2s1n.plan.json").read_text()
    assert text.startswith(f'{{\n  "schema_version": {SCHEMA_VERSION},')


def test_older_plan_is_refused_with_what_changed(tmp_path):
    d = json.loads((GOLDEN / "2s1n.plan.json").read_text())
    d["schema_version"] = 1
    del d["kv_cache"]
    (tmp_path / "numa-plan.json").write_text(json.dumps(d))
    with pytest.raises(SchemaVersionError, match=r"schema_version 1 was written by an older "
                       r"numaplan.*roofline.*KV-cache capacity.*plan again"):
        read_plan(tmp_path)


@pytest.mark.parametrize(("mutate", "error", "message"), [
    (lambda d: d.update(schema_version=99), SchemaVersionError, "unknown plan schema_version 99"),
    (lambda d: d.pop("workers"), PlanFormatError, "workers: Field required"),
    (lambda d: d["workers"][0].update(node_id="x"), PlanFormatError, "workers.0.node_id"),
    (lambda d: d.update(extra=1), PlanFormatError, "extra"),
])
def test_bad_plans(tmp_path, mutate, error, message):
    d = json.loads((GOLDEN / "2s1n.plan.json").read_text())
    mutate(d)
    p = tmp_path / "numa-plan.json"
    p.write_text(json.dumps(d))
    with pytest.raises(error, match=message):
        read_plan(tmp_path)


def test_truncated_plan(tmp_path):
    p = tmp_path / "numa-plan.json"
    p.write_text((GOLDEN / "2s1n.plan.json").read_text()[:500])
    with pytest.raises(PlanFormatError, match="invalid JSON"):
        read_plan(p)
