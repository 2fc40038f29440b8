"""The loader assembles exactly MLC's shards (against slice_shard) into node-bound memory."""

from __future__ import annotations

import numpy as np
import pytest

from numaplan.cost import cost_from_slit
from numaplan.model import load_workload
from numaplan.model.sharding import slice_shard
from numaplan.plan import PlanOptions, make_plan
from numaplan.runtime.loader import load_worker_params


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("W", [1, 2, 4])
def test_every_worker_gets_mlc_shards(model_dirs, this_machine, dtype, W):
    from numaplan.model.reference import read_tensors as load_full_weights

    d = model_dirs[dtype]
    wl = load_workload(d)
    plan = make_plan(wl, this_machine, cost_from_slit(this_machine),
                     PlanOptions(tensor_parallel_shards=W, oversubscribe=True), model_name="m").plan
    full = load_full_weights(d)
    names = [t.name for t in plan.tensors]
    for w in range(W):
        arena, arrays, rep = load_worker_params(d, wl, plan, w, names)
        assert rep.on_planned_fraction == 1.0
        for name, arr in zip(names, arrays, strict=True):
            t = wl.tensor(name)
            want = slice_shard(full[name], t.shard_rule, W, w) if t.is_split else full[name]
            np.testing.assert_array_equal(arr, want.astype(arr.dtype), err_msg=name)
            assert arr.ctypes.data % 4096 == 0  # own page: own mbind range
        # Only its own rows/columns were read from the files (replicated tensors in full).
        split = sum(wl.tensor(n).shard_nbytes(W) for n in names if wl.tensor(n).is_split)
        repl = sum(wl.tensor(n).nbytes for n in names if not wl.tensor(n).is_split)
        assert rep.bytes_read_from_files == split + repl
        del arrays, arr
        arena.close()


def _tp2_here(model_dirs, this_machine, timeout_s: float = 30.0):
    """The float32 example planned for W=2 on this machine, its parameter names, and a fresh
    namespace for shared copies."""
    import secrets

    from numaplan.runtime.loader import SharedCopies

    d = model_dirs["float32"]
    wl = load_workload(d)
    plan = make_plan(wl, this_machine, cost_from_slit(this_machine),
                     PlanOptions(tensor_parallel_shards=2), model_name="m").plan
    shared = SharedCopies(namespace=f"numaplan-test-{secrets.token_hex(4)}",
                          timeout_s=timeout_s)
    return d, wl, plan, [t.name for t in plan.tensors], shared


def _load_concurrently(d, wl, plan, names, shared, order) -> dict[int, tuple]:
    """Every worker of ``order`` loads at once (threads started in that order), as a session's
    workers do."""
    import threading

    results: dict[int, tuple] = {}

    def load(w: int) -> None:
        results[w] = load_worker_params(d, wl, plan, w, names, shared=shared)

    threads = [threading.Thread(target=load, args=(w,)) for w in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(results) == set(order)
    return results


def test_replicated_tensors_are_shared_once_per_home(model_dirs, this_machine):
    """W=2 on one node: worker 0 writes the replicated tensors once into a shared segment,
    worker 1 maps the same memory (a write through one is seen through the other), reads only
    its split pieces from the files, and both audit 100% on node 0; the names can be unlinked
    after loading without losing the memory."""
    from numaplan.model.reference import read_tensors as load_full_weights
    from numaplan.runtime.shared_weights import SHM_DIR, cleanup_weight_segments, copy_groups

    d, wl, plan, names, shared = _tp2_here(model_dirs, this_machine)
    W, ns = 2, shared.namespace
    groups = copy_groups(wl, plan, names)
    repl = [n for n in names if not wl.tensor(n).is_split]
    assert len(groups) == 1 and groups[0].members == (0, 1)
    assert [p.name for p in groups[0].pieces] == repl
    # Worker 1 starts first: it must wait for worker 0's segment, not fail.
    results = _load_concurrently(d, wl, plan, names, shared, (1, 0))
    assert [p.name for p in SHM_DIR.iterdir() if p.name.startswith(ns)] == [f"{ns}-weights0"]
    assert cleanup_weight_segments(ns) == [str(SHM_DIR / f"{ns}-weights0")]
    full = load_full_weights(d)
    split = {w: sum(wl.tensor(n).shard_nbytes(W) for n in names if wl.tensor(n).is_split)
             for w in range(W)}
    repl_mem = sum(wl.tensor(n).shard_mem_nbytes(W) for n in repl)
    (m0, a0, r0), (m1, a1, r1) = results[0], results[1]
    for w, arrays in ((0, a0), (1, a1)):
        for name, arr in zip(names, arrays, strict=True):
            t = wl.tensor(name)
            want = slice_shard(full[name], t.shard_rule, W, w) if t.is_split else full[name]
            np.testing.assert_array_equal(arr, want.astype(arr.dtype), err_msg=name)
    assert r0.bytes_read_from_files == split[0] + sum(wl.tensor(n).nbytes for n in repl)
    assert r1.bytes_read_from_files == split[1]
    assert r0.bytes_shared_mapped == 0 and r1.bytes_shared_mapped == repl_mem
    assert r0.on_planned_fraction == r1.on_planned_fraction == 1.0
    assert r0.bytes_audited == r1.bytes_audited  # both audit the shared copy too
    i = names.index(repl[0])
    before = float(a1[i].flat[0])
    a0[i].flat[0] = before + 1.0  # one memory, two mappings
    assert float(a1[i].flat[0]) == before + 1.0
    results.clear()
    del a0, a1, arr, arrays
    m0.close()
    m1.close()


def test_shared_copy_waits_then_names_its_owner(model_dirs, this_machine):
    """A member whose owner never publishes the segment fails with a clear error, in time."""
    from numaplan.errors import PlacementError

    d, wl, plan, names, shared = _tp2_here(model_dirs, this_machine, timeout_s=0.3)
    with pytest.raises(PlacementError, match=r"did not appear within 0\.3 s \(worker 0 "):
        load_worker_params(d, wl, plan, 1, names, shared=shared)


def test_copy_groups_follow_the_homes(tmp_path):
    """Two workers per node on two nodes: one shared copy per node, owned by the lower worker;
    one worker per node: nothing shared."""
    from numaplan.runtime.shared_weights import copy_groups
    from numaplan.topology import synthetic_topology
    from tests.plan.helpers import small_workload

    topo = synthetic_topology(sockets=2, cores_per_node=2)
    wl = small_workload(tmp_path)
    for W, want in ((4, [(0, 1), (2, 3)]), (2, [])):
        plan = make_plan(wl, topo, cost_from_slit(topo), PlanOptions(tensor_parallel_shards=W),
                         model_name="m").plan
        names = [t.name for t in plan.tensors]
        groups = copy_groups(wl, plan, names)
        assert [g.members for g in groups] == want
        for g in groups:
            nodes = {plan.workers[w].node_id for w in g.members}
            assert len(nodes) == 1
            assert all(h[0] in nodes for p in g.pieces for h in p.homes)


def test_weights_end_before_the_end_of_their_mapping(model_dirs, this_machine):
    """Kernels may load a few elements past a weight's end (unrolled loops); the last weight of
    an arena or a shared segment must still have readable memory after it (a fault in the QEMU
    tier before this slack existed)."""
    from numaplan.runtime.shared_weights import TAIL_SLACK

    d, wl, plan, names, shared = _tp2_here(model_dirs, this_machine)
    res = _load_concurrently(d, wl, plan, names, shared, (0, 1))
    for w in (0, 1):
        mem, arrays, _ = res[w]
        regions = [(mem.arena.address, mem.arena.nbytes)] + \
            [(s.address, s.array().nbytes) for s in mem.segments]
        assert len(regions) == 2
        for start, size in regions:
            inside = [a for a in arrays if start <= a.ctypes.data < start + size]
            assert inside
            end = max(a.ctypes.data + a.nbytes for a in inside)
            assert start + size - end >= TAIL_SLACK
        del arrays, inside
    res.clear()
    from numaplan.runtime.shared_weights import cleanup_weight_segments

    cleanup_weight_segments(shared.namespace)


def _spill_plan(model_dirs, extra_bytes: int = 100_000):
    """The float32 example for W=2 on two one-node sockets, node 1 too small for worker 1's
    share: some pieces of worker 1 spill to node 0, split inside a page."""
    from numaplan.plan import build_problem
    from numaplan.topology import synthetic_topology

    d = model_dirs["float32"]
    wl = load_workload(d)
    roomy = synthetic_topology(sockets=2)
    p = build_problem(wl, roomy, cost_from_slit(roomy), num_workers=2)
    # Capacity = total * free_fraction (0.95) * (1 - headroom 0.10).
    mem = int((p.reserve_bytes_per_worker + extra_bytes) / 0.95 / 0.9) + 4096
    topo = synthetic_topology(sockets=2, mem_per_node_bytes=[1 << 30, mem])
    plan = make_plan(wl, topo, cost_from_slit(topo),
                     PlanOptions(tensor_parallel_shards=2, node_affinity={0: 0, 1: 1},
                                 numa_prefer_local_memory=False), model_name="m").plan
    return d, wl, plan, [t.name for t in plan.tensors]


def test_spilled_piece_audits_complete_where_it_was_bound(model_dirs, fake_numa):
    """Issue 14 4a: a piece split between two homes inside a page. The page at the split is
    bound to the first home; the audit must check it there, so a correct placement audits
    100% and strict mode accepts it (before the fix: < 100%, refused). A piece bound to the
    wrong node is still reported."""
    from numaplan.errors import PlacementError
    from numaplan.runtime.loader import check_placement

    d, wl, plan, names = _spill_plan(model_dirs)
    split = [(t.name, plan.tensor_homes(t, 1)) for t in plan.tensors
             if len(plan.tensor_homes(t, 1)) > 1]
    assert split and any(h[0].nbytes % 4096 for _, h in split)  # a split inside a page
    kernel = fake_numa(nodes=(0, 1))
    mem, arrays, rep = load_worker_params(d, wl, plan, 1, names)
    assert rep.on_planned_fraction == 1.0 and not rep.misplaced
    assert set(rep.pages_per_node) == {0, 1} and not rep.downgrades
    check_placement(rep, strict=True)
    del arrays
    mem.close()
    kernel.ranges.clear()
    mem, arrays, rep = load_worker_params(d, wl, plan, 1, names, bind_override=0)
    assert rep.on_planned_fraction < 1.0 and rep.misplaced
    with pytest.raises(PlacementError, match=r"worker 1: .*% of weight bytes"):
        check_placement(rep, strict=True)
    del arrays
    mem.close()


def test_pieces_split_into_balanced_runs_for_the_loading_threads():
    from numaplan.runtime.loader import Piece, _split

    sizes = [100, 5, 5, 300, 50, 50, 10, 200, 80]
    pieces = [Piece(name=f"p{i}", shape=(n,), dtype="uint8", mem_nbytes=n, offset=0, homes=())
              for i, n in enumerate(sizes)]
    for n in (1, 2, 3, 8, 20):
        parts = _split(pieces, n)
        assert [p for part in parts for p in part] == pieces  # consecutive runs, all of them
        assert 1 <= len(parts) <= n and all(parts)
    assert [sum(p.mem_nbytes for p in part) for part in _split(pieces, 2)] == [410, 390]
    assert _split([], 4) == []


def test_threads_do_not_change_what_is_loaded(model_dirs, this_machine):
    d = model_dirs["float32"]
    wl = load_workload(d)
    plan = make_plan(wl, this_machine, cost_from_slit(this_machine),
                     PlanOptions(tensor_parallel_shards=2), model_name="m").plan
    names = [t.name for t in plan.tensors]
    m1, one, r1 = load_worker_params(d, wl, plan, 1, names, threads=1)
    m3, three, r3 = load_worker_params(d, wl, plan, 1, names, threads=3)
    for a, b in zip(one, three, strict=True):
        np.testing.assert_array_equal(a, b)
    assert r1.bytes_read_from_files == r3.bytes_read_from_files
    assert r3.on_planned_fraction == 1.0 and set(r3.phases_s) >= {"arena", "fault", "copy"}
    del one, three, a, b
    m1.close()
    m3.close()


def test_refused_mbind_of_shared_copies_is_recorded_under_fallback(model_dirs, this_machine,
                                                                   fake_numa):
    """Issue 14 4b: the owner of a shared copy records its refused mbind (before: the outcome
    was dropped); without --allow-fallback the load fails naming the call."""
    import threading

    from numaplan.errors import PlacementError
    from numaplan.runtime.shared_weights import cleanup_weight_segments

    fake_numa(nodes=(0,), refuse={"mbind"})
    d, wl, plan, names, shared = _tp2_here(model_dirs, this_machine)
    with pytest.raises(PlacementError, match=r"mbind failed \(EPERM"):
        load_worker_params(d, wl, plan, 0, names, shared=shared)
    cleanup_weight_segments(shared.namespace)
    results = {}

    def load(w: int) -> None:
        results[w] = load_worker_params(d, wl, plan, w, names, shared=shared,
                                        allow_fallback=True)

    threads = [threading.Thread(target=load, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    cleanup_weight_segments(shared.namespace)
    (m0, a0, r0), (m1, a1, r1) = results[0], results[1]
    # worker 0: its arena and the shared segment it owns; worker 1: its arena only
    assert [(g.call, g.errno, g.fallback) for g in r0.downgrades] == \
        [("mbind", "EPERM", "no policy (first touch)")] * 2
    assert len(r1.downgrades) == 1 and "weights of worker 1" in r1.downgrades[0].what
    results.clear()
    del a0, a1
    m0.close()
    m1.close()
