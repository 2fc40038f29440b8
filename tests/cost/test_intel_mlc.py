"""Intel MLC output (formats seen in public logs) becomes a cost model."""

from __future__ import annotations

import pytest

from numaplan.cost import cost_from_mlc, parse_mlc_matrix
from numaplan.errors import CostModelError
from numaplan.topology import synthetic_topology

FULL_RUN = """Intel(R) Memory Latency Checker - v3.11b
Measuring idle latencies for sequential access (in ns)...
\t\tNuma node
Numa node\t     0\t     1
       0\t  82.1\t 141.0
       1\t 141.5\t  81.5

Measuring Peak Injection Memory Bandwidths for the system
Bandwidths are in MB/sec (1 MB/sec = 1,000,000 Bytes/sec)
ALL Reads        :\t158844.5

Measuring Memory Bandwidths between nodes within system
Bandwidths are in MB/sec (1 MB/sec = 1,000,000 Bytes/sec)
Using all the threads from each core if Hyper-threading is enabled
Using Read-only traffic type
\t\tNuma node
Numa node\t     0\t     1
       0\t79670.3\t34393.4
       1\t34385.7\t79678.3

Measuring Loaded Latencies for the system
Inject\tLatency\tBandwidth
"""

CXL_BW = """Measuring Memory Bandwidths between nodes within system
Bandwidths are in MB/sec (1 MB/sec = 1,000,000 Bytes/sec)
                Numa node
Numa node            0       1
       0        30562.8  4795.3
"""


def test_full_run():
    t = synthetic_topology(sockets=2)
    c = cost_from_mlc(FULL_RUN, FULL_RUN, t)
    assert c.method == "intel-mlc"
    assert c.bw(0, 0) == pytest.approx(79.6703) and c.bw(1, 0) == pytest.approx(34.3857)
    assert c.lat(0, 1) == 141.0 and c.lat(1, 1) == 81.5
    assert c.params["latency_derived_from_slit"] is False


def test_cxl_column_without_row():
    t = synthetic_topology(sockets=1, cpuless_nodes_per_socket=1)
    c = cost_from_mlc(CXL_BW, None, t)
    assert c.bw(0, 1) == pytest.approx(4.7953)
    assert c.bw(1, 0) is None
    assert c.lat(0, 0) is None and c.params["latency_derived_from_slit"] is True


@pytest.mark.parametrize(("text", "message"), [
    ("hello", "no 'Memory Bandwidths between nodes' section"),
    (CXL_BW.split("Numa node            0")[0], "no 'Numa node' header"),
    (CXL_BW.replace("  4795.3", ""), "has 1 values for 2 columns"),
    (CXL_BW.rsplit("0        30562.8", 1)[0], "no rows"),
])
def test_bad_mlc(text, message):
    with pytest.raises(CostModelError, match=message):
        parse_mlc_matrix(text, "bandwidth", source="mlc.txt")


def test_unknown_nodes():
    with pytest.raises(CostModelError, match=r"nodes \[1\] that the topology"):
        cost_from_mlc(FULL_RUN, None, synthetic_topology(sockets=1))
