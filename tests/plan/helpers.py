"""Builders shared by the planning tests: small workloads and planned machines."""

from __future__ import annotations

from pathlib import Path

from numaplan.cost import CostModel, build_cost_model, cost_from_slit
from numaplan.model import load_workload
from numaplan.model.presets import write_hf_config
from numaplan.topology import Topology, parse_numactl, sample_path

#: The golden workload: a small Llama-style model whose KV heads allow W up to 8.
GOLDEN_MODEL = dict(hidden_size=512, intermediate_size=1536, num_attention_heads=8,
                    num_key_value_heads=8, num_hidden_layers=4, vocab_size=2048,
                    max_position_embeddings=2048)


def small_workload(tmp: Path, quantization: str = "q4f16_1", **overrides):
    """A small Llama-style workload planned from an HF config (no weights)."""
    d = tmp / "model"
    d.mkdir(parents=True, exist_ok=True)
    write_hf_config(d, "tiny-llama", **{**GOLDEN_MODEL, **overrides})
    return load_workload(d, quantization=quantization)


def fixture_topology(name: str) -> Topology:
    """A shipped numactl dump, with its file name (not path) as source: stable in goldens."""
    path = sample_path(name)
    return parse_numactl(path.read_text(), source=path.name)


def scaled_cost(topo: Topology, factors: dict[int, float], penalty: float = 0.3) -> CostModel:
    """SLIT cost model with each memory node's bandwidth column scaled (unequal nodes)."""
    base = cost_from_slit(topo, penalty=penalty)
    ids = base.node_ids
    bw = tuple(tuple(None if v is None else v * factors.get(ids[j], 1.0)
                     for j, v in enumerate(row)) for row in base.read_bw_gbps)
    return build_cost_model(None, node_ids=ids, read_bw_gbps=bw, lat_ns=base.lat_ns,
                            method="json", params={"scaled": True},
                            topology_fingerprint=base.topology_fingerprint)
