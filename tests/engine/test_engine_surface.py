"""The engine surface, driven the way the MLC proposal's examples use it."""

from __future__ import annotations

import logging

import pytest

import numaplan
from numaplan import Engine, EngineConfig, NUMATensorParallelConfig, get_numa_topology
from numaplan.bench import NUMATensorParallelBenchmark

pytestmark = pytest.mark.tvm
PROMPT = [5, 17, 99, 3]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from numaplan.tiny_llama.build import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("engine") / "tiny-llama", size="default")


def test_topology_calls():
    topo = get_numa_topology()
    assert topo.get_node_count() == len(topo.nodes) >= 1
    node = topo.nodes[min(topo.nodes)]
    assert node.cpus and node.memory_mb and node.memory_mb > 0


def test_config_validation(model_dir):
    with pytest.raises(ValueError, match=r"numa_inter_node_penalty must be in 0\.\.1"):
        EngineConfig(model=str(model_dir), numa_inter_node_penalty=1.5)
    with pytest.raises(ValueError, match="tensor_parallel_shards must be >= 1"):
        EngineConfig(model=str(model_dir), tensor_parallel_shards=0)
    cfg = EngineConfig(model=str(model_dir), numa_config=NUMATensorParallelConfig(
        enable_numa_tp=True, node_affinity={0: 0}, inter_node_bandwidth_penalty=0.5))
    assert cfg.numa_tensor_parallel and cfg.numa_inter_node_penalty == 0.5
    assert cfg.node_affinity == {0: 0}
    with pytest.raises(numaplan.NumaplanError, match=r"numa_nodes \[7\] do not exist"):
        Engine(EngineConfig(model=str(model_dir), numa_nodes=[7]))
    with pytest.raises(numaplan.NumaplanError, match="valid values"):
        Engine(EngineConfig(model=str(model_dir), tensor_parallel_shards=3,
                            cache_dir=str(model_dir.parent / "cache")))


def test_engine_generate_stats_and_cache(model_dir, tmp_path, caplog):
    from numaplan.model.reference import Reference

    _, want = Reference(model_dir).generate(PROMPT, 5)
    cfg = EngineConfig(model=str(model_dir), mode="server", tensor_parallel_shards=2,
                       numa_tensor_parallel=True, numa_inter_node_penalty=0.3,
                       cache_dir=str(tmp_path / "cache"))
    with caplog.at_level(logging.DEBUG, logger="numaplan"):
        engine = Engine(cfg)
    with engine:
        assert engine.compiled
        assert engine.generate(PROMPT, 6) == want
        comm = engine.communicator.get_communication_stats()
        alloc = engine.allocator.get_allocation_stats()
        measured = engine.runtime_stats()
        # The figures are the runtime's measurements, not assumptions.
        assert comm["inter_node_percentage"] == measured.inter_node_percentage == 0.0
        assert comm["calls"] == measured.collective_calls > 0
        assert alloc["local_percentage"] == measured.weight_local_percentage == 100.0
        assert alloc["bytes_total"] == sum(w.weight_bytes for w in measured.workers) > 0
        # One node: the replicated tensors are in memory once, read by both workers.
        shared = sum(w.weight_bytes_shared_mapped for w in measured.workers)
        assert shared > 0 and alloc["bytes_in_memory"] == alloc["bytes_total"] - shared
        p = engine.optimize_tensor_placement("model.layers.1.mlp.down_proj.weight",
                                             [256, 688], 1)
        assert p["worker_id"] == 1 and p["split_dim"] == 1 and p["piece_shape"] == [256, 344]
        assert p["local"] and p["homes"] == [{"node_id": p["node_id"],
                                              "nbytes": p["piece_nbytes"]}]
        with pytest.raises(numaplan.NumaplanError, match="has shape"):
            engine.optimize_tensor_placement("model.layers.1.mlp.down_proj.weight", [1, 2], 0)
    # Every placement decision is logged at DEBUG with its reason.
    assert "worker 0 -> node" in caplog.text and "because" in caplog.text
    # A second start with the same inputs does not compile again.
    with Engine(cfg) as again:
        assert not again.compiled
        assert again.generate(PROMPT, 6) == want


def test_plain_tp_without_placement(model_dir, tmp_path):
    cfg = EngineConfig(model=str(model_dir), tensor_parallel_shards=2,
                       numa_tensor_parallel=False, cache_dir=str(tmp_path / "cache"))
    with Engine(cfg) as engine:
        engine.generate(PROMPT, 3)
        stats = engine.runtime_stats()
        assert all("placement not enforced" in " ".join(w.notes) for w in stats.workers)


def test_benchmark_class():
    b = NUMATensorParallelBenchmark({"tensor_parallel_shards": 2, "enable_numa_tp": True,
                                     "iters": 200})
    results = b.run_allreduce_benchmark([1024, 8192])
    assert {r["algorithm"] for r in results["rows"]} == {"one_shot", "two_shot"}
    assert all(r["median_us"] > 0 for r in results["rows"])
    NUMATensorParallelBenchmark.print_results(results)
