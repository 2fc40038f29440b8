"""The plan's prediction next to a run's measurements (``numaplan run --stats``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from numaplan.plan import plan_from_dict
from numaplan.runtime.compare import compare_prediction, render_prediction_check
from numaplan.runtime.stats import RuntimeStats

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def stats(decode_s: float | None, coll_s: float | None) -> RuntimeStats:
    return RuntimeStats(workers=(), weight_local_percentage=100.0, collective_calls=0,
                        collective_bytes=0, collective_cross_node_bytes=0,
                        inter_node_percentage=0.0, collective_s_per_step=coll_s,
                        decode_s_per_step=decode_s,
                        tokens_per_s=None if decode_s is None else 1 / decode_s, load_s=None)


def test_parts_and_ratios():
    plan = plan_from_dict(json.loads((GOLDEN / "2s1n.plan.json").read_text()))
    pr = plan.prediction
    c = compare_prediction(plan, stats(2 * pr.token_s, pr.collective_s))
    assert c.token_ratio == pytest.approx(2.0)
    assert c.predicted_node_s == pr.read_s and c.bound == "read"  # a SLIT plan: no compute
    assert c.measured_node_s == pytest.approx(2 * pr.token_s - pr.collective_s)
    text = render_prediction_check(c)
    assert "no compute term" in text and "2.00" in text and "collectives" in text


def test_nothing_generated_yet():
    plan = plan_from_dict(json.loads((GOLDEN / "2s1n.plan.json").read_text()))
    c = compare_prediction(plan, stats(None, None))
    assert c.token_ratio is None and c.measured_node_s is None
    assert "-" in render_prediction_check(c)
