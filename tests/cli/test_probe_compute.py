"""``numaplan probe``'s compute figures on this machine: decode-kernel rates per core for each
measured quantization and the all-reduce's fitted alpha-beta, in a cost file that round-trips."""

from __future__ import annotations

import os

import pytest

from numaplan.cli.probe import add_compute_figures, render_cost
from numaplan.cost import probe as pr
from numaplan.cost import read_cost_json
from numaplan.topology import read_sysfs

MIB = 1 << 20


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the fit needs two CPUs")
def test_probe_adds_kernel_rates_and_collective_fit(tmp_path):
    topo = read_sysfs("/")
    base = pr.probe(topo, pr.ProbeSettings(quick=True, buffer_bytes=8 * MIB,
                                           latency_buffer_bytes=4 * MIB, repeats=2,
                                           warmup_s=0.0, latency_loads=20_000))
    cost = add_compute_figures(base, topo, quick=True)
    (node,) = cost.compute
    assert node.node_id == 0 and node.cores_measured >= 1
    rates = node.weight_bytes_per_s_per_core
    assert set(rates) == {"q0f32", "q0f16", "q4f16_1"}
    # Any CPU of the last decade turns weights into products at 0.1-1000 GB/s per core.
    assert all(1e8 < r < 1e12 for r in rates.values()), rates
    # The fixed cost of one call: under a millisecond on anything that runs a model.
    assert set(node.call_s) == set(rates) and all(0 <= c < 1e-3 for c in node.call_s.values())
    assert cost.collective is not None and cost.collective.ranks == 2
    assert 0 < cost.collective.alpha_s < 1e-2
    assert cost.params["compute_kernels"]
    assert "decode kernels, weight GB/s per core" in render_cost(cost, topo)
    path = tmp_path / "cost.json"
    path.write_text(cost.to_json())
    assert read_cost_json(str(path)) == cost
