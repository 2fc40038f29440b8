"""Tensor-parallel generation equals the single-process run; placement measured; crashes."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from numaplan.errors import WorkerDiedError
from numaplan.runtime.session import NumaRuntime, RunOptions

pytestmark = pytest.mark.tvm

PROMPT = [5, 17, 99, 3]
STEPS = 8
#: float32 weights: TP changes only the summation order (fp32 all-reduce).
#: float16: the partial sums are rounded to float16 before the all-reduce (as MLC does), so
#: logits move by a few float16 ulps of the activations.
TOLERANCE = {"float32": dict(rtol=1e-4, atol=1e-4), "float16": dict(rtol=2e-2, atol=6e-2)}


def _run(model_dir, lib, **opts):
    with NumaRuntime(model_dir, lib, options=RunOptions(**opts)) as rt:
        res = rt.generate(PROMPT, STEPS, return_logits=True)
        return res, rt.stats()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("W", [2, 4])
def test_tp_matches_single_process(model_dirs, libraries, dtype, W):
    d = model_dirs[dtype]
    ref, _ = _run(d, libraries(dtype, 1)[1])
    res, stats = _run(d, libraries(dtype, W)[1])
    assert res.tokens == ref.tokens
    np.testing.assert_allclose(np.array(res.logits), np.array(ref.logits), **TOLERANCE[dtype])
    # Placement, read back from the running workers.
    assert len(stats.workers) == W
    assert all(w.threads_on_planned_cpus for w in stats.workers)
    assert stats.weight_local_percentage == 100.0
    assert all(w.weight_bytes == w.weight_bytes_on_planned_node > 0 for w in stats.workers)
    assert all(w.mempolicy == f"bind to node {w.mem_node_id}" for w in stats.workers)
    # One node: worker 0 wrote the replicated tensors once, the others map that copy.
    shared = stats.workers[1].weight_bytes_shared_mapped
    assert shared > 0 and stats.workers[0].weight_bytes_shared_mapped == 0
    assert all(w.weight_bytes_shared_mapped == shared for w in stats.workers[1:])
    assert all(w.weight_bytes_loaded + w.weight_bytes_shared_mapped == w.weight_bytes
               for w in stats.workers)
    # Two all-reduces per layer per step and one broadcast of the token ids (MLC's embed),
    # on every worker, none across nodes (one node here).
    layers = 4
    assert stats.collective_calls == W * (2 * layers + 1) * STEPS
    assert stats.inter_node_percentage == 0.0
    assert stats.collective_s_per_step is not None and stats.collective_s_per_step > 0
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("numaplan-")]


def test_worker_pids_and_threads_are_real(model_dirs, libraries):
    from numaplan.osnuma import process_thread_affinities
    from numaplan.topology import parse_cpulist

    d = model_dirs["float32"]
    with NumaRuntime(d, libraries("float32", 2)[1]) as rt:
        rt.generate(PROMPT, 2)
        stats = rt.stats()
        worker1 = stats.workers[1]
        assert worker1.pid != os.getpid()
        # Every thread of worker 1's process, read from /proc here (not by the worker).
        planned = set(parse_cpulist(worker1.cpus_planned))
        for t in process_thread_affinities(worker1.pid):
            assert set(t.cpus_allowed) <= planned, t


def _shm_of(rt):
    return [f for f in os.listdir("/dev/shm") if f.startswith(rt.namespace)]


def _kill_later(rt, wid, after_s, done):
    def run():
        deadline = time.monotonic() + 30
        while not rt.worker_pids and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(after_s)
        os.kill(rt.worker_pids[wid], signal.SIGKILL)
        done.append(time.monotonic())
    threading.Thread(target=run, daemon=True).start()


def test_worker_killed_during_load(model_dirs, libraries):
    d = model_dirs["float32"]
    rt = NumaRuntime(d, libraries("float32", 2)[1],
                     options=RunOptions(inject_delay_s={"load": 3.0}))
    killed: list[float] = []
    _kill_later(rt, 1, 0.5, killed)
    with pytest.raises(WorkerDiedError, match=r"worker 1 .* died during load") as exc:
        rt.start()
    assert time.monotonic() - killed[0] < 10
    assert "shared memory removed" in str(exc.value)
    assert not _shm_of(rt)
    assert not any(Path(f"/proc/{p}").exists() and _state(p) not in ("Z", "X")
                   for p in rt.worker_pids.values())


def test_worker_killed_during_decode(model_dirs, libraries):
    d = model_dirs["float32"]
    rt = NumaRuntime(d, libraries("float32", 2)[1]).start()
    killed: list[float] = []
    _kill_later(rt, 1, 0.3, killed)
    with pytest.raises(WorkerDiedError, match=r"worker 1 .* died during decode"):
        rt.generate(PROMPT, 500)  # the context window (512) allows ~0.7 s of decode
    assert time.monotonic() - killed[0] < 10
    rt.close()
    assert not _shm_of(rt)
    assert not any(_state(p) not in ("Z", "X", None) for p in rt.worker_pids.values())


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return None


def test_worker_refusal_at_start_exits_cleanly(model_dirs, libraries, tmp_path):
    """Worker 1 refuses its placement (strict mode, a node this machine lacks): start() raises
    PlacementError naming worker 1, and the process then exits normally. (TVM aborts a process
    whose Disco handle outlives the session; the error's traceback used to hold one.)"""
    import subprocess
    import sys

    _, lib = libraries("float32", 2)
    script = tmp_path / "refuse.py"
    script.write_text(
        "import sys\n"
        "from numaplan.errors import PlacementError\n"
        "from numaplan.runtime.session import NumaRuntime, RunOptions\n"
        "opts = RunOptions(strict_placement=True, inject_misplacement={1: 7})\n"
        "rt = NumaRuntime(sys.argv[1], sys.argv[2], options=opts)\n"
        "try:\n"
        "    rt.start()\n"
        "except PlacementError as exc:\n"
        "    print('refused:', exc, flush=True)\n"
        "    print('namespace:', rt.namespace, flush=True)\n"
        "finally:\n"
        "    rt.close()\n")
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, str(script), str(model_dirs["float32"]), str(lib)],
                         capture_output=True, text=True, timeout=300, cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "refused: worker 1: cannot bind to node 7" in res.stdout
    ns = res.stdout.split("namespace: ")[1].strip()
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(ns)]


def test_replicated_copies_private_when_asked(model_dirs, libraries):
    """share_replicated=False: every worker loads its own copy (nothing mapped, nothing left in
    /dev/shm); the tokens do not change."""
    d = model_dirs["float32"]
    ref, _ = _run(d, libraries("float32", 1)[1])
    res, stats = _run(d, libraries("float32", 2)[1], share_replicated=False)
    assert res.tokens == ref.tokens
    assert all(w.weight_bytes_shared_mapped == 0 for w in stats.workers)
    assert all(w.weight_bytes_loaded == w.weight_bytes for w in stats.workers)
