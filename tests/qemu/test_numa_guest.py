"""numaplan inside real multi-node Linux guests (QEMU): detection, probe audit, placement.

One boot per guest shape (``conftest.GUESTS``: 2 nodes at SLIT 21; 4 nodes at 16 inside the
pairs {0,1} and {2,3} and 32 across), all booted at once; the guest runs
``tests.qemu.guest_checks`` and these tests assert on what it recorded. Timings under TCG
emulation mean nothing; placement (which CPUs, which node's pages) is the point.

Run locally: ``scripts/numa-vm setup`` once, then ``NUMAPLAN_QEMU=1 .venv/bin/pytest -m qemu``.
"""

from __future__ import annotations

import pytest

from tests.qemu.conftest import GUESTS

pytestmark = pytest.mark.qemu

NODES = pytest.mark.parametrize("nodes", sorted(GUESTS), ids=lambda n: f"{n}node")
#: MemTotal of a node is what QEMU gave it less what the kernel keeps (node 0 also holds the
#: kernel image and the early allocations).
MEM_TOLERANCE = 0.15


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if part:
            a, _, b = part.partition("-")
            out.update(range(int(a), int(b or a) + 1))
    return out


@NODES
def test_topology_detects_the_guest(guests, nodes):
    """``numaplan topology --json``: the nodes, CPUs, memory and exact SLIT QEMU was given."""
    spec, run = GUESTS[nodes], guests[nodes]
    topo = run.step("topology")["topology"]
    assert [n["node_id"] for n in topo["nodes"]] == list(range(nodes))
    assert topo["distances"] == [list(r) for r in spec.distances]
    assert topo["distances_assumed"] is False
    given = spec.mem_per_node_mib << 20
    for n in topo["nodes"]:
        assert n["cpus"] == spec.cpus_of(n["node_id"]), n
        assert (1 - MEM_TOLERANCE) * given <= n["mem_total_bytes"] <= given, \
            f"node {n['node_id']}: {n['mem_total_bytes']} B, QEMU gave {given} B"
    assert topo["allowed_cpus"] == list(range(nodes * spec.cpus_per_node))
    assert topo["allowed_mem_node_ids"] == list(range(nodes))
    # numaplan agrees with the kernel's own files
    kernel = run.doc("results.json")["kernel"]["nodes"]
    for n in topo["nodes"]:
        k = kernel[str(n["node_id"])]
        assert _cpus(k["cpulist"]) == set(n["cpus"])
        assert k["distance"] == topo["distances"][n["node_id"]]
        assert k["mem_total_bytes"] == n["mem_total_bytes"]


@NODES
def test_probe_audits_every_cell_on_its_node(guests, nodes):
    """``numaplan probe --quick``: a full matrix, every buffer 100% on the node it was bound to."""
    cost = guests[nodes].step("probe")["cost"]
    assert cost["node_ids"] == list(range(nodes))
    for m in (cost["read_bw_gbps"], cost["lat_ns"]):
        assert len(m) == nodes and all(len(r) == nodes for r in m)
        assert all(v is not None and v > 0 for r in m for v in r)
    cells = {(a["reader_node_id"], a["mem_node_id"]): a for a in cost["audit"]}
    assert set(cells) == {(r, m) for r in range(nodes) for m in range(nodes)}
    for (reader, mem), a in sorted(cells.items()):
        assert a["pages_checked"] > 0
        assert a["pages_on_target"] == a["pages_checked"], \
            f"CPUs of node {reader} -> memory of node {mem}: {a}"
        assert a["nodes_seen"] == [mem]


def _check_run(run, spec, tp: int, reference: list[int]) -> None:
    """Tokens, thread pinning and the weight audit of one recorded generation."""
    doc = run.step("tp" if tp == spec.tp else "tp1", runtime=True)["doc"]
    assert doc["tokens"] == reference, "tokens differ from the single-process reference"
    stats = doc["stats"]
    plan_workers = {w["worker_id"]: w for w in run.step("compile")["plans"][str(tp)]}
    assert len(stats["workers"]) == tp
    for w in stats["workers"]:
        planned = plan_workers[w["worker_id"]]
        assert w["node_id"] == planned["node_id"]
        assert _cpus(w["cpus_planned"]) <= set(spec.cpus_of(w["node_id"])), w
        assert w["threads_on_planned_cpus"] is True, w
        assert all(_cpus(c) <= _cpus(w["cpus_planned"]) for c in w["thread_cpus"]), w
        assert w["weight_bytes"] > 0
        assert w["weight_bytes_on_planned_node"] == w["weight_bytes"], w
    assert stats["weight_local_percentage"] == 100.0
    if tp == spec.nodes:  # one worker per node
        assert sorted(w["node_id"] for w in stats["workers"]) == list(range(spec.nodes))


@NODES
def test_tensor_parallel_run_is_placed_and_correct(guests, qemu_model, nodes):
    """W = nodes: tokens equal the reference; every worker's threads on its node's CPUs and
    100% of its weight bytes on its node."""
    _check_run(guests[nodes], GUESTS[nodes], GUESTS[nodes].tp, qemu_model[1])


@NODES
def test_single_worker_run_is_placed_and_correct(guests, qemu_model, nodes):
    """W = 1 on a multi-node guest: the same checks for the one worker."""
    _check_run(guests[nodes], GUESTS[nodes], 1, qemu_model[1])


@NODES
def test_injected_misplacement_is_reported_and_refused(guests, nodes):
    """Worker 1's weights bound to the wrong node: the audit reports it far below 100%, the
    other workers stay at 100%, and ``strict_placement`` refuses to start."""
    run = guests[nodes]
    mis = run.step("misplaced", runtime=True)
    injected = mis["injected"]
    assert injected["bound_to"] != injected["planned_node"]
    by_id = {w["worker_id"]: w for w in mis["stats"]["workers"]}
    w1 = by_id[1]
    assert w1["weight_bytes"] > 0
    assert w1["weight_bytes_on_planned_node"] <= 0.05 * w1["weight_bytes"], w1
    for wid, w in by_id.items():
        if wid != 1:
            assert w["weight_bytes_on_planned_node"] == w["weight_bytes"], w
    assert mis["stats"]["weight_local_percentage"] < 100.0 * (1 - 0.95 / len(by_id))
    strict = run.step("strict", runtime=True)
    assert strict["raised"] == "PlacementError", strict
    assert strict["is_placement_error"] is True


SHARED = pytest.mark.parametrize("nodes", sorted(n for n, g in GUESTS.items() if g.shared_tp),
                                 ids=lambda n: f"{n}node")


@SHARED
def test_workers_of_a_node_share_one_copy_on_it(guests, qemu_model, nodes):
    """Several workers per node (W = shared_tp): the lowest worker of each node writes the
    replicated tensors once, into shared memory bound to that node; the others map it. Every
    worker's bytes, the shared copy included, audited on its planned node; tokens unchanged."""
    spec, run = GUESTS[nodes], guests[nodes]
    doc = run.step("shared", runtime=True)["doc"]
    assert doc["tokens"] == qemu_model[1], "tokens differ from the single-process reference"
    stats = doc["stats"]
    planned = {w["worker_id"]: w for w in run.step("compile")["plans"][str(spec.shared_tp)]}
    assert len(stats["workers"]) == spec.shared_tp
    by_node: dict[int, list[dict]] = {}
    for w in stats["workers"]:
        assert w["node_id"] == planned[w["worker_id"]]["node_id"]
        assert w["threads_on_planned_cpus"] is True, w
        assert w["weight_bytes"] > 0
        assert w["weight_bytes_on_planned_node"] == w["weight_bytes"], w
        assert w["weight_bytes_loaded"] + w["weight_bytes_shared_mapped"] == w["weight_bytes"]
        by_node.setdefault(w["node_id"], []).append(w)
    assert sorted(by_node) == list(range(nodes))
    for node, ws in by_node.items():
        assert len(ws) >= 2, f"node {node}: one worker, nothing to share"
        owner = min(ws, key=lambda w: w["worker_id"])
        assert owner["weight_bytes_shared_mapped"] == 0, owner
        mapped = {w["weight_bytes_shared_mapped"] for w in ws if w is not owner}
        assert len(mapped) == 1 and mapped.pop() > 0, ws
