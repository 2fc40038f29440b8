"""Node-bound buffers and the two page audits (move_pages, numa_maps)."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from numaplan.errors import PlacementError
from numaplan.osnuma import audit as au
from numaplan.osnuma.buffer import NodeBuffer
from numaplan.osnuma.system import HUGE_PAGE_SIZE, PAGE_SIZE

MIB = 1 << 20


def _mapped(address: int) -> bool:
    for line in Path("/proc/self/maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if lo <= address < hi:
            return True
    return False


@pytest.mark.parametrize("huge", [False, True])
def test_bound_buffer_is_entirely_on_node0(backend, huge):
    with NodeBuffer(8 * MIB + 1, huge_pages=huge) as buf:
        assert buf.address % PAGE_SIZE == 0
        assert buf.nbytes == (10 * MIB if huge else 8 * MIB + PAGE_SIZE)
        out = buf.bind(0, backend=backend)
        assert out.achieved == out.requested and not out.degraded
        buf.touch()
        a = buf.audit(0, backend=backend)
        assert a.pages_total == a.pages_checked == buf.nbytes // PAGE_SIZE
        assert a.pages_on_target == a.pages_checked and a.on_target_fraction == 1.0
        assert a.pages_per_node == ((0, a.pages_checked),) and a.complete
        assert a.describe().startswith("pages on node 0: 100.0%")
        sampled = buf.audit(0, max_pages=100, backend=backend)
        assert sampled.pages_checked == 100 and sampled.on_target_fraction == 1.0
        assert sampled.pages_total == a.pages_total


def test_untouched_pages_are_not_present(backend):
    with NodeBuffer(MIB) as buf:
        buf.bind(0, backend=backend)
        a = buf.audit(0, backend=backend)
        assert a.pages_not_present == a.pages_checked == MIB // PAGE_SIZE
        assert a.on_target_fraction == 0.0 and not a.complete
        assert "not present" in a.describe()


def test_mocked_answer_on_node1_reports_zero_on_target():
    with NodeBuffer(MIB) as buf:
        buf.bind(0)
        buf.touch()
        a = buf.audit(0, query=lambda pages: [1] * len(pages))
    assert a.on_target_fraction == 0.0 and a.pages_on_target == 0
    assert a.pages_per_node == ((1, MIB // PAGE_SIZE),) and a.nodes_seen == (1,)
    assert "pages on node 0: 0.0%" in a.describe() and "node 1: 256" in a.describe()


def test_mixed_mocked_answer():
    def half(pages):
        nodes = [0 if k % 2 else 1 for k in range(len(pages) - 2)]
        return [*nodes, -errno.ENOENT, -errno.EFAULT]
    a = au.audit_range(0x10000, 10 * PAGE_SIZE, 0, query=half)
    assert a.pages_checked == 10 and a.pages_on_target == 4
    assert a.pages_per_node == ((0, 4), (1, 4))
    assert a.pages_not_present == 1 and a.pages_failed == (("EFAULT", 1),)
    assert a.on_target_fraction == pytest.approx(0.4)
    assert a.model_dump()["on_target_fraction"] == pytest.approx(0.4)
    with pytest.raises(PlacementError, match="returned 1 statuses for 10 pages"):
        au.audit_range(0x10000, 10 * PAGE_SIZE, 0, query=lambda p: [0])


def test_interleaved_targets_count_every_target_node():
    a = au.audit_range(0, 4 * PAGE_SIZE, [0, 1], query=lambda p: [0, 1, 0, 2])
    assert a.target_node_ids == (0, 1) and a.pages_on_target == 3


def test_sample_is_even_and_keeps_ends():
    pages = au.sample_page_addresses(PAGE_SIZE * 3 + 5, PAGE_SIZE * 1000, 7)
    assert len(pages) == 7
    assert pages[0] == PAGE_SIZE * 3 and pages[-1] == PAGE_SIZE * 1003
    steps = np.diff(pages)
    assert steps.max() - steps.min() <= PAGE_SIZE
    assert len(au.sample_page_addresses(0, PAGE_SIZE * 5, 100)) == 5
    assert au.page_count(PAGE_SIZE - 1, 2) == 2 and au.page_count(0, 0) == 0


def test_close_unmaps_and_guards():
    buf = NodeBuffer(4 * MIB)
    addr = buf.address
    view = buf.array(np.uint64)
    view[:] = 7
    with pytest.raises(BufferError, match="views of the buffer are still alive"):
        buf.close()
    del view
    assert _mapped(addr)
    buf.close()
    assert buf.closed and not _mapped(addr)
    buf.close()  # idempotent
    with pytest.raises(PlacementError, match="closed"):
        buf.touch()
    assert "closed" in repr(buf)
    with pytest.raises(PlacementError, match="positive"):
        NodeBuffer(0)


def test_huge_page_bytes_reads_smaps():
    with NodeBuffer(8 * MIB, huge_pages=True) as buf:
        buf.bind(0)
        buf.touch()
        got = au.huge_page_bytes(buf.address, buf.nbytes)
        assert got is not None and 0 <= got
        assert got % HUGE_PAGE_SIZE == 0


SAMPLE = """\
55d0c2a6b000 default file=/usr/bin/python3.11 mapped=120 mapmax=3 N0=120 kernelpagesize_kB=4
55d0c4b8e000 default heap anon=2048 dirty=2048 active=1900 N0=2048 kernelpagesize_kB=4
7f3a40000000 bind:1 anon=65536 dirty=65536 N1=65536 kernelpagesize_kB=4
7f3a50000000 interleave:0-1 anon=1024 dirty=1024 N0=512 N1=512 kernelpagesize_kB=4
7f3a60000000 prefer:0 file=/dev/hugepages/x huge dirty=4 N0=4 kernelpagesize_kB=2048
7f3a70000000 default
7ffd1a2b3000 default stack anon=33 dirty=33 N0=33 kernelpagesize_kB=4
"""
SAMPLE_MAPS = """\
7f3a40000000-7f3a50000000 rw-p 00000000 00:00 0
7f3a50000000-7f3a50400000 rw-p 00000000 00:00 0
"""


def test_parse_numa_maps_sample():
    e = au.parse_numa_maps(SAMPLE, SAMPLE_MAPS)
    assert len(e) == 7
    assert e[0].file == "/usr/bin/python3.11" and e[0].counter("mapmax") == 3
    assert e[1].kinds == ("heap",) and e[1].counter("active") == 1900
    assert e[2].policy == "bind:1" and e[2].pages_per_node == ((1, 65536),)
    assert e[2].end_address == 0x7F3A50000000 and e[0].end_address is None
    assert e[3].pages_per_node == ((0, 512), (1, 512)) and e[3].total_pages == 1024
    assert e[4].kinds == ("huge",) and e[4].page_size_bytes == 2 << 20
    assert e[5].pages_per_node == () and e[5].total_pages == 0
    assert e[6].kinds == ("stack",)
    a = au.numa_maps_audit(0x7F3A40000000, 256 * MIB, 0, entries=e)
    assert a.source == "numa_maps" and a.pages_checked == 65536 and a.on_target_fraction == 0
    a = au.numa_maps_audit(0x7F3A50000000, 4 * MIB, [0, 1], entries=e)
    assert a.pages_on_target == 1024 and a.pages_per_node == ((0, 512), (1, 512))
    with pytest.raises(PlacementError, match="no mapping"):
        au.numa_maps_audit(0x1000, 4096, 0, entries=e)


def test_parse_numa_maps_rejects_garbage():
    with pytest.raises(PlacementError, match="line 1 does not start with an address"):
        au.parse_numa_maps("hello world\n")
    with pytest.raises(PlacementError, match="line 2 has no policy"):
        au.parse_numa_maps("7f00 default\n7f01\n")


def test_numa_maps_of_live_process_sees_the_bound_buffer():
    with NodeBuffer(4 * MIB) as buf:
        buf.bind(0)
        buf.touch()
        entries = au.read_numa_maps()
        mine = [x for x in entries if x.start_address <= buf.address < (x.end_address or 0)]
        assert len(mine) == 1 and mine[0].policy == "bind:0"
        assert dict(mine[0].pages_per_node)[0] >= buf.nbytes // PAGE_SIZE
        a = au.numa_maps_audit(buf.address, buf.nbytes, 0)
        assert a.on_target_fraction == 1.0 and a.pages_checked >= buf.nbytes // PAGE_SIZE
    with pytest.raises(PlacementError, match="cannot read"):
        au.read_numa_maps(999999999)
