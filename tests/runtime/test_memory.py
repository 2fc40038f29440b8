"""A worker's memory is what the plan budgets: its peak resident set, over that of a worker
holding next to nothing, stays within its planned weights and KV cache + 10 % (a model of
430 MB, two workers)."""

from __future__ import annotations

import json
import os

import pytest

from numaplan.cli.main import main
from numaplan.runtime.session import NumaRuntime
from numaplan.tiny_llama.build import SIZES, build_model_dir

pytestmark = [pytest.mark.tvm, pytest.mark.slow]


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def _worker1_peak(tmp, size: str) -> tuple[int, dict]:
    d = build_model_dir(tmp / size, size=size, dtype="float32")
    out = tmp / f"{size}-tp2"
    extra = ["--oversubscribe"] if len(os.sched_getaffinity(0)) < 2 else []
    assert main(["compile", str(d), "--tp", "2", "-o", str(out), *extra]) == 0
    with NumaRuntime(d, out / f"{d.name}-numa-llvm.so") as rt:
        rt.generate([1, 2, 3, 4], 8)
        peak = _peak_rss(rt.worker_pids[1])
        plan = json.loads((out / "numa-plan.json").read_text())
    return peak, plan


def test_worker_peak_rss_within_plan(tmp_path):
    base, _ = _worker1_peak(tmp_path, "tiny")  # the interpreter, TVM, a few KB of weights
    peak, plan = _worker1_peak(tmp_path, "bench")
    weights = sum(t["piece_nbytes"] for t in plan["tensors"])  # worker 1's share, incl. copies
    s = SIZES["bench"]
    kv_heads = s["num_key_value_heads"] // 2
    kv = s["num_hidden_layers"] * 2 * kv_heads * s["head_dim"] * 4 * s["context_window_size"]
    assert weights > 100 << 20
    assert peak - base <= 1.10 * (weights + kv), (peak - base, weights + kv)
