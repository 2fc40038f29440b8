"""mlc-chat-config.json and Hugging Face config.json parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from numaplan.errors import ModelFormatError
from numaplan.model import LLAMA3_8B_HF, parse_mlc_config, read_hf_config, read_mlc_config

from .mlc_fixtures import mlc_chat_config


def _write(tmp_path: Path, doc: object, name: str = "mlc-chat-config.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _llama_doc(**model_overrides: object) -> dict:
    return mlc_chat_config(dict(LLAMA3_8B_HF), "q4f16_1", **model_overrides)


def test_current_format_with_extra_fields(tmp_path: Path) -> None:
    doc = _llama_doc()
    doc["brand_new_field"] = {"anything": [1, 2]}
    doc["model_config"]["some_future_knob"] = 3
    config = read_mlc_config(_write(tmp_path, doc))
    assert (config.model_type, config.quantization) == ("llama", "q4f16_1")
    assert (config.hidden_size, config.intermediate_size, config.num_attention_heads,
            config.num_key_value_heads, config.head_dim, config.num_hidden_layers,
            config.vocab_size) == (4096, 14336, 32, 8, 128, 32, 128256)
    assert not config.tie_word_embeddings
    assert config.context_window_size == 8192
    assert config.tensor_parallel_shards == 1
    assert config.rms_norm_eps == pytest.approx(1e-5)


def test_reads_from_directory(tmp_path: Path) -> None:
    _write(tmp_path, _llama_doc())
    assert read_mlc_config(tmp_path).hidden_size == 4096


def test_defaults_for_kv_heads_and_head_dim() -> None:
    doc = _llama_doc()
    del doc["model_config"]["num_key_value_heads"]
    doc["model_config"]["head_dim"] = 0  # MLC writes 0 for "derive it"
    config = parse_mlc_config(doc)
    assert (config.num_key_value_heads, config.head_dim) == (32, 128)


def test_top_level_copies_fill_missing_model_config_fields() -> None:
    doc = _llama_doc()
    del doc["model_config"]["vocab_size"]
    del doc["model_config"]["context_window_size"]
    del doc["model_config"]["tensor_parallel_shards"]
    doc["tensor_parallel_shards"] = 2
    config = parse_mlc_config(doc)
    assert (config.vocab_size, config.context_window_size, config.tensor_parallel_shards) == (
        128256, 8192, 2)


def test_model_config_wins_over_top_level_copy() -> None:
    doc = _llama_doc(vocab_size=32000)
    assert parse_mlc_config(doc).vocab_size == 32000


def test_sliding_window_context_is_minus_one() -> None:
    assert parse_mlc_config(_llama_doc(context_window_size=-1)).context_window_size == -1


@pytest.mark.parametrize(("change", "marker"), [
    ({"model_lib": "Llama-2-7b-chat-hf-q4f16_1"}, "model_lib"),
    ({"local_id": "Llama-2-7b-chat-hf-q4f16_1"}, "local_id"),
])
def test_legacy_markers_rejected(tmp_path: Path, change: dict, marker: str) -> None:
    doc = _llama_doc()
    doc.update(change)
    path = _write(tmp_path, doc)
    with pytest.raises(ModelFormatError) as exc:
        read_mlc_config(path)
    msg = str(exc.value)
    assert "legacy" in msg and "mlc_llm gen_config" in msg and marker in msg
    assert str(path) in msg


def test_legacy_string_conv_template_rejected(tmp_path: Path) -> None:
    # The shape of liangpeixin/mlc-chat-wizardlm-70b-v1.0-q4-f16_1 (2023).
    doc = {"model_lib": "WizardLM-70B-V1.0-q4f16_1", "local_id": "WizardLM-70B-V1.0-q4f16_1",
           "conv_template": "wizardlm", "temperature": 0.7, "repetition_penalty": 1.0,
           "top_p": 0.95, "mean_gen_len": 128, "max_gen_len": 512, "shift_fill_factor": 0.3,
           "tokenizer_files": ["tokenizer.model"], "model_category": "llama",
           "model_name": "WizardLM-70B-V1.0"}
    with pytest.raises(ModelFormatError, match="legacy"):
        read_mlc_config(_write(tmp_path, doc))
    only_template = {"conv_template": "llama-2", "temperature": 0.7}
    with pytest.raises(ModelFormatError, match="conv_template"):
        parse_mlc_config(only_template)


@pytest.mark.parametrize("field", ["hidden_size", "intermediate_size", "num_attention_heads",
                                   "num_hidden_layers"])
def test_missing_required_field_names_file_and_field(tmp_path: Path, field: str) -> None:
    doc = _llama_doc()
    del doc["model_config"][field]
    path = _write(tmp_path, doc)
    with pytest.raises(ModelFormatError) as exc:
        read_mlc_config(path)
    assert str(path) in str(exc.value)
    assert field in str(exc.value)
    assert "missing" in str(exc.value)


@pytest.mark.parametrize(("field", "value", "words"), [
    ("hidden_size", "4096", "integer"),
    ("hidden_size", 4096.0, "integer"),
    ("hidden_size", True, "integer"),
    ("hidden_size", 0, "positive"),
    ("num_hidden_layers", -3, "positive"),
    ("vocab_size", -1, "positive"),
    ("tensor_parallel_shards", 0, "positive"),
    ("tie_word_embeddings", "yes", "true or false"),
    ("rms_norm_eps", "small", "number"),
])
def test_bad_values_name_the_field(tmp_path: Path, field: str, value: object,
                                   words: str) -> None:
    path = _write(tmp_path, _llama_doc(**{field: value}))
    with pytest.raises(ModelFormatError) as exc:
        read_mlc_config(path)
    msg = str(exc.value)
    assert f"model_config.{field}" in msg and words in msg and str(path) in msg


def test_inconsistent_heads_rejected() -> None:
    with pytest.raises(ModelFormatError, match="num_key_value_heads"):
        parse_mlc_config(_llama_doc(num_key_value_heads=5))


def test_missing_model_config_and_quantization() -> None:
    doc = _llama_doc()
    del doc["model_config"]
    with pytest.raises(ModelFormatError, match="model_config"):
        parse_mlc_config(doc)
    doc = _llama_doc()
    del doc["quantization"]
    with pytest.raises(ModelFormatError, match="quantization: missing"):
        parse_mlc_config(doc)


def test_unknown_quantization_in_config_lists_known(tmp_path: Path) -> None:
    doc = _llama_doc()
    doc["quantization"] = "q9f99"
    with pytest.raises(ModelFormatError) as exc:
        read_mlc_config(_write(tmp_path, doc))
    assert "q9f99" in str(exc.value) and "q4f16_1" in str(exc.value)


@pytest.mark.parametrize(("text", "words"), [
    ("", "empty"),
    ("   \n", "empty"),
    ("{\"model_type\": ", "invalid JSON"),
    ("[1, 2]", "JSON object"),
])
def test_unreadable_files(tmp_path: Path, text: str, words: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ModelFormatError) as exc:
        read_mlc_config(path)
    assert words in str(exc.value) and str(path) in str(exc.value)


def test_missing_file_named(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError) as exc:
        read_mlc_config(tmp_path / "mlc-chat-config.json")
    assert "not found" in str(exc.value) and "mlc-chat-config.json" in str(exc.value)


def test_hf_config(tmp_path: Path) -> None:
    path = _write(tmp_path, dict(LLAMA3_8B_HF), "config.json")
    config = read_hf_config(path, quantization="q0bf16")
    assert (config.quantization, config.context_window_size, config.head_dim) == (
        "q0bf16", 8192, 128)


def test_hf_config_explicit_head_dim(tmp_path: Path) -> None:
    # Mistral-Nemo style: head_dim given and not hidden/heads.
    doc = dict(LLAMA3_8B_HF, model_type="mistral", hidden_size=5120, head_dim=128)
    config = read_hf_config(_write(tmp_path, doc, "config.json"), quantization="q4f16_1")
    assert config.head_dim == 128
