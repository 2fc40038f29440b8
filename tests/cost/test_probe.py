"""``numaplan probe`` on this machine (one node), its fallbacks, and its multi-node logic.

The real probes use small buffers (a few MiB) so the suite stays fast; the figures are then
cache-inflated, which the probe itself records in ``params["size_warning"]``.
"""

from __future__ import annotations

import errno
import io
import re

import pytest

from numaplan.cost import probe as pr
from numaplan.cost.model import CellAudit
from numaplan.errors import PlacementError
from numaplan.osnuma import get_affinity, get_mempolicy, restore_mempolicy, set_mempolicy
from numaplan.osnuma import kernels as kn
from numaplan.osnuma.backend import NumaBackend, NumaCallError
from numaplan.osnuma.buffer import NodeBuffer
from numaplan.osnuma.mempolicy import MemPolicy, PlacementOutcome
from numaplan.topology import read_sysfs, synthetic_topology

MIB = 1 << 20
SMALL = {"buffer_bytes": 8 * MIB, "latency_buffer_bytes": 4 * MIB, "repeats": 2,
         "warmup_s": 0.0, "latency_loads": 20_000}


def small(**kw) -> pr.ProbeSettings:
    """Quick settings with small buffers, plus ``kw``."""
    return pr.ProbeSettings(**{"quick": True, **SMALL, **kw})


@pytest.fixture(scope="module")
def topo():
    return read_sysfs("/")


def test_quick_probe_on_this_machine(topo):
    events = []
    cost = pr.probe(topo, small(), progress=events.append)
    assert cost.method == "probe" and cost.node_ids == (0,)
    bw, lat = cost.bw(0, 0), cost.lat(0, 0)
    assert bw is not None and bw > 0.5 and lat is not None and 1 < lat < 10_000
    assert cost.topology_fingerprint == topo.fingerprint()
    (audit,) = cost.audit
    assert audit.on_target_fraction == 1.0 and audit.nodes_seen == (0,)
    assert audit.pages_checked == (8 * MIB + 4 * MIB) // 4096
    p = cost.params
    assert p["kernel"] == "c" and p["backend"] in ("libnuma", "syscall")
    assert p["placement"] == "mbind" and p["audit_incomplete_cells"] == 0
    assert p["buffer_bytes"] == 8 * MIB and p["threads_per_node"] == len(topo.usable_cpus(0))
    assert p["numpy_copy_gbps_node0"] == pytest.approx(2 * p["numpy_copy_read_gbps_node0"],
                                                       rel=0.01)
    for key in ("thp", "thp_mode", "numa_balancing", "llc_bytes", "bw_statistic",
                "lat_statistic", "repeats", "size_warning", "bw_median_gbps_n0_m0"):
        assert key in p, key
    assert [e.stage for e in events] == ["start", "done"]
    done = events[-1]
    assert (done.cell_index, done.cell_total) == (1, 1)
    assert done.read_bw_gbps == bw and done.audit == audit and done.warning is None


def test_numpy_fallback_without_compiler(monkeypatch, topo):
    monkeypatch.setattr(kn, "find_compiler", lambda: None)
    events = []
    cost = pr.probe(topo, small(), progress=events.append)
    p = cost.params
    assert p["kernel"] == "numpy" and p["lat_upper_bound"] is True
    assert "no C compiler" in p["kernel_note"] and "upper bound" in p["kernel_note"]
    assert cost.bw(0, 0) > 0 and cost.lat(0, 0) > 0
    assert sum(e.stage == "done" for e in events) == 1
    assert "(upper bound)" in pr.format_event(events[-1])


def test_default_printer_one_line_per_cell(topo):
    out = io.StringIO()
    pr.probe(topo, small(), progress=lambda e: pr.print_progress(e, out))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"\[1/1\] CPUs of node 0 -> memory of node 0: [\d.]+ GB/s read, \d+ ns, "
                        r"pages on node 0: 100\.0% \(3072/3072\)", lines[0]), lines[0]


def test_calling_thread_is_restored(topo):
    before_policy = get_mempolicy()
    cpus = get_affinity(0)
    set_mempolicy("preferred", [0])
    try:
        pr.probe(topo, small(numpy_copy=False))
        assert get_mempolicy().mode == "preferred" and get_affinity(0) == cpus
    finally:
        restore_mempolicy(before_policy)


def test_misplaced_pages_are_reported_loudly(monkeypatch, topo):
    """A mocked move_pages answer (every page on node 1) must surface everywhere."""
    real = NodeBuffer.audit

    def lying_audit(self, node_ids, **kw):
        return real(self, node_ids, query=lambda pages: [1] * len(pages))

    monkeypatch.setattr(NodeBuffer, "audit", lying_audit)
    out = io.StringIO()
    cost = pr.probe(topo, small(numpy_copy=False),
                    progress=lambda e: pr.print_progress(e, out))
    (audit,) = cost.audit
    assert audit.on_target_fraction == 0.0 and audit.nodes_seen == (1,)
    assert cost.params["audit_incomplete_cells"] == 1
    assert "mixes nodes" in cost.params["warning"]
    assert "WARNING: only 0.0% of the pages are on node 0" in out.getvalue()
    assert cost.bw(0, 0) > 0  # still measured


def test_refuses_when_node_memory_is_short(monkeypatch, topo):
    monkeypatch.setattr(pr, "node_free_bytes", lambda node: 16 * MIB)
    with pytest.raises(PlacementError, match=r"node 0 has 16 MiB free.*smaller buffer_bytes"):
        pr.probe(topo, small())


def test_nothing_to_probe(topo):
    with pytest.raises(PlacementError, match="nothing to probe"):
        pr.probe(topo.restricted_to([]), small())


def test_settings_defaults_are_llc_relative():
    def resolve(llc=None, python_chase=False, **kw):
        return pr.resolve_probe_settings(pr.ProbeSettings(**kw), llc=llc,
                                         python_chase=python_chase)

    full = resolve(llc=32 * MIB, huge_pages=False)
    quick = resolve(quick=True, llc=32 * MIB, huge_pages=False)
    assert full.buffer_bytes == 512 * MIB and full.latency_buffer_bytes == 256 * MIB
    assert quick.buffer_bytes == quick.latency_buffer_bytes == 128 * MIB
    assert resolve(llc=256 * MIB, huge_pages=False).buffer_bytes == 16 * 256 * MIB
    assert quick.bw_repeats < full.bw_repeats and quick.warmup_s < full.warmup_s
    assert resolve(python_chase=True, huge_pages=False).latency_loads == 500_000
    with pytest.raises(PlacementError, match="too small"):
        resolve(buffer_bytes=1024)


def test_reader_cpus_one_per_physical_core():
    t = synthetic_topology(sockets=1, cores_per_node=4, smt=2)  # siblings: c and c + 4
    assert pr.reader_cpus(t, 0, allowed=set(range(8))) == (0, 1, 2, 3)
    assert pr.reader_cpus(t, 0, 6, allowed=set(range(8))) == (0, 1, 2, 3, 4, 5)
    assert pr.reader_cpus(t, 0, allowed={1, 4, 5}) == (4, 1)  # core 0 only via its sibling
    assert pr.reader_cpus(t, 0, 99, allowed={0, 1}) == (0, 1)


def test_multi_node_orchestration(monkeypatch):
    """The cell loop on a 4-node shape, with binding and audit faked (this VM has one node).

    Node 0: CPU 0 + memory; node 1: CPU 1, no memory; nodes 2, 3: memory, no CPUs. Rows of
    CPU-less nodes and columns of memoryless nodes must be None; buffers of a memory node must
    be written by another node's threads; every reader must run on its own CPUs.
    """
    topo = synthetic_topology(sockets=2, cores_per_node=1, memoryless_nodes=[1],
                              cpuless_nodes_per_socket=1)
    assert topo.cpu_node_ids() == (0, 1) and topo.memory_node_ids() == (0, 2, 3)
    bound, fillers, readers_seen = [], [], []
    monkeypatch.setattr(pr, "allowed_memory_nodes", lambda: (0, 1, 2, 3))
    monkeypatch.setattr(pr, "node_free_bytes", lambda node: None)

    def fake_bind(self, node, **kw):
        bound.append(node)
        pol = MemPolicy(mode="bind", node_ids=(node,))
        return PlacementOutcome(action="mbind", requested=pol, achieved=pol)

    real_fill, real_read = pr._fill, pr.measure_read_bandwidth

    def spy_fill(pool, kern, buf):
        fillers.append(pool.cpus)
        real_fill(pool, kern, buf)

    def spy_read(pool, *a, **kw):
        readers_seen.append(pool.run(lambda k: get_affinity(0)))
        return real_read(pool, *a, **kw)

    def fake_audit(reader, mem, bufs, be, allow_fallback):
        return CellAudit(reader_node_id=reader, mem_node_id=mem, pages_checked=10,
                         pages_on_target=10, nodes_seen=(mem,)), None

    monkeypatch.setattr(NodeBuffer, "bind", fake_bind)
    monkeypatch.setattr(pr, "_fill", spy_fill)
    monkeypatch.setattr(pr, "measure_read_bandwidth", spy_read)
    monkeypatch.setattr(pr, "_audit_buffers", fake_audit)
    events = []
    cost = pr.probe(topo, small(), progress=events.append)

    done = [(e.reader_node_id, e.mem_node_id) for e in events if e.stage == "done"]
    assert done == [(0, 0), (1, 0), (0, 2), (1, 2), (0, 3), (1, 3)]
    assert [e.cell_index for e in events if e.stage == "done"] == [1, 2, 3, 4, 5, 6]
    assert {e.cell_total for e in events} == {6}
    for m in (cost.read_bw_gbps, cost.lat_ns):
        assert [[v is not None for v in row] for row in m] == [
            [True, False, True, True], [True, False, True, True],
            [False] * 4, [False] * 4]
    assert readers_seen == [[(0,)], [(1,)]] * 3
    # each memory node's two buffers are bound to it and written by a *remote* node's threads
    assert bound[:6] == [0, 0, 2, 2, 3, 3]
    assert fillers[:2] == [((1,),)] * 2 and fillers[2:6] == [((0,),)] * 4
    # numpy copy: node 0 local; node 1 (memoryless) on its nearest memory node by SLIT, its
    # socket's CPU-less node 3 (distance 13), where the kernel's "local" allocation would go
    assert bound[6:] == [0, 0, 3, 3]
    assert cost.params["numpy_copy_mem_node1"] == 3
    assert "numpy_copy_gbps_node0" in cost.params and "numpy_copy_gbps_node1" in cost.params
    assert len(cost.audit) == 6


def test_syscall_backend_probe(topo):
    cost = pr.probe(topo, small(numpy_copy=False), backend="syscall")
    assert cost.params["backend"] == "syscall" and cost.audit[0].on_target_fraction == 1.0


class ContainerBackend(NumaBackend):
    """Every NUMA call refused with EPERM, as under Docker's default seccomp profile."""

    name = "container"

    def set_mempolicy(self, mode, mask, maxnode):
        raise NumaCallError("set_mempolicy", errno.EPERM)

    def get_mempolicy(self, mask, maxnode, addr, flags):
        raise NumaCallError("get_mempolicy", errno.EPERM)

    def mbind(self, addr, length, mode, mask, maxnode, flags):
        raise NumaCallError("mbind", errno.EPERM)

    def move_pages(self, pid, pages, nodes, status, flags):
        raise NumaCallError("move_pages", errno.EPERM)


def test_container_without_cap_sys_nice(topo):
    be = ContainerBackend()
    with pytest.raises(PlacementError, match=r"mbind failed \(EPERM.*CAP_SYS_NICE.*allow_fallb"):
        pr.probe(topo, small(), backend=be)
    out = io.StringIO()
    cost = pr.probe(topo, small(allow_fallback=True), backend=be,
                    progress=lambda e: pr.print_progress(e, out))
    p = cost.params
    assert p["placement"] == "first-touch" and cost.bw(0, 0) > 0
    assert "mbind was refused; pages were placed by first-touch" in p["warning"]
    assert "audited with numa_maps" in p["warning"]
    (audit,) = cost.audit
    assert audit.on_target_fraction == 1.0  # numa_maps: the mapping's pages are on node 0
    assert "WARNING" in out.getvalue()
