"""numaplan's shared-memory collective: results, skew, failures, segments, stats, TVM binding.

Ranks run as Disco runs them: rank 0 is a thread of this (the test) process, ranks 1..W-1 are
separate processes (a pool of ``spawn`` workers started once for the module). Every rank checks
its own result against a numpy reference that follows the collective's definition exactly
(rank order, float32 accumulation for float16/bfloat16, int64 for int32, the hierarchical
algorithm's per-node partial stored in the input dtype), so comparisons are bit-exact; a float64
sum with a tolerance is checked too, and every rank returns a digest so the test can check that
all ranks got identical bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from numaplan.ccl_abi import (
    ALGORITHMS,
    DTYPE_CODES,
    FUNCTION_NAMES,
    OP_AVG,
    OP_MAX,
    OP_MIN,
    OP_PROD,
    OP_SUM,
    REDUCE_OPS,
    AlgorithmRule,
)
from numaplan.errors import CollectiveError
from numaplan.runtime.ccl import CommSpec, Communicator, cleanup, new_namespace, segments

ALGOS = ALGORITHMS
GOLDEN = Path(__file__).resolve().parents[1] / "golden"


# -- reference ------------------------------------------------------------------------------------
def f32_to_bf16(f: np.ndarray) -> np.ndarray:
    u = np.ascontiguousarray(f, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return r.astype(np.uint16)


def bf16_to_f32(u: np.ndarray) -> np.ndarray:
    return (u.astype(np.uint32) << 16).view(np.float32)


INTS = ("int32", "int64")


def gen(seed: int, rank: int, count: int, dtype: str) -> np.ndarray:
    rng = np.random.default_rng([seed, rank])
    if dtype == "int32":
        return rng.integers(-1000, 1000, count, dtype=np.int32)
    f = rng.standard_normal(count).astype(np.float32)
    if dtype == "bfloat16":
        return f32_to_bf16(f)
    return f.astype(dtype)


def _load(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return bf16_to_f32(x)
    return x.astype(np.int64 if dtype in INTS else np.float64 if dtype == "float64"
                    else np.float32)


def _store(acc: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return f32_to_bf16(acc)
    return acc.astype(dtype)


def reduce_ref(xs: list[np.ndarray], dtype: str, op: int, final: bool, world: int
               ) -> np.ndarray:
    """The collective's definition: left to right in the accumulator type, then stored."""
    acc = _load(xs[0], dtype)
    for x in xs[1:]:
        v = _load(x, dtype)
        acc = {OP_SUM: np.add, OP_AVG: np.add, OP_PROD: np.multiply, OP_MIN: np.minimum,
               OP_MAX: np.maximum}[op](acc, v)
    if final and op == OP_AVG:
        if dtype in INTS:
            acc = np.sign(acc) * (np.abs(acc) // world)  # C's division truncates toward zero
        else:
            acc = acc / acc.dtype.type(world)
    return _store(acc, dtype)


def expected(spec: CommSpec, algo: str, xs: list[np.ndarray], dtype: str, op: int
             ) -> np.ndarray:
    W = spec.world_size
    if algo == "hierarchical" and len(spec.nodes) > 1:
        parts = [reduce_ref([xs[r] for r in g], dtype, op, False, W)
                 for g in spec.intra_node_groups]
        return reduce_ref(parts, dtype, op, True, W)
    return reduce_ref(xs, dtype, op, True, W)


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).view(np.uint8).tobytes()).hexdigest()[:16]


# -- jobs (run by every rank; module-level so spawn workers can import them) ----------------------
def job_matrix(spec_json: str, rank: int, cases: list[tuple]) -> dict:
    spec = CommSpec.model_validate_json(spec_json)
    W = spec.world_size
    bad, digests = [], []
    with Communicator.create(spec, rank) as comm:
        for algo, dtype, count, op, seed in cases:
            xs = [gen(seed, q, count, dtype) for q in range(W)]
            out = np.full_like(xs[rank], 7)
            res = comm.allreduce(xs[rank], op, seed, "tp", algo, out,
                                 dtype="bfloat16" if dtype == "bfloat16" else None)
            assert res is out
            exp = expected(spec, algo, xs, dtype, op)
            if not np.array_equal(out.view(np.uint8), exp.view(np.uint8)):
                where = np.flatnonzero(out.view(exp.dtype) != exp)[:3]
                bad.append(f"{algo} {dtype} n={count} op={op}: first differences at {where}: "
                           f"{out[where]} != {exp[where]}")
            if op == OP_SUM and dtype != "int32":
                ref = sum(_load(x, dtype).astype(np.float64) for x in xs)
                got = _load(out, dtype).astype(np.float64)
                rel = 1e-2 if dtype in ("float16", "bfloat16") else 1e-5
                if not np.allclose(got, ref, rtol=rel, atol=rel * W):
                    bad.append(f"{algo} {dtype} n={count}: far from the float64 sum")
            digests.append(digest(out))
        stats = comm.stats().model_dump()
    return {"bad": bad, "digests": digests, "stats": stats}


def job_mixed(spec_json: str, rank: int, n_calls: int, seed: int, max_delay_s: float) -> dict:
    """Many consecutive calls of every kind, with random per-rank delays (skew)."""
    spec = CommSpec.model_validate_json(spec_json)
    W = spec.world_size
    plan_rng = np.random.default_rng(seed)  # the same on every rank: what to call
    my_rng = np.random.default_rng([seed, rank, 99])  # per rank: when to arrive
    bad = []
    with Communicator.create(spec, rank) as comm:
        for i in range(n_calls):
            kind = int(plan_rng.integers(0, 6))
            count = int(plan_rng.choice([1, 5, 64, 1000, 4099, 20000]))
            dtype = str(plan_rng.choice(["float32", "float16", "int32"]))
            if my_rng.random() < 0.3:
                time.sleep(my_rng.random() * max_delay_s)
            xs = [gen(seed + i, q, count, dtype) for q in range(W)]
            if kind < 3:
                out = comm.allreduce(xs[rank], OP_SUM, i, "tp", ALGOS[kind])
                exp = expected(spec, ALGOS[kind], xs, dtype, OP_SUM)
            elif kind == 3:
                out = comm.broadcast_from_worker0(xs[rank], i)
                exp = xs[0]
            elif kind == 4:
                out = comm.allgather(xs[rank].reshape(-1, 1), i).ravel()
                exp = np.concatenate(xs)
            else:
                full = np.concatenate(xs).reshape(count, W)  # split along axis 1
                src = full if rank == 0 else np.zeros_like(full)
                out = comm.scatter_from_worker0(src, 1, i)
                exp = full[:, rank:rank + 1]
            if not np.array_equal(out.view(np.uint8).ravel(),
                                  np.ascontiguousarray(exp).view(np.uint8).ravel()):
                bad.append(f"call {i} kind {kind} {dtype} n={count}")
        stats = comm.stats().model_dump()
    return {"bad": bad, "stats": stats}


def job_gather_scatter(spec_json: str, rank: int) -> dict:
    spec = CommSpec.model_validate_json(spec_json)
    W = spec.world_size
    bad = []
    with Communicator.create(spec, rank) as comm:
        for shape in [(1,), (3, 5), (4, 2, 6), (1000, 33)]:
            x = (np.arange(np.prod(shape)).reshape(shape) * (rank + 1)).astype(np.float32)
            b = comm.broadcast_from_worker0(x, 1)
            if not np.array_equal(b, np.arange(np.prod(shape)).reshape(shape)):
                bad.append(f"broadcast {shape}")
            g = comm.allgather(x, 2)
            exp = np.concatenate([(np.arange(np.prod(shape)).reshape(shape) * (q + 1))
                                  .astype(np.float32) for q in range(W)])
            if not np.array_equal(g, exp):
                bad.append(f"allgather {shape}")
            for axis in range(len(shape)):
                big = list(shape)
                big[axis] *= W
                full = np.arange(np.prod(big), dtype=np.int32).reshape(big)
                src = full if rank == 0 else np.full(big, -1, np.int32)
                got = comm.scatter_from_worker0(src, axis, 3)
                want = np.split(full, W, axis=axis)[rank]
                if not np.array_equal(got, want):
                    bad.append(f"scatter {big} axis {axis}")
        # in place: out is x
        y = np.full(10, rank, np.float32)
        comm.broadcast_from_worker0(y, 4, "tp", y)
        if not (y == 0).all():
            bad.append("broadcast in place")
        z = np.full(10, rank + 1, np.float32)
        comm.allreduce(z, OP_SUM, 5, "tp", "two_shot", z)
        if not (z == W * (W + 1) / 2).all():
            bad.append("allreduce in place")
    return {"bad": bad}


def job_stats(spec_json: str, rank: int, algo: str, nbytes: int, calls: int) -> dict:
    spec = CommSpec.model_validate_json(spec_json)
    with Communicator.create(spec, rank) as comm:
        x = np.ones(nbytes // 4, np.float32)
        for _ in range(calls):
            comm.allreduce(x, OP_SUM, 0, "tp", algo)
        return comm.stats().model_dump()


def job_idle(spec_json: str, rank: int, conn_ready: object = None) -> None:
    """Join, do one all-reduce, then wait to be killed."""
    spec = CommSpec.model_validate_json(spec_json)
    comm = Communicator.create(spec, rank)
    comm.allreduce(np.ones(4, np.float32))
    time.sleep(3600)


def job_tvm(spec_json: str, rank: int, lib_path: str) -> dict:
    import tvm
    from tvm import relax

    from numaplan.runtime.ccl.tvm_functions import register_tvm_functions

    spec = CommSpec.model_validate_json(spec_json)
    W = spec.world_size
    with Communicator.create(spec, rank) as comm:
        register_tvm_functions(comm)
        vm = relax.VirtualMachine(tvm.runtime.load_module(lib_path), tvm.cpu())
        x = np.arange(32, dtype="float16").reshape(4, 8) * (rank + 1)
        out = vm["main"](tvm.runtime.tensor(x)).numpy()
        exp = (np.arange(32, dtype=np.float32).reshape(4, 8) * sum(range(1, W + 1)))
        return {"ok": bool(np.array_equal(out, exp.astype(np.float16))),
                "calls": comm.stats().per_kind["allreduce"].calls}


# -- the rank pool --------------------------------------------------------------------------------
def _serve(conn) -> None:
    while True:
        msg = conn.recv()
        if msg is None:
            return
        name, args = msg
        try:
            conn.send(("ok", globals()[name](*args)))
        except BaseException as exc:  # report everything: the test decides
            conn.send(("error", f"{type(exc).__name__}: {exc}", getattr(exc, "reason", None),
                       getattr(exc, "peer", None)))


class RankError(Exception):
    pass


class RankPool:
    """Ranks 1..n as spawn processes; rank 0 runs in a thread of the calling process."""

    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for _ in range(n):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_serve, args=(b,), daemon=True)
            p.start()
            self.conns.append(a)
            self.procs.append(p)

    def run(self, fn, spec: CommSpec, *args, timeout: float = 120.0) -> list:
        W = spec.world_size
        sj = spec.model_dump_json()
        for r in range(1, W):
            self.conns[r - 1].send((fn.__name__, (sj, r, *args)))
        box: dict = {}

        def rank0() -> None:
            try:
                box["r"] = ("ok", fn(sj, 0, *args))
            except BaseException as exc:
                box["r"] = ("error", f"{type(exc).__name__}: {exc}", None, None)

        t = threading.Thread(target=rank0, name="rank0")
        t.start()
        results = []
        try:
            for r in range(1, W):
                if not self.conns[r - 1].poll(timeout):
                    raise RankError(f"rank {r} did not answer within {timeout} s")
                results.append(self.conns[r - 1].recv())
        finally:
            t.join(timeout)
            cleanup(spec.namespace)
        results.insert(0, box.get("r", ("error", "rank 0 hung", None, None)))
        errors = [f"rank {r}: {res[1]}" for r, res in enumerate(results) if res[0] != "ok"]
        if errors:
            raise RankError("\n".join(errors))
        return [res[1] for res in results]

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(Exception):
                c.send(None)
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()


@pytest.fixture(scope="module")
def pool():
    p = RankPool(3)
    yield p
    p.close()


def make_spec(W: int, nodes: tuple[int, ...] | None = None, **kw) -> CommSpec:
    nodes = nodes or (0,) * W
    kw.setdefault("timeout_s", 20.0)
    return CommSpec(namespace=new_namespace("test"), node_of_rank=nodes,
                    mem_node_of_rank=(0,) * W, **kw)


def _matrix_cases(counts, dtypes, ops_counts) -> list[tuple]:
    cases = []
    seed = 1
    for algo in ALGOS:
        for dtype in dtypes:
            for count in counts:
                cases.append((algo, dtype, count, OP_SUM, seed))
                seed += 1
            for op in (OP_MAX, OP_MIN, OP_AVG, OP_PROD):
                for count in ops_counts:
                    cases.append((algo, dtype, count, op, seed))
                    seed += 1
    return cases


# 4 B .. 1 MiB (float32), odd sizes included
COUNTS = (1, 2, 3, 17, 1000, 4099, 65543, 262144)
DTYPES = ("float32", "float16", "int32", "bfloat16")


def _check_matrix(results: list[dict]) -> None:
    for r, res in enumerate(results):
        assert not res["bad"], f"rank {r}: " + "\n".join(res["bad"][:10])
    for r in range(1, len(results)):
        assert results[r]["digests"] == results[0]["digests"], f"rank {r} differs from rank 0"


# -- results --------------------------------------------------------------------------------------
@pytest.mark.parametrize("W,nodes", [(2, None), (4, None), (2, (0, 1)), (4, (0, 0, 1, 1))],
                         ids=["W2", "W4", "W2-2nodes", "W4-2nodes"])
def test_allreduce_matches_reference(pool, W, nodes):
    spec = make_spec(W, nodes)
    cases = _matrix_cases(COUNTS, DTYPES, (3, 4099))
    _check_matrix(pool.run(job_matrix, spec, cases))


def test_allreduce_in_chunks_larger_than_the_slot(pool):
    spec = make_spec(2, slot_bytes=64 << 10)  # 1 MiB messages -> 16 chunks
    cases = _matrix_cases((16385, 262144 + 3), ("float32", "float16"), ())
    _check_matrix(pool.run(job_matrix, spec, cases))


def test_uneven_nodes_hierarchical(pool):
    spec = make_spec(3, (0, 1, 1))  # a node of one rank (its leader alone) and one of two
    cases = _matrix_cases((3, 4099), ("float16", "int32"), (5,))
    _check_matrix(pool.run(job_matrix, spec, cases))


@pytest.mark.parametrize("W,nodes", [(2, None), (4, None), (4, (0, 0, 1, 1)), (3, (0, 1, 1))])
def test_many_calls_with_skew(pool, W, nodes):
    # slot of 16 KiB: the largest messages (80 KiB) also go in chunks
    spec = make_spec(W, nodes, slot_bytes=16 << 10)
    results = pool.run(job_mixed, spec, 300, 7 + W, 0.002)
    for r, res in enumerate(results):
        assert not res["bad"], f"rank {r}: {res['bad'][:5]}"


@pytest.mark.parametrize("W,nodes", [(2, None), (4, (0, 0, 1, 1))])
def test_broadcast_allgather_scatter(pool, W, nodes):
    for r, res in enumerate(pool.run(job_gather_scatter, make_spec(W, nodes))):
        assert not res["bad"], f"rank {r}: {res['bad']}"


def test_local_reduction_kernel_equals_the_reference():
    import ctypes

    from numaplan.runtime.ccl.kernel import load_library

    lib = load_library()
    for dtype, code in DTYPE_CODES.items():
        for op in range(len(REDUCE_OPS)):
            for count in (1, 7, 8, 9, 1000):
                for nsrc in (1, 2, 5):
                    gd = "float32" if dtype in ("float64",) else \
                        "int32" if dtype == "int64" else dtype
                    srcs = [gen(count * 31 + k, op, count, gd) for k in range(nsrc)]
                    if dtype in ("float64", "int64"):
                        srcs = [s.astype(dtype) for s in srcs]
                    got = np.zeros_like(srcs[0])
                    ptrs = (ctypes.c_void_p * nsrc)(*[s.ctypes.data for s in srcs])
                    assert lib.reduce(got.ctypes.data, ptrs, nsrc, count, code, op, 1, 3) == 0
                    want = reduce_ref(srcs, dtype, op, True, 3)
                    assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), \
                        (dtype, op, count, nsrc)


# -- stats ----------------------------------------------------------------------------------------
def test_stats_count_cross_node_bytes(pool):
    m, calls = 4096, 10
    # W=4 on two (simulated) nodes, hierarchical: a leader reads its member's buffer (same
    # node) and the other node's partial (cross); a member reads its leader's result.
    res = pool.run(job_stats, make_spec(4, (0, 0, 1, 1)), "hierarchical", m, calls)
    lead, member = res[0], res[1]
    assert lead["bytes_read"] == 2 * m * calls
    assert lead["cross_node_bytes_read"] == m * calls
    assert lead["inter_node_percentage"] == pytest.approx(50.0)
    assert member["bytes_read"] == m * calls and member["cross_node_bytes_read"] == 0
    assert lead["calls"] == calls and lead["bytes"] == m * calls
    assert lead["per_kind"]["allreduce"]["calls"] == calls
    assert lead["allreduce_algorithms"]["hierarchical"] == calls
    # all segments are on memory node 0 here: nothing is remote memory
    assert lead["remote_memory_bytes_read"] == 0
    # flat one-shot over the same ranks: 2 of the 3 peers' buffers are on the other node
    res = pool.run(job_stats, make_spec(4, (0, 0, 1, 1)), "one_shot", m, calls)
    assert res[0]["inter_node_percentage"] == pytest.approx(100 * 2 / 3)
    res = pool.run(job_stats, make_spec(2), "one_shot", m, calls)
    assert res[0]["inter_node_percentage"] == 0.0 and res[0]["bytes_read"] == m * calls


# -- failures -------------------------------------------------------------------------------------
def test_timeout_names_the_missing_rank():
    spec = make_spec(2, timeout_s=0.5)
    with Communicator.create(spec, 0) as comm:
        t0 = time.monotonic()
        with pytest.raises(CollectiveError) as ei:
            comm.allreduce(np.ones(16, np.float32), OP_SUM, 3)
        took = time.monotonic() - t0
        assert ei.value.reason == "timeout" and ei.value.peer == 1 and ei.value.rank == 0
        assert "rank 1" in str(ei.value) and "collective id 3" in str(ei.value)
        assert 0.45 < took < 3.0
        with pytest.raises(CollectiveError, match="broken") as ei2:
            comm.allreduce(np.ones(16, np.float32))
        assert ei2.value.peer == 1
    assert segments.segment_paths(spec.namespace) == []


def test_killed_peer_is_reported_and_cleanup_removes_everything():
    spec = make_spec(2, (0, 1), timeout_s=30.0)  # rank 1 creates (and leaves) node 1's segment
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=job_idle, args=(spec.model_dump_json(), 1), daemon=True)
    proc.start()
    try:
        comm = Communicator.create(spec, 0)
        comm.allreduce(np.ones(4, np.float32))  # both alive
        proc.kill()
        time.sleep(0.05)  # not joined: the child is a zombie, which counts as dead
        t0 = time.monotonic()
        with pytest.raises(CollectiveError) as ei:
            comm.allreduce(np.ones(4, np.float32))
        assert time.monotonic() - t0 < 5.0, "a dead peer must not wait for the timeout"
        assert ei.value.reason == "dead" and ei.value.peer == 1
        assert "died" in str(ei.value)
        paths = segments.segment_paths(spec.namespace)
        assert {p.name for p in paths} == {f"{spec.namespace}-node0", f"{spec.namespace}-node1"}
        removed = cleanup(spec.namespace)
        assert len(removed) == 2
        assert segments.segment_paths(spec.namespace) == []
        comm.close()
        assert segments.segment_paths(spec.namespace) == []
    finally:
        proc.kill()
        proc.join(5)
        cleanup(spec.namespace)


def _threads(spec: CommSpec, fns) -> list:
    box: list = [None] * len(fns)

    def run(r):
        try:
            with Communicator.create(spec, r) as comm:
                box[r] = fns[r](comm)
        except BaseException as exc:
            box[r] = exc

    ts = [threading.Thread(target=run, args=(r,)) for r in range(len(fns))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    return box


def test_abort_stops_waiting_peers():
    spec = make_spec(2, timeout_s=20.0)

    def rank0(comm):
        comm.allreduce(np.ones(4, np.float32))
        t0 = time.monotonic()
        try:
            comm.allreduce(np.ones(4, np.float32))
        except CollectiveError as exc:
            return exc, time.monotonic() - t0
        return None

    def rank1(comm):
        comm.allreduce(np.ones(4, np.float32))
        time.sleep(0.2)
        comm.abort("worker 1 gives up")

    (exc, took), _ = _threads(spec, [rank0, rank1])
    assert exc.reason == "aborted" and exc.peer == 1
    assert "worker 1 gives up" in str(exc)
    assert took < 3.0


def test_mismatched_calls_are_detected():
    spec = make_spec(2, timeout_s=5.0)

    def call(n, algo):
        def f(comm):
            try:
                comm.allreduce(np.ones(n, np.float32), OP_SUM, 9, "tp", algo)
            except CollectiveError as exc:
                return exc
        return f

    res = _threads(spec, [call(16, "one_shot"), call(8, "one_shot")])
    assert all(isinstance(e, CollectiveError) for e in res), res
    assert {e.reason for e in res} <= {"mismatch", "aborted"}
    assert any(e.reason == "mismatch" and "64 bytes" in str(e) and "32 bytes" in str(e)
               for e in res)
    res = _threads(make_spec(2, timeout_s=5.0), [call(16, "one_shot"), call(16, "two_shot")])
    assert any(e.reason == "mismatch" and "two_shot" in str(e) for e in res), res


def test_usage_errors():
    spec = make_spec(1)
    with Communicator.create(spec, 0) as comm:
        with pytest.raises(CollectiveError, match="unknown collective group"):
            comm.allreduce(np.ones(4, np.float32), OP_SUM, 0, "dp")
        with pytest.raises(CollectiveError, match="unknown all-reduce algorithm"):
            comm.allreduce(np.ones(4, np.float32), OP_SUM, 0, "tp", "ring")
        with pytest.raises(CollectiveError, match="op code"):
            comm.allreduce(np.ones(4, np.float32), 9)
        with pytest.raises(CollectiveError, match="does not support dtype"):
            comm.allreduce(np.ones(4, np.uint8))
        with pytest.raises(CollectiveError, match="C-contiguous"):
            comm.allreduce(np.ones((4, 4), np.float32)[:, 1])
        with pytest.raises(CollectiveError, match="out has"):
            comm.allreduce(np.ones(4, np.float32), out=np.ones(5, np.float32))
        # W = 1: every collective is a copy
        assert (comm.allreduce(np.arange(4.0, dtype=np.float32), OP_AVG) == np.arange(4)).all()
        assert comm.allgather(np.ones((2, 3), np.int32)).shape == (2, 3)
    with pytest.raises(CollectiveError, match="closed"):
        comm.allreduce(np.ones(4, np.float32))
    with pytest.raises(CollectiveError, match="outside"):
        Communicator.create(spec, 1)


def test_without_a_compiler_create_says_so_in_one_line(monkeypatch):
    """The C kernel is the only engine: no compiler, no communicator, and a one-line reason."""
    monkeypatch.setenv("CC", "/nonexistent/cc")
    spec = make_spec(1)
    with pytest.raises(CollectiveError, match="no C compiler found") as ei:
        Communicator.create(spec, 0)
    assert "\n" not in str(ei.value) and ei.value.reason == "setup"
    assert segments.segment_paths(spec.namespace) == []


# -- segments -------------------------------------------------------------------------------------
def test_segments_are_private_homed_and_unlinked():
    spec = make_spec(2, (0, 1))  # two segments, both bound to memory node 0 on this machine

    def check(comm):
        node = spec.node_of_rank[comm.rank]
        path = spec.segment_path(node)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        created = comm.creation_audits[node]
        comm.barrier()
        now = comm.audit()
        comm.barrier()
        return mode, created, now, comm.placements[node]

    res = _threads(spec, [check, check])
    for r, (mode, created, now, placement) in enumerate(res):
        assert mode == 0o600
        assert created.complete and created.on_target_fraction == 1.0
        assert created.pages_checked == created.pages_total
        assert created.target_node_ids == (0,)
        assert set(now) == {0, 1} and all(a.on_target_fraction == 1.0 for a in now.values())
        assert placement.achieved is not None and placement.achieved.mode == "bind"
        assert not placement.degraded, r
    assert segments.segment_paths(spec.namespace) == []


def test_segment_names_are_exclusive():
    spec = make_spec(1)
    with Communicator.create(spec, 0) as comm:
        assert len(comm.segment_paths) == 1
        with pytest.raises(CollectiveError, match="exists already"):
            Communicator.create(spec, 0)
        assert segments.segment_paths(spec.namespace) != []  # the failed attempt removed nothing
    assert segments.segment_paths(spec.namespace) == []
    assert not list(Path("/dev/shm").glob(f"{spec.namespace}*"))


def test_missing_creator_times_out_on_connect():
    spec = make_spec(2, (0, 1), connect_timeout_s=0.3)
    with pytest.raises(CollectiveError, match="rank 1 did not create"):
        Communicator.create(spec, 0)
    assert segments.segment_paths(spec.namespace) == []


def test_atexit_unlinks_segments_of_a_process_that_forgot_close(tmp_path):
    import subprocess
    import sys

    ns = new_namespace("atexit")
    code = ("from numaplan.runtime.ccl import CommSpec, Communicator;"
            f"c = Communicator.create(CommSpec(namespace={ns!r}, node_of_rank=(0,)), 0);"
            "import os; print(os.path.exists(c.segment_paths[0]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "True"
    assert segments.segment_paths(ns) == []


# -- spec -----------------------------------------------------------------------------------------
def test_spec_defaults_and_derived_fields():
    one = CommSpec(namespace="a-b", node_of_rank=(0, 0, 0))
    assert one.world_size == 3 and one.mem_node_of_rank == (0, 0, 0)
    assert one.algorithm_for(16 << 10) == "one_shot"
    assert one.algorithm_for(1 << 20) == "two_shot"
    two = CommSpec(namespace="a-b", node_of_rank=(2, 2, 5, 5), mem_node_of_rank=(2, 2, 4, 4))
    assert two.algorithm_for(16 << 10) == "hierarchical"
    assert two.nodes == (2, 5)
    assert two.intra_node_groups == ((0, 1), (2, 3))
    assert two.leaders == two.inter_node_leaders == (0, 2)
    assert two.leader_of(3) == 2 and two.segment_mem_node(5) == 4
    assert two.segment_path(5) == Path("/dev/shm/a-b-node5")
    assert one.inter_node_leaders == ()
    with pytest.raises(ValueError, match="namespace"):
        CommSpec(namespace="../x", node_of_rank=(0,))
    with pytest.raises(ValueError, match="world_size"):
        CommSpec(namespace="x", node_of_rank=(0, 0), world_size=3)
    with pytest.raises(ValueError, match="end with a rule"):
        CommSpec(namespace="x", node_of_rank=(0,),
                 algorithms=(AlgorithmRule(below_bytes=10, algorithm="one_shot"),))


def test_spec_from_plan():
    from numaplan.plan import plan_from_dict

    plan = plan_from_dict(json.loads((GOLDEN / "2s1n.plan.json").read_text()))
    spec = CommSpec.from_plan(plan, "ns-1", timeout_s=5.0)
    assert spec.world_size == len(plan.workers)
    assert spec.node_of_rank == tuple(w.node_id for w in plan.workers)
    assert spec.mem_node_of_rank == tuple(w.mem_node_id for w in plan.workers)
    assert spec.intra_node_groups == plan.collectives.intra_node_groups
    assert spec.inter_node_leaders == plan.collectives.inter_node_leaders
    assert spec.timeout_s == 5.0
    for c in plan.collectives.choices:
        assert spec.algorithm_for(c.message_bytes) == c.algorithm
    assert spec.slot_bytes % 4096 == 0 and 64 << 10 <= spec.slot_bytes <= 4 << 20


def test_collective_module_does_not_import_tvm():
    import subprocess
    import sys

    code = ("import sys, numaplan.runtime.ccl;"
            "print([m for m in ('tvm', 'tvm_ffi') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


# -- TVM ------------------------------------------------------------------------------------------
def _relax_module():
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Mod:
        @R.function(pure=False)
        def main(x: R.Tensor((4, 8), "float16")):
            a = R.call_dps_packed("numaplan.ccl.allreduce",
                                  (x, 0, 0, R.str("tp"), R.str("one_shot")),
                                  out_ty=R.Tensor((4, 8), "float16"))
            return a

    return Mod


@pytest.mark.tvm
def test_tvm_functions_write_the_vm_output_in_place():
    import tvm
    from tvm import relax

    from numaplan.runtime.ccl.tvm_functions import as_numpy, register_tvm_functions

    ex = tvm.compile(_relax_module(), target="llvm")
    spec = make_spec(1)
    with Communicator.create(spec, 0) as comm:
        assert register_tvm_functions(comm) == FUNCTION_NAMES
        vm = relax.VirtualMachine(ex, tvm.cpu())
        x = np.arange(32, dtype=np.float16).reshape(4, 8)
        assert np.array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x)
        assert comm.stats().per_kind["allreduce"].calls == 1
        # the destination tensor is written in place (no copy back)
        f = tvm.get_global_func("numaplan.ccl.allreduce")
        out = tvm.runtime.empty((4, 8), "float16")
        f(tvm.runtime.tensor(x), 0, 0, "tp", "one_shot", out)
        assert np.array_equal(out.numpy(), x)
        view = as_numpy(out)  # zero-copy: the same memory
        view[0, 0] = 99
        assert out.numpy()[0, 0] == 99
        g = tvm.get_global_func("numaplan.ccl.scatter_from_worker0")
        o2 = tvm.runtime.empty((4, 8), "float16")
        g(tvm.runtime.tensor(x), 1, 0, "tp", o2)
        assert np.array_equal(o2.numpy(), x)
        h = tvm.get_global_func("numaplan.ccl.allgather")
        o3 = tvm.runtime.empty((4, 8), "float16")
        h(tvm.runtime.tensor(x), 0, "tp", o3)
        assert np.array_equal(o3.numpy(), x)
        b = tvm.get_global_func("numaplan.ccl.broadcast_from_worker0")
        o4 = tvm.runtime.empty((4, 8), "float16")
        b(tvm.runtime.tensor(x), 0, "tp", o4)
        assert np.array_equal(o4.numpy(), x)
        # bfloat16 (numpy has no such dtype: viewed as uint16)
        bits = f32_to_bf16(np.arange(8, dtype=np.float32))
        src = tvm.runtime.tensor(bits)._create_view((8,), "bfloat16")
        dst = tvm.runtime.empty((8,), "bfloat16")
        f(src, 4, 0, "tp", "one_shot", dst)
        assert as_numpy(dst).dtype == np.uint16
        assert np.array_equal(as_numpy(dst), bits)
        with pytest.raises(Exception, match=r"must be a contiguous|not supported"):
            f(tvm.runtime.tensor(np.ones(4, np.uint8)), 0, 0, "tp", "one_shot",
              tvm.runtime.empty((4,), "uint8"))


@pytest.mark.tvm
def test_tvm_functions_two_ranks(pool, tmp_path):
    import tvm

    lib = tmp_path / "ccl_test.so"
    tvm.compile(_relax_module(), target="llvm").export_library(str(lib))
    res = pool.run(job_tvm, make_spec(2), str(lib))
    assert all(r["ok"] and r["calls"] == 1 for r in res), res


def test_portable_build_is_keyed_without_the_cpu(monkeypatch, tmp_path):
    """NUMAPLAN_CCL_PORTABLE=1 builds the -O2 library, whose cache key ignores the CPU's flags
    (a host can build it for its QEMU guests); the -march=native key does not."""
    from numaplan import _cbuild
    from numaplan._cbuild import find_compiler
    from numaplan.runtime.ccl import kernel

    cc = find_compiler()
    if cc is None:
        pytest.skip("no C compiler")
    native, portable = kernel.FLAG_CHOICES
    keys = {}
    for cpu in ("fpu sse2 avx2", "fpu sse2"):
        monkeypatch.setattr(_cbuild, "cpu_flags", lambda cpu=cpu: cpu)
        keys[cpu] = (kernel.library_path(cc, native, tmp_path),
                     kernel.library_path(cc, portable, tmp_path))
    (n1, p1), (n2, p2) = keys.values()
    assert n1 != n2 and p1 == p2
    monkeypatch.setenv("NUMAPLAN_CCL_PORTABLE", "1")
    assert kernel.compile_library(cache=tmp_path) == p1 and p1.is_file()
    assert not n1.exists() and not n2.exists()


# -- placement: refused calls and misplaced segments -------------------------------------------
def test_refused_segment_placement_downgrades_under_fallback(fake_numa):
    """Issue 14 4b: with mbind and move_pages refused, ``allow_placement_fallback`` creates the
    segment unbound and unaudited and records both downgrades in the stats (before: the bind
    outcome was dropped and the refused audit failed the communicator); without it, creation
    fails naming the call."""
    from numaplan.errors import PlacementError

    fake_numa(nodes=(0,), refuse={"mbind", "move_pages"})
    spec = make_spec(1).model_copy(update={"allow_placement_fallback": True})
    with Communicator.create(spec, 0) as comm:
        st = comm.stats()
        assert [(d.call, d.errno, d.fallback) for d in st.downgrades] == [
            ("mbind", "EPERM", "no policy (first touch)"), ("move_pages", "EPERM", "not audited")]
        assert st.segment_audits == ()
        comm.allreduce(np.ones(4, np.float32))  # it works all the same
    with pytest.raises((CollectiveError, PlacementError), match=r"mbind failed \(EPERM"):
        Communicator.create(make_spec(1), 0)
    assert segments.segment_paths(spec.namespace) == []


def test_misplaced_segment_reaches_stats_and_strict_mode(fake_numa):
    """Issue 14 4h: a segment whose pages are not on its memory node is in the stats (and the
    --stats block) and strict mode refuses it (before: a logged warning only)."""
    from numaplan.cli.run import render_stats
    from numaplan.errors import PlacementError
    from numaplan.runtime.protocol import SetupReport, WorkerReport
    from numaplan.runtime.stats import runtime_stats
    from numaplan.runtime.worker import check_collective_placement

    kernel = fake_numa(nodes=(0, 1))
    kernel.node_of = lambda address: 1  # the kernel put every page on node 1
    spec = make_spec(1)
    with Communicator.create(spec, 0) as comm:
        st = comm.stats()
        assert len(st.misplaced_segments) == 1 and "node 1:" in st.misplaced_segments[0]
        assert st.kernel.startswith("ccl") and "-O" in st.kernel
        check_collective_placement(comm, 0, strict=False)
        setup = SetupReport(worker_id=0, pid=1, tid=1, node_id=0, mem_node_id=0,
                            cpus_planned="0", cpus_thread="0", mempolicy="bind to node 0",
                            pool_threads=1, notes=("a note",))
        rs = runtime_stats([WorkerReport(setup=setup, threads=(), collective=st)], step_s=None,
                           collective_s=None, load_s=None)
        assert not rs.workers[0].collective_segments_on_node
        text = render_stats(rs, "x.so")
        assert "(MISPLACED)" in text and "collective kernel: ccl" in text
        assert "note: a note" in text
        with pytest.raises(PlacementError, match=r"worker 0: strict placement refuses "
                                                 r"collective segment for node 0: pages on "
                                                 r"node 0: 0\.0%"):
            check_collective_placement(comm, 0, strict=True)
