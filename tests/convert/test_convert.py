"""GGUF -> MLC conversion on small GGUF files written here with the ``gguf`` package's writer:
names, fusion, llama.cpp's rotary permutation undone, quantization, tokenizer files, and the
errors (nothing left behind)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="GGUF conversion needs the gguf package")

from numaplan.cli.main import main  # noqa: E402
from numaplan.convert.convert import convert_gguf  # noqa: E402
from numaplan.convert.gguf_model import permute_rows, unpermute_rows  # noqa: E402
from numaplan.errors import ModelFormatError  # noqa: E402
from numaplan.model.group_quant import dequantize_q4  # noqa: E402
from numaplan.model.reference import read_tensors  # noqa: E402

HIDDEN, INTER, HEADS, KV_HEADS, LAYERS = 64, 96, 4, 2, 2
HEAD_DIM = HIDDEN // HEADS
TOKENS = ["<unk>", "<|im_start|>", "<|im_end|>", "t", "1", "t1", *[f"x{i}" for i in range(58)]]


def hf_weights(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Hugging-Face-layout weights ``[out, in]`` of a tiny model, by HF-like short names."""
    rng = np.random.default_rng(seed)
    w = {"embed": rng.standard_normal((len(TOKENS), HIDDEN)).astype(np.float32),
         "norm": (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)}
    for i in range(LAYERS):
        for name, shape in (("q", (HEADS * HEAD_DIM, HIDDEN)), ("k", (KV_HEADS * HEAD_DIM, HIDDEN)),
                            ("v", (KV_HEADS * HEAD_DIM, HIDDEN)), ("o", (HIDDEN, HIDDEN)),
                            ("gate", (INTER, HIDDEN)), ("up", (INTER, HIDDEN)),
                            ("down", (HIDDEN, INTER))):
            w[f"{i}.{name}"] = (rng.standard_normal(shape) * shape[1] ** -0.5).astype(np.float32)
        for name in ("attn_norm", "ffn_norm"):
            w[f"{i}.{name}"] = (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32)
        if arch == "qwen2":
            for name, n in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
                w[f"{i}.{name}.bias"] = rng.standard_normal(n * HEAD_DIM).astype(np.float32)
    return w


def write_gguf(path: Path, arch: str = "llama", *, weights: dict | None = None,
               bad_tensor_type: bool = False) -> dict[str, np.ndarray]:
    """A GGUF file as llama.cpp's converter writes one (Q/K rows permuted for llama)."""
    w = weights or hf_weights(arch)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(INTER)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([2, 3, 3] + [1] * (len(TOKENS) - 3))
    writer.add_token_merges(["t 1"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                             "{{ m['content'] }}<|im_end|>\n{% endfor %}")
    perm = arch == "llama"

    def add(name: str, value: np.ndarray) -> None:
        writer.add_tensor(name, value)

    add("token_embd.weight", w["embed"])
    add("output_norm.weight", w["norm"])
    for i in range(LAYERS):
        q, k = w[f"{i}.q"], w[f"{i}.k"]
        add(f"blk.{i}.attn_q.weight", permute_rows(q, HEADS) if perm else q)
        add(f"blk.{i}.attn_k.weight", permute_rows(k, KV_HEADS) if perm else k)
        add(f"blk.{i}.attn_v.weight", w[f"{i}.v"])
        add(f"blk.{i}.attn_output.weight", w[f"{i}.o"])
        add(f"blk.{i}.ffn_gate.weight", w[f"{i}.gate"])
        add(f"blk.{i}.ffn_up.weight", w[f"{i}.up"])
        if bad_tensor_type and i == LAYERS - 1:
            # Q8_1 blocks (40 bytes per 32 values): a type the gguf package cannot read.
            writer.add_tensor(f"blk.{i}.ffn_down.weight",
                              np.zeros((HIDDEN, INTER // 32 * 40), np.uint8),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_1)
        else:
            add(f"blk.{i}.ffn_down.weight", w[f"{i}.down"])
        add(f"blk.{i}.attn_norm.weight", w[f"{i}.attn_norm"])
        add(f"blk.{i}.ffn_norm.weight", w[f"{i}.ffn_norm"])
        if arch == "qwen2":
            add(f"blk.{i}.attn_q.bias", w[f"{i}.q.bias"])
            add(f"blk.{i}.attn_k.bias", w[f"{i}.k.bias"])
            add(f"blk.{i}.attn_v.bias", w[f"{i}.v.bias"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return w


def _bf16(a: np.ndarray) -> np.ndarray:
    """What f32-to-bf16 storage keeps of float32 (round to nearest even)."""
    from numaplan.model.writer import bf16_bits_to_f32, f32_to_bf16_bits

    return bf16_bits_to_f32(f32_to_bf16_bits(a))


def test_permutation_round_trip():
    w = np.random.default_rng(1).standard_normal((8 * 6, 5))
    for heads in (1, 2, 3, 4, 6):
        assert np.array_equal(unpermute_rows(permute_rows(w, heads), heads), w)
    # The inverse is not the forward map: applying the forward map twice is not the identity.
    assert not np.array_equal(permute_rows(permute_rows(w, 4), 4), w)


def test_llama_gguf_converts_to_hugging_face_layout(tmp_path):
    w = write_gguf(tmp_path / "m.gguf", "llama")
    convert_gguf(tmp_path / "m.gguf", tmp_path / "out", quantization="q0f32")
    t = read_tensors(tmp_path / "out")
    qkv = np.concatenate([w["0.q"], w["0.k"], w["0.v"]])
    np.testing.assert_array_equal(t["model.layers.0.self_attn.qkv_proj.weight"], _bf16(qkv))
    np.testing.assert_array_equal(t["model.layers.1.mlp.gate_up_proj.weight"],
                                  _bf16(np.concatenate([w["1.gate"], w["1.up"]])))
    assert "lm_head.weight" not in t  # no output.weight: tied embeddings
    doc = json.loads((tmp_path / "out" / "mlc-chat-config.json").read_text())
    assert doc["model_type"] == "llama" and doc["model_config"]["tie_word_embeddings"]
    assert doc["model_config"]["num_key_value_heads"] == KV_HEADS
    assert doc["bos_token_id"] == 1 and doc["eos_token_id"] == 2
    assert doc["conv_template"]["name"] == "chatml"
    assert doc["conv_template"]["stop_token_ids"] == [2]
    from numaplan.tokenizer import Tokenizer

    tok = Tokenizer(tmp_path / "out")
    assert tok.encode("<|im_start|>t1<|im_end|>", add_special_tokens=False)[0] == 1


def test_qwen2_biases_and_q4_quantization(tmp_path):
    w = write_gguf(tmp_path / "q.gguf", "qwen2")
    convert_gguf(tmp_path / "q.gguf", tmp_path / "out", quantization="q4f16_1")
    t = read_tensors(tmp_path / "out")
    np.testing.assert_allclose(t["model.layers.0.self_attn.c_attn.bias"],
                               np.concatenate([w["0.q.bias"], w["0.k.bias"], w["0.v.bias"]]),
                               rtol=1e-3, atol=1e-3)  # float16
    got = dequantize_q4(t["model.layers.0.self_attn.c_attn.q_weight"],
                        t["model.layers.0.self_attn.c_attn.q_scale"])
    qkv = np.concatenate([w["0.q"], w["0.k"], w["0.v"]])  # qwen2 files are not permuted
    # 4-bit codes: each value within half a step (scale / 2) of the original.
    step = np.repeat(t["model.layers.0.self_attn.c_attn.q_scale"].astype(np.float32), 32, 1)
    assert np.all(np.abs(got - qkv) <= step / 2 + 1e-3)
    assert "model.embed_tokens.q_weight" in t


def test_converted_model_runs_like_the_reference(tmp_path):
    """The conversion feeds numaplan's model definition the right weights: the compiled
    library's logits equal the numpy reference's on the converted directory."""
    pytest.importorskip("tvm")
    write_gguf(tmp_path / "m.gguf", "llama")
    out = tmp_path / "out"
    convert_gguf(tmp_path / "m.gguf", out, quantization="q0f32")
    assert main(["compile", str(out), "--tp", "1", "-o", str(tmp_path / "lib")]) == 0
    from numaplan.model.reference import Reference
    from numaplan.runtime.session import NumaRuntime

    with NumaRuntime(out, tmp_path / "lib" / "out-numa-llvm.so") as rt:
        res = rt.generate([1, 5, 9, 2, 1], 4, return_logits=True)
    logits, tokens = Reference(out).generate([1, 5, 9, 2, 1], 3)
    assert list(res.tokens) == tokens
    np.testing.assert_allclose(np.array(res.logits), np.array(logits), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["truncated", "not_gguf", "architecture", "tensor_type"])
def test_bad_files_give_one_line_and_leave_nothing(tmp_path, capsys, case):
    path = tmp_path / "bad.gguf"
    if case == "truncated":
        write_gguf(tmp_path / "ok.gguf")
        path.write_bytes((tmp_path / "ok.gguf").read_bytes()[:3000])
        want = "truncated or corrupt"
    elif case == "not_gguf":
        path.write_text("hello")
        want = "not a GGUF file"
    elif case == "architecture":
        writer = gguf.GGUFWriter(str(path), "mamba")
        writer.add_block_count(1)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        want = "architecture 'mamba' is not supported (supported: llama, qwen2)"
    else:
        write_gguf(path, bad_tensor_type=True)
        want = "type Q8_1 cannot be read"
    out = tmp_path / "out"
    assert main(["convert", str(path), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert want in err and err.count("\n") == 0 and "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_unknown_quantization_is_a_usage_error(tmp_path):
    write_gguf(tmp_path / "m.gguf")
    with pytest.raises(Exception, match="not a conversion target"):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "o", quantization="q3f16_1")
    with pytest.raises(ModelFormatError, match="no such file"):
        convert_gguf(tmp_path / "missing.gguf", tmp_path / "o")
