"""Reading and validating tensor-cache.json / ndarray-cache.json."""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from numaplan.errors import ModelFormatError
from numaplan.model import check_shard_files, find_tensor_cache, read_tensor_cache


def _real_format_doc() -> dict[str, Any]:
    """Three shard files in the shape tvmjs writes them, with two real-world quirks: a float32
    record stored f32-to-bf16 (nbytes = numel * 2) and a ``?partitions=4`` dataPath suffix."""
    return {
        "metadata": {"ParamSize": 93, "ParamBytes": 286.0, "BitsPerParam": 24.6},
        "records": [
            {"dataPath": "params_shard_0.bin", "format": "raw-shard", "nbytes": 70,
             "md5sum": "0" * 32,
             "records": [
                 {"name": "model.norm.weight", "shape": [3], "dtype": "float32",
                  "format": "f32-to-bf16", "nbytes": 6, "byteOffset": 0},
                 {"name": "model.layers.0.self_attn.qkv_proj.q_weight", "shape": [4, 4],
                  "dtype": "uint32", "format": "f32-to-bf16", "nbytes": 64, "byteOffset": 6},
             ]},
            {"dataPath": "params_shard_1.bin?partitions=4", "format": "raw-shard", "nbytes": 96,
             "md5sum": "1" * 32,
             "records": [
                 {"name": "model.layers.0.mlp.down_proj.weight", "shape": [4, 8],
                  "dtype": "float16", "format": "raw", "nbytes": 64, "byteOffset": 0},
                 {"name": "model.layers.0.input_layernorm.weight", "shape": [16],
                  "dtype": "bfloat16", "format": "raw", "nbytes": 32, "byteOffset": 64},
             ]},
            {"dataPath": "sub/params_shard_2.bin", "format": "raw-shard", "nbytes": 120,
             "records": [  # 2023 caches have no md5sum
                 {"name": "lm_head.weight", "shape": [10, 3], "dtype": "float32",
                  "format": "raw", "nbytes": 120, "byteOffset": 0},
                 {"name": "model.empty", "shape": [0, 5], "dtype": "float16",
                  "format": "raw", "nbytes": 0, "byteOffset": 120},
             ]},
        ],
    }


def _write(tmp_path: Path, doc: Any, name: str = "tensor-cache.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _write_shards(tmp_path: Path, doc: dict[str, Any]) -> None:
    for shard in doc["records"]:
        file = tmp_path / shard["dataPath"].split("?")[0]
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(os.urandom(shard["nbytes"]))


def test_real_format_loads(tmp_path: Path) -> None:
    cache = read_tensor_cache(_write(tmp_path, _real_format_doc()))
    assert cache.index_name == "tensor-cache.json"
    assert [s.data_path for s in cache.shards] == ["params_shard_0.bin", "params_shard_1.bin",
                                                   "sub/params_shard_2.bin"]
    assert cache.num_tensors == 6 and cache.total_nbytes == 70 + 96 + 120
    norm = cache.shards[0].records[0]
    assert (norm.dtype, norm.format, norm.nbytes, norm.mem_nbytes) == ("float32", "f32-to-bf16",
                                                                       6, 12)
    assert cache.shards[0].md5sum == "0" * 32 and cache.shards[2].md5sum is None
    assert cache.shards[1].records[1].byte_offset == 64


def test_read_from_directory_prefers_tensor_cache(tmp_path: Path) -> None:
    doc = _real_format_doc()
    _write(tmp_path, doc)
    legacy = copy.deepcopy(doc)
    legacy["records"] = legacy["records"][:1]
    _write(tmp_path, legacy, "ndarray-cache.json")
    assert read_tensor_cache(tmp_path).num_tensors == 6


def test_ndarray_cache_alone_loads(tmp_path: Path) -> None:
    _write(tmp_path, _real_format_doc(), "ndarray-cache.json")
    assert find_tensor_cache(tmp_path).name == "ndarray-cache.json"
    cache = read_tensor_cache(tmp_path)
    assert cache.index_name == "ndarray-cache.json" and cache.num_tensors == 6


def test_no_index_names_both_files(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError) as exc:
        find_tensor_cache(tmp_path)
    assert "tensor-cache.json" in str(exc.value) and "ndarray-cache.json" in str(exc.value)


@pytest.mark.parametrize("data_path", ["../x.bin", "sub/../../x.bin", "/etc/passwd",
                                       "/etc/passwd?x=1", "C:/weights.bin"])
def test_traversal_rejected(tmp_path: Path, data_path: str) -> None:
    doc = _real_format_doc()
    doc["records"][1]["dataPath"] = data_path
    path = _write(tmp_path, doc)
    with pytest.raises(ModelFormatError) as exc:
        read_tensor_cache(path)
    assert str(path) in str(exc.value) and repr(data_path) in str(exc.value)


def test_symlink_pointing_outside_rejected(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"x" * 96)
    (model / "params_shard_1.bin").symlink_to(outside / "secret.bin")
    path = _write(model, _real_format_doc())
    with pytest.raises(ModelFormatError) as exc:
        read_tensor_cache(path)
    assert "outside the model directory" in str(exc.value)
    assert "params_shard_1.bin" in str(exc.value) and str(path) in str(exc.value)


def test_symlinked_directory_escape_rejected(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "sub").symlink_to(tmp_path)
    with pytest.raises(ModelFormatError, match="outside the model directory"):
        read_tensor_cache(_write(model, _real_format_doc()))


def test_symlink_inside_the_directory_is_fine(tmp_path: Path) -> None:
    (tmp_path / "real.bin").write_bytes(b"")
    (tmp_path / "params_shard_0.bin").symlink_to(tmp_path / "real.bin")
    assert read_tensor_cache(_write(tmp_path, _real_format_doc())).num_tensors == 6


def _mutated(mutate) -> dict[str, Any]:
    doc = _real_format_doc()
    mutate(doc)
    return doc


def _set(rec: dict, key: str, value: Any) -> None:
    rec[key] = value


BAD_DOCS = {
    "missing records": (lambda d: d.pop("records"), "records: missing"),
    "records not a list": (lambda d: _set(d, "records", {}), "expected a list"),
    "missing dataPath": (lambda d: d["records"][0].pop("dataPath"), "dataPath: missing"),
    "missing shard nbytes": (lambda d: d["records"][0].pop("nbytes"), "nbytes: missing"),
    "shard format": (lambda d: _set(d["records"][0], "format", "zstd"), "raw-shard"),
    "missing name": (lambda d: d["records"][0]["records"][0].pop("name"), "name: missing"),
    "missing shape": (lambda d: d["records"][0]["records"][0].pop("shape"), "shape: missing"),
    "missing dtype": (lambda d: d["records"][0]["records"][0].pop("dtype"), "dtype: missing"),
    "missing format": (lambda d: d["records"][0]["records"][0].pop("format"), "format: missing"),
    "missing byteOffset": (lambda d: d["records"][0]["records"][1].pop("byteOffset"),
                           "byteOffset: missing"),
    "negative shape": (lambda d: _set(d["records"][1]["records"][0], "shape", [-4, -8]),
                       "negative dimension"),
    "float shape": (lambda d: _set(d["records"][1]["records"][0], "shape", [4.0, 8]),
                    "not an integer"),
    "unknown dtype": (lambda d: _set(d["records"][1]["records"][0], "dtype", "float12"),
                      "unknown dtype 'float12'"),
    "unknown tensor format": (lambda d: _set(d["records"][1]["records"][0], "format", "q8"),
                              "unknown tensor format"),
    "nbytes vs shape": (lambda d: _set(d["records"][1]["records"][0], "nbytes", 32),
                        "does not match shape"),
    "bf16 float32 counted at 4 bytes": (
        lambda d: _set(d["records"][0]["records"][0], "nbytes", 12), "does not match shape"),
    "negative offset": (lambda d: _set(d["records"][1]["records"][0], "byteOffset", -1),
                        "negative value"),
    "past end of shard": (lambda d: _set(d["records"][1]["records"][1], "byteOffset", 65),
                          "ends past the shard"),
    "overlap": (lambda d: _set(d["records"][1]["records"][1], "byteOffset", 32), "overlap"),
    "duplicate name": (lambda d: _set(d["records"][1]["records"][1], "name",
                                      "model.norm.weight"), "duplicate tensor name"),
    "bool nbytes": (lambda d: _set(d["records"][0], "nbytes", True), "expected an integer"),
    "md5 not a string": (lambda d: _set(d["records"][0], "md5sum", 5), "md5sum"),
    "empty dataPath": (lambda d: _set(d["records"][0], "dataPath", "?x"), "invalid file name"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_bad_index_gives_error_with_path(tmp_path: Path, case: str) -> None:
    mutate, words = BAD_DOCS[case]
    path = _write(tmp_path, _mutated(mutate))
    with pytest.raises(ModelFormatError) as exc:
        read_tensor_cache(path)
    assert words in str(exc.value)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(("text", "words"), [("", "empty"), ("{\"records\": [", "invalid JSON"),
                                             ("[]", "JSON object"), ("null", "JSON object")])
def test_unreadable_index(tmp_path: Path, text: str, words: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ModelFormatError) as exc:
        read_tensor_cache(path)
    assert words in str(exc.value) and str(path) in str(exc.value)


def test_error_names_the_record(tmp_path: Path) -> None:
    path = _write(tmp_path, _mutated(
        lambda d: _set(d["records"][1]["records"][0], "dtype", "float12")))
    with pytest.raises(ModelFormatError) as exc:
        read_tensor_cache(path)
    assert "records[1].records[0]" in str(exc.value)
    assert "model.layers.0.mlp.down_proj.weight" in str(exc.value)


def test_check_shard_files(tmp_path: Path) -> None:
    doc = _real_format_doc()
    _write_shards(tmp_path, doc)
    for shard in doc["records"]:
        file = tmp_path / shard["dataPath"].split("?")[0]
        if "md5sum" in shard:
            shard["md5sum"] = hashlib.md5(file.read_bytes()).hexdigest()
    cache = read_tensor_cache(_write(tmp_path, doc))
    check_shard_files(tmp_path, cache, verify_md5=True)

    (tmp_path / "params_shard_1.bin").write_bytes(b"\0" * 96)  # same size, other content
    check_shard_files(tmp_path, cache)
    with pytest.raises(ModelFormatError, match="md5"):
        check_shard_files(tmp_path, cache, verify_md5=True)

    (tmp_path / "params_shard_1.bin").write_bytes(b"\0" * 95)
    with pytest.raises(ModelFormatError) as exc:
        check_shard_files(tmp_path, cache)
    assert "95 bytes" in str(exc.value) and "params_shard_1.bin" in str(exc.value)

    (tmp_path / "params_shard_1.bin").unlink()
    with pytest.raises(ModelFormatError) as exc:
        check_shard_files(tmp_path, cache)
    assert "not found" in str(exc.value) and "params_shard_1.bin" in str(exc.value)


def test_reading_the_index_needs_no_shard_file(tmp_path: Path) -> None:
    cache = read_tensor_cache(_write(tmp_path, _real_format_doc()))
    assert not any(tmp_path.glob("*.bin"))
    assert cache.num_tensors == 6


def test_symlink_loop_rejected(tmp_path: Path) -> None:
    (tmp_path / "params_shard_0.bin").symlink_to(tmp_path / "loop")
    (tmp_path / "loop").symlink_to(tmp_path / "params_shard_0.bin")
    with pytest.raises(ModelFormatError, match=r"params_shard_0\.bin"):
        read_tensor_cache(_write(tmp_path, _real_format_doc()))
