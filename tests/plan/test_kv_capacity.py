"""The KV cache a plan reserves, sized as MLC sizes ``max_total_sequence_length``, and the memory
figure each node's capacity rests on (live MemAvailable, a dump's total, free only when asked)."""

from __future__ import annotations

import logging

import pytest

from numaplan.cost import cost_from_slit
from numaplan.errors import InfeasiblePlanError
from numaplan.model.sizes import KV_PAGE_TOKENS, kv_cache_bytes_per_token
from numaplan.plan import PlanOptions, make_plan
from numaplan.plan.problem import MIN_KV_TOKENS
from numaplan.topology import read_sysfs, synthetic_topology, write_sysfs_tree

from .helpers import small_workload

GiB = 1 << 30

#: A Llama-3.1-8B-like shape with 32 KV heads and a 128K window: 512 KiB of KV cache per token,
#: 64 GiB for one full window at W=1.
LONG = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
            num_key_value_heads=32, num_hidden_layers=32, vocab_size=32000,
            max_position_embeddings=131072)


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    return small_workload(tmp_path_factory.mktemp("long"), **LONG)


def _plan(workload, topo, **opts):
    opts.setdefault("tensor_parallel_shards", 2)
    opts.setdefault("solver", "greedy")
    return make_plan(workload, topo, cost_from_slit(topo), PlanOptions(**opts),
                     model_name="m").plan


def test_window_reserved_when_it_fits(long_model):
    plan = _plan(long_model, synthetic_topology(sockets=2, mem_per_node_bytes=64 * GiB))
    kv = plan.kv_cache
    assert (kv.max_total_seq_len, kv.limited_by) == (131072, "context window")
    assert kv.bytes_per_token == kv_cache_bytes_per_token(long_model, num_workers=2)
    assert kv.bytes_per_worker == 131072 * kv.bytes_per_token


def test_long_window_shrinks_to_what_fits_with_a_warning(long_model, caplog):
    # 24 GiB nodes: the weights fit, a 128K window (32 GiB a worker at W=2) does not.
    topo = synthetic_topology(sockets=2, mem_per_node_bytes=24 * GiB)
    with caplog.at_level(logging.WARNING, logger="numaplan.plan.planner"):
        plan = _plan(long_model, topo)
    kv = plan.kv_cache
    assert kv.limited_by == "memory"
    assert MIN_KV_TOKENS <= kv.max_total_seq_len < 131072
    assert kv.max_total_seq_len % KV_PAGE_TOKENS == 0
    assert "context window of 131072 tokens is given up" in caplog.text
    # The largest page multiple: one more page would not fit on the fuller node.
    held = {n.node_id: n.bytes_homed for n in plan.nodes}
    cap = {n.node_id: n.mem_capacity_bytes for n in plan.nodes}
    assert all(held[n] <= cap[n] for n in held)
    slack = min(cap[n] - held[n] for n in held)
    assert slack < KV_PAGE_TOKENS * kv.bytes_per_token


def test_minimum_that_does_not_fit_names_the_longest_context(long_model):
    # 3.4 GiB nodes: ~2.4 GiB of weights a worker, room for ~2.7K tokens, below the minimum.
    topo = synthetic_topology(sockets=2, mem_per_node_bytes=int(3.4 * GiB))
    with pytest.raises(InfeasiblePlanError) as info:
        _plan(long_model, topo)
    msg = str(info.value)
    assert f"minimum KV cache of {MIN_KV_TOKENS} tokens per worker does not fit" in msg
    assert "lacks" in msg  # the node and the bytes
    longest = int(msg.split("the longest context that fits is ")[1].split()[0])
    assert 0 < longest < MIN_KV_TOKENS and f"--max-total-seq-len {longest}" in msg
    # ... and that context does plan.
    plan = _plan(long_model, topo, max_total_seq_len=longest)
    assert (plan.kv_cache.max_total_seq_len, plan.kv_cache.limited_by) == (longest, "request")


def test_explicit_capacity_is_exact_and_rounded_to_pages(long_model):
    topo = synthetic_topology(sockets=2, mem_per_node_bytes=64 * GiB)
    plan = _plan(long_model, topo, max_total_seq_len=8000)
    assert plan.kv_cache.max_total_seq_len == 8000 // KV_PAGE_TOKENS * KV_PAGE_TOKENS + \
        (KV_PAGE_TOKENS if 8000 % KV_PAGE_TOKENS else 0)
    assert plan.kv_cache.limited_by == "request"
    assert plan.request.max_total_seq_len == 8000


def test_explicit_capacity_too_large_is_refused(long_model):
    topo = synthetic_topology(sockets=2, mem_per_node_bytes=24 * GiB)
    with pytest.raises(InfeasiblePlanError, match=r"requested KV cache of 131072 tokens per "
                       r"worker does not fit: .*longest context that fits is \d+ tokens"):
        _plan(long_model, topo, max_total_seq_len=131072)


def test_more_windows_for_a_server_shrink_to_memory(long_model):
    topo = synthetic_topology(sockets=2, mem_per_node_bytes=64 * GiB)
    plan = _plan(long_model, topo, kv_windows=4)
    assert plan.kv_cache.limited_by == "memory"
    assert 131072 < plan.kv_cache.max_total_seq_len < 4 * 131072


def test_a_dumps_free_figure_is_shown_not_planned_against(tmp_path):
    # The sample's nodes are mostly used (someone else's machine, at that moment): planning
    # uses their size less headroom, unless asked.
    from numaplan.topology import parse_numactl, sample_path

    wl = small_workload(tmp_path)
    text = sample_path("hsw").read_text().replace("node 0 free: 128163 MB", "node 0 free: 9000 MB")
    topo = parse_numactl(text, source="hsw-busy")
    node = topo.nodes[0]
    assert node.mem_free_bytes < 0.9 * node.mem_total_bytes
    plan = _plan(wl, topo)
    n0 = plan.nodes[0]
    assert n0.mem_capacity_bytes == int(node.mem_total_bytes * 0.9)
    assert n0.mem_capacity_basis == "total less 10% headroom"
    asked = _plan(wl, topo, plan_against_free=True).nodes[0]
    assert asked.mem_capacity_bytes == int(node.mem_free_bytes * 0.9)
    assert asked.mem_capacity_basis == "reported free less 10% headroom"


def test_live_machine_plans_against_memavailable_when_lower(tmp_path):
    topo = synthetic_topology(sockets=2, mem_per_node_bytes=8 * GiB, free_fraction=0.25)
    root = tmp_path / "root"
    write_sysfs_tree(topo, root)
    # Page cache is reclaimable: available = MemFree + file pages + reclaimable slab ...
    for nid in (0, 1):
        meminfo = root / f"sys/devices/system/node/node{nid}/meminfo"
        meminfo.write_text(meminfo.read_text() +
                           f"Node {nid} Active(file):    1048576 kB\n"
                           f"Node {nid} Inactive(file):  1048576 kB\n"
                           f"Node {nid} SReclaimable:     524288 kB\n")
    live = read_sysfs(root)
    assert [n.mem_available_bytes for n in live.nodes] == [int(4.5 * GiB)] * 2
    # ... bounded by the system's MemAvailable, shared out in proportion.
    (root / "proc/meminfo").write_text("MemTotal: 16777216 kB\nMemFree: 4194304 kB\n"
                                       "MemAvailable: 6291456 kB\n")
    live = read_sysfs(root)
    assert [n.mem_available_bytes for n in live.nodes] == [3 * GiB] * 2
    plan = _plan(small_workload(tmp_path), live)
    assert [n.mem_capacity_bytes for n in plan.nodes] == [3 * GiB] * 2
    assert plan.nodes[0].mem_capacity_basis.startswith("MemAvailable")


def test_cli_flag_sets_the_capacity_and_compile_reports_it(tmp_path, capsys):
    from numaplan.cli.main import main
    from numaplan.model.presets import write_hf_config
    from numaplan.plan import read_plan
    from numaplan.topology import sample_path

    d = tmp_path / "m"
    d.mkdir()
    write_hf_config(d, "tiny-llama")
    out = tmp_path / "o"
    args = ["compile", str(d), "--quantization", "q4f16_1", "--no-build", "-o", str(out),
            "--numactl-file", str(sample_path("hsw")), "--tp", "2"]
    assert main([*args, "--max-total-seq-len", "1000"]) == 0
    assert "KV cache: 1008 tokens per worker (request)" in capsys.readouterr().out
    kv = read_plan(out).kv_cache
    assert (kv.max_total_seq_len, kv.limited_by) == (1008, "request")
    assert main([*args, "--max-total-seq-len", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-total-seq-len must be >= 1" in err
