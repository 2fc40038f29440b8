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
    from examples.tiny_llama.reference import load_full_weights

    d = model_dirs[dtype]
    wl = load_workload(d)
    plan = make_plan(wl, this_machine, cost_from_slit(this_machine),
                     PlanOptions(tensor_parallel_shards=W, oversubscribe=True), model_name="m")[0]
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
