"""``--mode`` as MLC means it: the batch a plan is made for (interactive 1, local 4, server as
many context-window-long sequences as memory allows)."""

from __future__ import annotations

import pytest

from numaplan.model import (
    kv_cache_bytes_per_token,
    load_workload,
    total_mem_nbytes,
    write_hf_config,
)
from numaplan.plan.settings import (
    SERVER_MAX_BATCH,
    PlanSettings,
    mode_batch_size,
    resolve_settings,
)
from numaplan.topology.synthetic import synthetic_topology

GiB = 1 << 30


@pytest.fixture(scope="module")
def workload(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf")
    write_hf_config(d, "tiny-llama")
    return load_workload(d, quantization="q0f16")


def test_fixed_modes(workload):
    topo = synthetic_topology()
    assert mode_batch_size("interactive", workload, topo) == 1
    assert mode_batch_size("local", workload, topo) == 4


def test_server_mode_follows_free_memory(workload):
    big = synthetic_topology(mem_per_node_bytes=64 * GiB)
    assert mode_batch_size("server", workload, big) == SERVER_MAX_BATCH
    per_seq = workload.context_window_size * kv_cache_bytes_per_token(workload)
    # Memory for about 3 sequences' KV caches after the share kept for everything else.
    small = synthetic_topology(sockets=1, mem_per_node_bytes=8 * per_seq, free_fraction=1.0)
    n = mode_batch_size("server", workload, small)
    assert 1 <= n < SERVER_MAX_BATCH
    assert n * per_seq <= small.nodes[0].mem_free_bytes / 2
    tiny = synthetic_topology(sockets=1, mem_per_node_bytes=total_mem_nbytes(workload),
                              free_fraction=1.0)
    assert mode_batch_size("server", workload, tiny) == 1  # never zero: one always runs


def test_mode_sets_the_plans_batch(workload):
    topo = synthetic_topology()
    opts, _ = resolve_settings(PlanSettings(mode="interactive", tensor_parallel_shards=1),
                               workload, topo)
    assert opts.batch_size == 1
    opts, _ = resolve_settings(PlanSettings(mode="local", tensor_parallel_shards=1),
                               workload, topo)
    assert opts.batch_size == 4
    opts, _ = resolve_settings(PlanSettings(batch_size=3, tensor_parallel_shards=1),
                               workload, topo)
    assert opts.batch_size == 3
