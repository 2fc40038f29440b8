"""Workloads: real Llama-3 numbers, MLC directories, fingerprints, TP validation, sizes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from numaplan.errors import InfeasiblePlanError, ModelFormatError
from numaplan.model import (
    Role,
    Workload,
    allreduce_bytes,
    allreduces_per_step,
    kv_cache_bytes_per_token,
    layer_nbytes,
    load_workload,
    read_tensor_cache,
    replicated_nbytes,
    slice_shard,
    total_mem_nbytes,
    total_nbytes,
    valid_tp_degrees,
    validate_tp,
    worker_mem_nbytes,
    worker_nbytes,
    write_hf_config,
)

GiB = 1 << 30

# mlc_tvm.md §2.3, from the real ndarray-cache.json of llamaxist/Llama-3-8B-Instruct-q4f16.
LAYER0_Q4F16_1 = [
    ("model.layers.0.input_layernorm.weight", (4096,), "float16", 8192),
    ("model.layers.0.self_attn.qkv_proj.q_weight", (6144, 512), "uint32", 12582912),
    ("model.layers.0.self_attn.qkv_proj.q_scale", (6144, 128), "float16", 1572864),
    ("model.layers.0.self_attn.o_proj.q_weight", (4096, 512), "uint32", 8388608),
    ("model.layers.0.self_attn.o_proj.q_scale", (4096, 128), "float16", 1048576),
    ("model.layers.0.post_attention_layernorm.weight", (4096,), "float16", 8192),
    ("model.layers.0.mlp.gate_up_proj.q_weight", (28672, 512), "uint32", 58720256),
    ("model.layers.0.mlp.gate_up_proj.q_scale", (28672, 128), "float16", 7340032),
    ("model.layers.0.mlp.down_proj.q_weight", (4096, 1792), "uint32", 29360128),
    ("model.layers.0.mlp.down_proj.q_scale", (4096, 448), "float16", 3670016),
]


@pytest.fixture(scope="module")
def llama3_8b(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    directory = tmp_path_factory.mktemp("llama3-8b")
    write_hf_config(directory, "llama3-8b")
    return load_workload(directory, quantization="q4f16_1")


def test_llama3_8b_q4f16_1_matches_the_real_index(llama3_8b: Workload) -> None:
    w = llama3_8b
    # 32 layers x 10 (2 norms + q_weight/q_scale of qkv, o, gate_up, down) + embed (2) +
    # lm_head (2, untied) + model.norm = 325, the record count of the real file.
    assert len(w.tensors) == 325
    assert total_nbytes(w) == 4_517_404_672 == total_mem_nbytes(w)
    assert all(layer_nbytes(w, i) == 122_699_776 for i in range(32))
    for name, shape, dtype, nbytes in LAYER0_Q4F16_1:
        t = w.tensor(name)
        assert (t.shape, t.dtype, t.nbytes, t.layer) == (shape, dtype, nbytes, 0)
    for prefix in ("model.embed_tokens", "lm_head"):
        assert w.tensor(f"{prefix}.q_weight").shape == (128256, 512)
        assert w.tensor(f"{prefix}.q_weight").nbytes == 262_668_288
        assert w.tensor(f"{prefix}.q_scale").nbytes == 32_833_536
    assert w.tensor("model.norm.weight").shape == (4096,)
    assert (w.source, w.model_dtype, w.head_dim) == ("hf-config", "float16", 128)


def test_llama3_8b_tp_shards(llama3_8b: Workload) -> None:
    w = llama3_8b
    shapes = {name: w.tensor(f"model.layers.0.{name}").shard_shape(2) for name in (
        "self_attn.qkv_proj.q_weight", "self_attn.o_proj.q_weight", "self_attn.o_proj.q_scale",
        "mlp.gate_up_proj.q_weight", "mlp.down_proj.q_weight", "mlp.down_proj.q_scale")}
    assert shapes == {
        "self_attn.qkv_proj.q_weight": (3072, 512), "self_attn.o_proj.q_weight": (4096, 256),
        "self_attn.o_proj.q_scale": (4096, 64), "mlp.gate_up_proj.q_weight": (14336, 512),
        "mlp.down_proj.q_weight": (4096, 896), "mlp.down_proj.q_scale": (4096, 224)}
    embed_and_head = sum(t.mem_nbytes for t in w.tensors
                         if t.role in (Role.EMBEDDING, Role.LM_HEAD))
    assert embed_and_head == 591_003_648  # ~0.55 GiB, held whole by every worker
    assert replicated_nbytes(w) == embed_and_head + 33 * 8192 + 32 * 8192
    assert round(worker_mem_nbytes(w, 1) / GiB, 2) == 4.21
    assert round(worker_mem_nbytes(w, 2) / GiB, 2) == 2.38
    assert round(worker_mem_nbytes(w, 4) / GiB, 2) == 1.46
    assert round(worker_mem_nbytes(w, 8) / GiB, 2) == 1.01
    split = total_nbytes(w) - replicated_nbytes(w)
    assert worker_nbytes(w, 2) == replicated_nbytes(w) + split // 2


def test_llama3_8b_sizes(llama3_8b: Workload) -> None:
    assert kv_cache_bytes_per_token(llama3_8b) == 2 * 32 * 8 * 128 * 2 == 131072
    assert kv_cache_bytes_per_token(llama3_8b, num_workers=2) == 65536
    assert allreduce_bytes(llama3_8b, 1) == 8192
    assert allreduce_bytes(llama3_8b, 4) == 32768
    assert allreduces_per_step(llama3_8b) == 64
    with pytest.raises(ValueError):
        allreduce_bytes(llama3_8b, 0)


def test_llama3_8b_q0f16_shapes(llama3_8b_dir: Path) -> None:
    w = load_workload(llama3_8b_dir, quantization="q0f16")
    expect = {"self_attn.qkv_proj.weight": ((6144, 4096), 50_331_648),
              "self_attn.o_proj.weight": ((4096, 4096), 33_554_432),
              "mlp.gate_up_proj.weight": ((28672, 4096), 234_881_024),
              "mlp.down_proj.weight": ((4096, 14336), 117_440_512)}
    for name, (shape, nbytes) in expect.items():
        t = w.tensor(f"model.layers.5.{name}")
        assert (t.shape, t.nbytes, t.dtype) == (shape, nbytes, "float16")
    assert w.tensor("lm_head.weight").shape == (128256, 4096)
    assert len(w.tensors) == 32 * 6 + 3


def test_llama3_70b_q4f16_1(tmp_path: Path) -> None:
    write_hf_config(tmp_path, "llama3-70b")
    w = load_workload(tmp_path, quantization="q4f16_1")
    assert len(w.tensors) == 80 * 10 + 5
    per_layer = (10240 * 1024 * 4 + 10240 * 256 * 2 + 8192 * 1024 * 4 + 8192 * 256 * 2
                 + 57344 * 1024 * 4 + 57344 * 256 * 2 + 8192 * 3584 * 4 + 8192 * 896 * 2
                 + 2 * 8192 * 2)
    assert layer_nbytes(w, 79) == per_layer
    assert total_nbytes(w) == 80 * per_layer + 2 * (128256 * 1024 * 4 + 128256 * 256 * 2) + 16384
    assert valid_tp_degrees(w) == (1, 2, 4, 8)


def test_q0f32_and_q4f32_store_float32_as_bf16(tmp_path: Path) -> None:
    write_hf_config(tmp_path, "tiny-llama")
    w = load_workload(tmp_path, quantization="q0f32")
    assert all(t.dtype == "float32" and t.format == "f32-to-bf16" for t in w.tensors)
    assert 2 * total_nbytes(w) == total_mem_nbytes(w)
    w = load_workload(tmp_path, quantization="q4f32_1")
    scale = w.tensor("model.layers.0.mlp.down_proj.q_scale")
    assert (scale.dtype, scale.nbytes, scale.mem_nbytes) == ("float32", 64 * 4 * 2, 64 * 4 * 4)
    assert scale.shard_nbytes(2) * 2 == scale.nbytes
    assert scale.shard_mem_nbytes(2) * 2 == scale.mem_nbytes
    assert kv_cache_bytes_per_token(w) == 2 * 2 * 2 * 16 * 4


def test_synthetic_packing_follows_the_tvmjs_writer(llama3_8b: Workload) -> None:
    # Every tensor >= 16 MiB sits alone at offset 0; every other file stays under 32 MiB.
    cap = 32 << 20
    by_file: dict[str, list] = {}
    for t in llama3_8b.tensors:
        by_file.setdefault(t.data_path, []).append(t)
    for tensors in by_file.values():
        if any(2 * t.nbytes >= cap for t in tensors):
            assert len(tensors) == 1 and tensors[0].byte_offset == 0
        else:
            assert sum(t.nbytes for t in tensors) < cap
    assert len(by_file) == 108


def test_mlc_directory_loads(make_mlc_dir: Callable[..., Path]) -> None:
    directory = make_mlc_dir()
    w = load_workload(directory)
    assert w.source == "tensor-cache"
    assert (w.model_type, w.quantization, w.num_hidden_layers) == ("llama", "q4f16_1", 2)
    assert len(w.tensors) == 2 + 2 * 10 + 1 + 2
    assert len({t.data_path for t in w.tensors}) > 3
    assert load_workload(directory, quantization="q4f16_1") == w


def test_ndarray_cache_directory_loads(make_mlc_dir: Callable[..., Path]) -> None:
    w = load_workload(make_mlc_dir(index_name="ndarray-cache.json"))
    assert w.source == "ndarray-cache"


def test_loader_ranges_against_real_shard_files(make_mlc_dir: Callable[..., Path]) -> None:
    """What a worker reads through its byte ranges equals slicing the whole tensor."""
    directory = make_mlc_dir(quantization="q0f16")
    w = load_workload(directory)
    for t in w.tensors:
        whole = np.fromfile(directory / t.data_path, dtype=np.float16, count=int(np.prod(t.shape)),
                            offset=t.byte_offset).reshape(t.shape)
        for worker in range(2):
            data = b""
            with (directory / t.data_path).open("rb") as f:
                for offset, length in t.shard_byte_ranges(2, worker):
                    f.seek(offset)
                    data += f.read(length)
            piece = np.frombuffer(data, dtype=np.float16).reshape(t.shard_shape(2))
            np.testing.assert_array_equal(piece, slice_shard(whole, t.shard_rule, 2, worker))


def test_fingerprint_stable_and_sensitive(make_mlc_dir: Callable[..., Path]) -> None:
    directory = make_mlc_dir()
    first, second = load_workload(directory), load_workload(directory)
    assert first.fingerprint == second.fingerprint
    assert len(first.fingerprint) == 64 and int(first.fingerprint, 16) >= 0

    index = directory / "tensor-cache.json"
    original = json.loads(index.read_text())

    def fingerprint_after(change: Callable[[dict], None]) -> str:
        doc = json.loads(json.dumps(original))
        change(doc)
        index.write_text(json.dumps(doc))
        return load_workload(directory).fingerprint

    # Same records, other order, other key order in the JSON: same weights.
    def reorder(doc: dict) -> None:
        for shard in doc["records"]:
            shard["records"] = [dict(reversed(list(r.items()))) for r in shard["records"][::-1]]
    assert fingerprint_after(reorder) == first.fingerprint

    def retype(doc: dict) -> None:
        rec = next(r for s in doc["records"] for r in s["records"]
                   if r["name"] == "model.norm.weight")
        rec["dtype"] = "bfloat16"
    assert fingerprint_after(retype) != first.fingerprint

    def move(doc: dict) -> None:
        shard = doc["records"][0]
        shard["nbytes"] += 4
        shard["records"][-1]["byteOffset"] += 4
    assert fingerprint_after(move) != first.fingerprint


def test_workload_json_round_trip_checks_fingerprint(make_mlc_dir: Callable[..., Path]) -> None:
    w = load_workload(make_mlc_dir())
    assert Workload.model_validate_json(w.to_json()) == w
    tampered = json.loads(w.to_json())
    tampered["tensors"][0]["byte_offset"] += 2
    with pytest.raises(ValidationError, match="fingerprint"):
        Workload.model_validate(tampered)


def test_shape_contradicting_config_rejected(make_mlc_dir: Callable[..., Path]) -> None:
    directory = make_mlc_dir()
    config = json.loads((directory / "mlc-chat-config.json").read_text())
    config["model_config"]["num_key_value_heads"] = 4
    (directory / "mlc-chat-config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError) as exc:
        load_workload(directory)
    assert "qkv_proj" in str(exc.value) and "tensor-cache.json" in str(exc.value)


def test_missing_and_wrong_inputs(tmp_path: Path, make_mlc_dir: Callable[..., Path]) -> None:
    with pytest.raises(ModelFormatError, match="not found"):
        load_workload(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match=r"mlc-chat-config\.json"):
        load_workload(tmp_path / "empty")
    directory = make_mlc_dir()
    (directory / "tensor-cache.json").unlink()
    with pytest.raises(ModelFormatError) as exc:
        load_workload(directory)
    assert "tensor-cache.json" in str(exc.value)
    with pytest.raises(ModelFormatError, match="requested"):
        load_workload(make_mlc_dir("other"), quantization="q0f16")


def test_hf_config_needs_quantization(llama3_8b_dir: Path) -> None:
    with pytest.raises(ModelFormatError) as exc:
        load_workload(llama3_8b_dir)
    assert "--quantization" in str(exc.value) and "config.json" in str(exc.value)
    with pytest.raises(ModelFormatError, match="unknown quantization"):
        load_workload(llama3_8b_dir, quantization="q7")


def test_hf_config_of_unsupported_family(tmp_path: Path) -> None:
    write_hf_config(tmp_path, "tiny-llama", model_type="gpt2")
    with pytest.raises(ModelFormatError) as exc:
        load_workload(tmp_path, quantization="q4f16_1")
    assert "gpt2" in str(exc.value) and "qwen2" in str(exc.value)
    assert "config.json" in str(exc.value)


def test_validate_tp_names_constraint_and_valid_values(llama3_8b: Workload) -> None:
    for ok in (1, 2, 4, 8):
        validate_tp(llama3_8b, ok)
    with pytest.raises(InfeasiblePlanError) as exc:
        validate_tp(llama3_8b, 3)
    msg = str(exc.value)
    assert "tensor_parallel_shards=3 does not divide num_key_value_heads=8" in msg
    assert msg.endswith("valid values: 1, 2, 4, 8")
    with pytest.raises(InfeasiblePlanError, match=r"num_key_value_heads=8.*valid values: 1, 2, "
                                                  r"4, 8"):
        validate_tp(llama3_8b, 16)
    with pytest.raises(InfeasiblePlanError, match="positive integer"):
        validate_tp(llama3_8b, 0)


def test_validate_tp_group_count(tmp_path: Path) -> None:
    # down_proj input 96 = 3 groups of 32: divisible by 2 as a size, not as a group count.
    write_hf_config(tmp_path, "tiny-llama", intermediate_size=96)
    w = load_workload(tmp_path, quantization="q4f16_1")
    with pytest.raises(InfeasiblePlanError) as exc:
        validate_tp(w, 2)
    assert "does not divide the 3 quantization groups of the down_proj input" in str(exc.value)
    assert str(exc.value).endswith("valid values: 1")
    validate_tp(load_workload(tmp_path, quantization="q0f16"), 2)


def test_validate_tp_q3_needs_whole_groups(llama3_8b_dir: Path) -> None:
    w = load_workload(llama3_8b_dir, quantization="q3f16_1")
    assert w.tensor("model.layers.0.self_attn.o_proj.q_weight").shape == (4096, 412)
    with pytest.raises(InfeasiblePlanError, match="not a whole number of 40-element groups"):
        validate_tp(w, 2)
    assert valid_tp_degrees(w) == (1,)


def test_validate_tp_refuses_kn_layout(llama3_8b_dir: Path) -> None:
    w = load_workload(llama3_8b_dir, quantization="q4f16_0")
    validate_tp(w, 1)
    with pytest.raises(InfeasiblePlanError, match=r"KN layout.*valid values: 1$"):
        validate_tp(w, 2)


def test_index_fields_carried_into_workload(make_mlc_dir: Callable[..., Path]) -> None:
    directory = make_mlc_dir()
    w = load_workload(directory)
    cache = read_tensor_cache(directory)
    located = {r.name: (s.data_path, r.byte_offset, r.nbytes) for s, r in cache.iter_records()}
    assert {t.name: (t.data_path, t.byte_offset, t.nbytes) for t in w.tensors} == located


def test_sliding_window_model_uses_the_window(make_mlc_dir: Callable[..., Path]) -> None:
    directory = make_mlc_dir(preset="tiny-llama")
    config = json.loads((directory / "mlc-chat-config.json").read_text())
    config["model_type"] = "mistral"
    config["model_config"]["context_window_size"] = -1
    config["model_config"]["sliding_window_size"] = 64
    (directory / "mlc-chat-config.json").write_text(json.dumps(config))
    assert load_workload(directory).context_window_size == 64
