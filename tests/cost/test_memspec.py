"""Cost models from memory specifications (``--memory-spec``) and the sizing-only presets."""

from __future__ import annotations

import pytest

from numaplan.cost import cost_from_memory_spec, cost_from_slit, parse_memory_spec
from numaplan.errors import CostModelError, ModelFormatError
from numaplan.model.quantization import get_quantization, require_kernels
from numaplan.topology import synthetic_topology


@pytest.fixture
def snc():
    return synthetic_topology(sockets=2, nodes_per_socket=2, cores_per_node=4)


def test_local_bandwidth_is_channels_times_rate_times_8_times_efficiency(snc):
    cost = cost_from_memory_spec(snc, "0-1:4x8800@0.5;2-3:2x4800")
    assert cost.method == "memory-spec"
    assert cost.bw(0, 0) == pytest.approx(4 * 8800 * 8 * 0.5 / 1e3)
    assert cost.bw(3, 3) == pytest.approx(2 * 4800 * 8 * 0.8 / 1e3)
    # Remote reads: the SLIT factor of the same penalty, applied to the memory node's figure.
    slit = cost_from_slit(snc, penalty=0.3, local_bw_gbps=1.0)
    assert cost.bw(0, 2) == pytest.approx(slit.bw(0, 2) * cost.bw(2, 2))
    assert cost.lat_ns == slit.lat_ns
    assert "140.8 GB/s" in cost.params["node0"]


@pytest.mark.parametrize(("text", "message"), [
    ("8by4800", "expected"),
    ("0:8x4800@1.5", r"efficiency must be in \(0, 1\]"),
    ("0-1:8x4800", r"no figures for memory node\(s\) \[2, 3\]"),
    ("0x4800", "must be >= 1"),
])
def test_bad_specs(snc, text, message):
    with pytest.raises(CostModelError, match=message):
        cost_from_memory_spec(snc, text)


def test_later_entries_override_earlier_ones():
    specs = parse_memory_spec("8x4800; 1:12x6400@0.7", (0, 1))
    assert specs[0].channels == 8 and specs[1].channels == 12 and specs[1].efficiency == 0.7


def test_int8_weight_only_is_sizing_only():
    q = get_quantization("int8_weight_only")
    # Q8_0's layout: 32 int8 weights (8 uint32 words) plus one float16 scale = 34 bytes.
    assert q.quantize_bits == 8 and q.storage_per_group * 4 + 2 == 34
    with pytest.raises(ModelFormatError, match="sizing-only preset"):
        require_kernels(q)
    assert require_kernels(get_quantization("q4f16_1")).name == "q4f16_1"
