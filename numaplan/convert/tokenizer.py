"""A Hugging Face ``tokenizers`` tokenizer rebuilt from the tokenizer a GGUF file carries.

llama.cpp stores the whole tokenizer in the GGUF metadata (``tokenizer.ggml.*``): the token
strings, their types, the BPE merges or the SentencePiece scores, and the *name* of a
pre-tokenizer whose regexes live in llama.cpp's source (``src/llama-vocab.cpp``). This module
maps that metadata onto a :class:`tokenizers.Tokenizer` whose ids equal llama.cpp's
``llama_tokenize(text, add_special=False, parse_special=True)``.

Two vocabulary kinds are supported:

- ``gpt2``: byte-level BPE. The pre-tokenizer is the list of regexes llama.cpp applies for the
  ``tokenizer.ggml.pre`` name, each one splitting the pieces of the previous one.
- ``llama``: a SentencePiece vocabulary with scores, rebuilt the way Hugging Face's
  ``LlamaTokenizerFast`` does (BPE with byte fallback, merges derived from the scores).

The facts below (regexes, pre-name groups, token types, defaults) were read in llama.cpp's
``src/llama-vocab.cpp`` and ``src/unicode.cpp`` as vendored by llama-cpp-python 0.3.36.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from numaplan.errors import ModelFormatError

if TYPE_CHECKING:  # pragma: no cover - only for annotations
    import gguf

__all__ = ["gguf_metadata", "tokenizer_config", "tokenizer_from_gguf"]

# llama_token_type values of ``tokenizer.ggml.token_type`` (llama.h).
TOKEN_NORMAL = 1
TOKEN_UNKNOWN = 2
TOKEN_CONTROL = 3
TOKEN_USER_DEFINED = 4
TOKEN_UNUSED = 5
TOKEN_BYTE = 6

SPIECE_UNDERLINE = "▁"

# GPT-2's split regex, as llama.cpp spells it (no trailing ``|\s+``: a lone whitespace before a
# non-space stays an unmatched gap, which an "isolated" Split keeps as its own piece anyway).
_REGEX_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
# Qwen2's regex; llama.cpp rewrites the case-insensitive ``(?i:'s|...)`` group as classes.
_REGEX_QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama 3's regex: Qwen2's with numbers in runs of up to three digits.
_REGEX_LLAMA3 = _REGEX_QWEN2.replace(r"|\p{N}|", r"|\p{N}{1,3}|")

# llama.cpp classifies code points with its own tables (src/unicode-data.cpp), generated from
# Unicode 15.1; the Oniguruma inside ``tokenizers`` knows Unicode 16.0. The letters and numbers
# 16.0 added are unassigned for llama.cpp, so its \p{L} / \p{N} leave them out and its
# [^\s\p{L}\p{N}] takes them in. These are those code points (first, last), from Unicode 16.0's
# DerivedGeneralCategory; _llama_cpp_classes() rewrites the regexes to match llama.cpp's view.
_UNICODE_16_LETTERS = (
    (0x1C89, 0x1C8A), (0xA7CB, 0xA7CD), (0xA7DA, 0xA7DC), (0x105C0, 0x105F3), (0x10D4A, 0x10D65),
    (0x10D6F, 0x10D85), (0x10EC2, 0x10EC4), (0x11380, 0x11389), (0x1138B, 0x1138B),
    (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113B7), (0x113D1, 0x113D1),
    (0x113D3, 0x113D3), (0x11BC0, 0x11BE0), (0x13460, 0x143FA), (0x16100, 0x1611D),
    (0x16D40, 0x16D6C), (0x18CFF, 0x18CFF), (0x1E5D0, 0x1E5ED), (0x1E5F0, 0x1E5F0),
)
_UNICODE_16_NUMBERS = (
    (0x10D40, 0x10D49), (0x116D0, 0x116E3), (0x11BF0, 0x11BF9), (0x16130, 0x16139),
    (0x16D70, 0x16D79), (0x1CCF0, 0x1CCF9), (0x1E5F1, 0x1E5FA),
)


def _class_ranges(ranges: Sequence[tuple[int, int]]) -> str:
    """Code point ranges in Oniguruma's bracket syntax."""
    return "".join(
        f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges
    )


def _llama_cpp_classes(regex: str) -> str:
    r"""Rewrite ``\p{L}`` and ``\p{N}`` to mean what they mean in llama.cpp's Unicode 15.1."""
    extra = {"L": _class_ranges(_UNICODE_16_LETTERS), "N": _class_ranges(_UNICODE_16_NUMBERS)}
    out = []
    # The source regexes hold flat bracket classes only (no nesting, no escaped "]").
    for part in re.split(r"(\[[^\]]*\])", regex):
        used = [c for c in "LN" if rf"\p{{{c}}}" in part]
        if part.startswith("[") and used:
            # Negated: "not (... or letter or number)" also holds the 16.0 additions.
            assert part.startswith("[^"), f"unexpected class {part} in a pre-tokenizer regex"
            part = "[" + part + "".join(extra[c] for c in used) + "]"
        else:
            for c in used:
                part = part.replace(rf"\p{{{c}}}", rf"[\p{{{c}}}&&[^{extra[c]}]]")
        out.append(part)
    return "".join(out)


# pre-tokenizer type -> the regexes llama.cpp applies, in sequence.
_PRE_TYPES: dict[str, tuple[str, ...]] = {
    "gpt2": (_REGEX_GPT2,),
    "smollm": (r"\p{N}", _REGEX_GPT2),
    "qwen2": (_REGEX_QWEN2,),
    "llama3": (_REGEX_LLAMA3,),
}

# tokenizer.ggml.pre -> pre-tokenizer type, for the names whose llama.cpp type uses exactly the
# regexes above. Names llama.cpp also maps to these types but with behaviour we do not model (a
# SEP token appended: jina-v1-en, jina-v2-code, roberta-bpe; no BOS: chatglm-bpe, glm4) are
# left out on purpose.
_PRE_NAMES: dict[str, str] = {
    **dict.fromkeys(
        ("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
         "a.x-4.0", "mellum", "modern-bert", "exaone4", "mpt", "olmo", "jais", "trillion",
         "granite-docling"),
        "gpt2",
    ),
    **dict.fromkeys(
        ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b",
         "mellum2"),
        "smollm",
    ),
    **dict.fromkeys(
        ("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
         "solar-open"),
        "qwen2",
    ),
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
         "jina-v5-nano", "dbrx", "smaug-bpe"),
        "llama3",
    ),
}

# For the Llama 3 names proper (not dbrx / smaug-bpe, which share the regex) llama.cpp turns on
# ignore_merges (a pre-token found whole in the vocab is one id, before any merge is tried) and
# add_bos (before reading tokenizer.ggml.add_bos_token).
_PRE_NAMES_LLAMA3 = frozenset(
    ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
     "jina-v5-nano")
)

# llama.cpp retypes some tokens by their text when it loads a vocabulary, warning "control-looking
# token ... was not control-type ... its type will be overridden". The type matters here: it
# decides whether the text is cut out of the input as one token. End-of-generation markers are
# always made CONTROL:
_EOG_TEXTS = frozenset(
    ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
     "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
     "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
     "<｜end▁of▁sentence｜>", "[e~[")
)
# ... fill-in-the-middle markers only when the file does not give that marker's id (keys: the
# field and its deprecated spelling).
_FIM_TEXTS: dict[tuple[str, ...], frozenset[str]] = {
    ("fim_pre_token_id", "prefix_token_id"): frozenset(
        ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
         "<|code_prefix|>", "<|prefix|>")),
    ("fim_suf_token_id", "suffix_token_id"): frozenset(
        ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
         "<|code_suffix|>", "<|suffix|>")),
    ("fim_mid_token_id", "middle_token_id"): frozenset(
        ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
         "<|code_middle|>", "<|middle|>")),
    ("fim_pad_token_id",): frozenset(("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")),
    ("fim_rep_token_id",): frozenset(
        ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")),
    ("fim_sep_token_id",): frozenset(("<|file_sep|>",)),
}

_MODELS = ("gpt2", "llama")


def gguf_metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Decode every metadata field of a GGUF reader to plain Python values.

    Parameters
    ----------
    reader
        An open ``gguf.GGUFReader``.

    Returns
    -------
    dict
        Field name -> value: ``str``, ``int``, ``float``, ``bool`` or a list of those, as
        ``gguf.ReaderField.contents()`` decodes them (the ``GGUF.*`` header entries included).

    Examples
    --------
    >>> import gguf  # doctest: +SKIP
    >>> fields = gguf_metadata(gguf.GGUFReader("model.gguf"))  # doctest: +SKIP
    >>> fields["tokenizer.ggml.model"]  # doctest: +SKIP
    'gpt2'
    """
    return {name: field.contents() for name, field in reader.fields.items()}


def tokenizer_from_gguf(fields: Mapping[str, Any]) -> Tokenizer:
    """Build the ``tokenizers`` tokenizer described by a GGUF file's metadata.

    The result encodes like llama.cpp's ``llama_tokenize`` with ``parse_special=True``: CONTROL,
    USER_DEFINED and UNKNOWN tokens written in the text come out as their single ids. BOS/EOS
    are added by a ``TemplateProcessing`` post-processor only when ``add_bos_token`` /
    ``add_eos_token`` say so (llama.cpp's defaults apply when the fields are absent); encode
    with ``add_special_tokens=False`` to get llama.cpp's ``add_special=False`` ids.

    Parameters
    ----------
    fields
        The GGUF metadata as plain Python values (see :func:`gguf_metadata`); only the
        ``tokenizer.ggml.*`` entries are read.

    Returns
    -------
    tokenizers.Tokenizer
        A byte-level BPE tokenizer for ``tokenizer.ggml.model == "gpt2"``, or the
        ``LlamaTokenizerFast`` layout (BPE with byte fallback) for ``"llama"``.

    Raises
    ------
    ModelFormatError
        If the vocabulary kind or the pre-tokenizer name is not supported, or the token list is
        missing or inconsistent.

    Examples
    --------
    >>> tok = tokenizer_from_gguf(gguf_metadata(reader))  # doctest: +SKIP
    >>> tok.encode("<|im_start|>user\\nhi<|im_end|>").ids  # doctest: +SKIP
    [1, 4093, 198, 6004, 2]
    """
    model = _model_name(fields)
    tokens = _tokens(fields)
    types = _token_types(fields, tokens)
    if model == "gpt2":
        tokenizer = _byte_level_bpe(fields, tokens)
    else:
        tokenizer = _sentencepiece_bpe(fields, tokens)

    # The tokens llama.cpp cuts out of the text before its tokenizer sees it (with
    # parse_special): CONTROL, UNKNOWN and USER_DEFINED. The first two are "special", skipped
    # when decoding for display, as llama.cpp skips them. Where added tokens overlap inside the
    # text the two libraries may pick differently: HF takes the leftmost-longest match,
    # llama.cpp the longest token first, wherever it is.
    tokenizer.add_tokens([
        AddedToken(text, special=kind != TOKEN_USER_DEFINED, normalized=False)
        for text, kind in zip(tokens, types, strict=True)
        if kind in (TOKEN_CONTROL, TOKEN_UNKNOWN, TOKEN_USER_DEFINED)
    ])

    special = _special_ids(fields, model, len(tokens))
    add_bos, add_eos = _add_bos_eos(fields, model)
    if add_bos or add_eos:
        tokenizer.post_processor = _template(tokens, special, add_bos=add_bos, add_eos=add_eos)
    return tokenizer


def tokenizer_config(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The ``tokenizer_config.json`` that goes with :func:`tokenizer_from_gguf`'s tokenizer.

    Parameters
    ----------
    fields
        The GGUF metadata as plain Python values (see :func:`gguf_metadata`).

    Returns
    -------
    dict
        ``tokenizer_class``, ``bos_token`` / ``eos_token`` / ``unk_token`` / ``pad_token`` as
        strings (``None`` when the file names none), ``add_bos_token``, ``add_eos_token``,
        ``clean_up_tokenization_spaces`` (always false: the ids decode to the text as it was),
        ``chat_template`` when the file has ``tokenizer.chat_template`` and
        ``model_max_length`` when it has ``<architecture>.context_length``.

    Raises
    ------
    ModelFormatError
        If the vocabulary kind is not supported or the token list is missing.

    Examples
    --------
    >>> tokenizer_config(fields)["add_bos_token"]  # doctest: +SKIP
    False
    """
    model = _model_name(fields)
    tokens = _tokens(fields)
    special = _special_ids(fields, model, len(tokens))
    add_bos, add_eos = _add_bos_eos(fields, model)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
    }
    for role in ("bos", "eos", "unk", "pad"):
        token_id = special.get(role)
        config[f"{role}_token"] = None if token_id is None else tokens[token_id]
    if "tokenizer.chat_template" in fields:
        config["chat_template"] = fields["tokenizer.chat_template"]
    arch = fields.get("general.architecture")
    context = fields.get(f"{arch}.context_length") if arch else None
    if context is not None:
        config["model_max_length"] = int(context)
    return config


# -- metadata -------------------------------------------------------------------------------


def _model_name(fields: Mapping[str, Any]) -> str:
    """The ``tokenizer.ggml.model`` value, refused unless supported."""
    model = fields.get("tokenizer.ggml.model")
    if model not in _MODELS:
        raise ModelFormatError(
            f"unsupported tokenizer.ggml.model {model!r}; supported: {', '.join(_MODELS)}"
        )
    return model


def _tokens(fields: Mapping[str, Any]) -> list[str]:
    """The token strings, with llama.cpp's placeholder for empty ones; duplicates refused."""
    tokens = fields.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, Sequence) or isinstance(tokens, str) or not tokens:
        raise ModelFormatError("tokenizer.ggml.tokens is missing or empty")
    # llama.cpp renames empty tokens so that every text maps to one id; do the same so that the
    # ids stay aligned with its vocabulary.
    tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    if len(set(tokens)) != len(tokens):
        raise ModelFormatError("tokenizer.ggml.tokens holds the same token twice")
    return tokens


def _token_types(fields: Mapping[str, Any], tokens: list[str]) -> list[int]:
    """Token types after llama.cpp's load-time overrides (NORMAL when the field is absent)."""
    types = fields.get("tokenizer.ggml.token_type")
    if types is None:
        types = [TOKEN_NORMAL] * len(tokens)
    elif len(types) < len(tokens):
        raise ModelFormatError("tokenizer.ggml.token_type is shorter than tokenizer.ggml.tokens")
    types = [int(t) for t in types[: len(tokens)]]
    retyped = set(_EOG_TEXTS)
    for keys, texts in _FIM_TEXTS.items():
        if not any(f"tokenizer.ggml.{key}" in fields for key in keys):
            retyped |= texts
    for i, text in enumerate(tokens):
        if text in retyped and types[i] not in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            types[i] = TOKEN_CONTROL
    return types


def _pre_type(fields: Mapping[str, Any]) -> tuple[tuple[str, ...], bool]:
    """The regexes and the ignore_merges flag for ``tokenizer.ggml.pre``."""
    pre = fields.get("tokenizer.ggml.pre")
    kind = _PRE_NAMES.get(pre) if isinstance(pre, str) else None
    if kind is None:
        groups = {k: sorted(n for n, g in _PRE_NAMES.items() if g == k) for k in _PRE_TYPES}
        supported = "; ".join(", ".join(names) for names in groups.values())
        raise ModelFormatError(
            f"unsupported tokenizer.ggml.pre {pre!r} for a gpt2 vocabulary; supported: {supported}"
        )
    return _PRE_TYPES[kind], pre in _PRE_NAMES_LLAMA3


def _special_ids(fields: Mapping[str, Any], model: str, n_tokens: int) -> dict[str, int]:
    """BOS/EOS/UNK/PAD ids from the ``*_token_id`` fields, out-of-range ones dropped."""
    # llama.cpp's defaults when a field is absent: SentencePiece vocabularies follow LLaMA's
    # layout (<unk>=0, <s>=1, </s>=2); its BPE defaults (id 11) are a Falcon leftover we do not
    # carry over, so a BPE file without the fields simply has no such token.
    ids: dict[str, int] = {"unk": 0, "bos": 1, "eos": 2} if model == "llama" else {}
    keys = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id",
            "pad": "padding_token_id"}
    for role, key in keys.items():
        value = fields.get(f"tokenizer.ggml.{key}")
        if value is not None:
            ids[role] = int(value)
    return {role: i for role, i in ids.items() if 0 <= i < n_tokens}


def _add_bos_eos(fields: Mapping[str, Any], model: str) -> tuple[bool, bool]:
    """``add_bos_token`` / ``add_eos_token`` with llama.cpp's per-vocabulary defaults."""
    if model == "llama":
        add_bos = True
    else:
        add_bos = fields.get("tokenizer.ggml.pre") in _PRE_NAMES_LLAMA3
    add_bos = bool(fields.get("tokenizer.ggml.add_bos_token", add_bos))
    add_eos = bool(fields.get("tokenizer.ggml.add_eos_token", False))
    return add_bos, add_eos


def _template(tokens: list[str], special: dict[str, int], *, add_bos: bool,
              add_eos: bool) -> processors.TemplateProcessing:
    """A post-processor adding BOS and/or EOS around each sequence."""
    used = []
    for role, wanted in (("bos", add_bos), ("eos", add_eos)):
        if wanted:
            if role not in special:
                raise ModelFormatError(
                    f"tokenizer.ggml.add_{role}_token is true but tokenizer.ggml.{role}_token_id "
                    "is not set"
                )
            used.append((tokens[special[role]], special[role]))
    bos = [f"{tokens[special['bos']]}:0"] if add_bos else []
    eos = [f"{tokens[special['eos']]}:0"] if add_eos else []
    return processors.TemplateProcessing(
        single=[*bos, "$A:0", *eos],
        pair=[*bos, "$A:0", *eos, *bos, "$B:1", *eos],
        special_tokens=used,
    )


# -- the two vocabulary kinds ----------------------------------------------------------------


def _byte_level_bpe(fields: Mapping[str, Any], tokens: list[str]) -> Tokenizer:
    """Byte-level BPE: vocab and merges as stored, llama.cpp's regexes as pre-tokenizer."""
    regexes, ignore_merges = _pre_type(fields)
    merges = []
    for line in fields.get("tokenizer.ggml.merges") or ():
        # llama.cpp splits a merge at the first space after the first character.
        cut = line.find(" ", 1)
        if cut < 0:
            raise ModelFormatError(f"tokenizer.ggml.merges entry {line!r} is not 'left right'")
        merges.append((line[:cut], line[cut + 1 :]))
    vocab = {text: i for i, text in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab, merges, ignore_merges=ignore_merges))
    # Every regex splits each piece the previous one produced, like llama.cpp's
    # unicode_regex_split; "isolated" keeps the unmatched stretches as pieces of their own.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(_llama_cpp_classes(r)), behavior="isolated") for r in regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(fields: Mapping[str, Any], tokens: list[str]) -> Tokenizer:
    """A SentencePiece vocabulary in Hugging Face's LlamaTokenizerFast layout."""
    scores = fields.get("tokenizer.ggml.scores")
    if scores is None or len(scores) < len(tokens):
        raise ModelFormatError("a llama (SentencePiece) vocabulary needs tokenizer.ggml.scores")
    vocab = {text: i for i, text in enumerate(tokens)}
    merges = _merges_from_scores(tokens, [float(s) for s in scores[: len(tokens)]])
    # Only characters whose bytes lack <0xXX> tokens fall back to <unk>.
    unk_id = _special_ids(fields, "llama", len(tokens)).get("unk")
    unk = None if unk_id is None else tokens[unk_id]
    tokenizer = Tokenizer(
        models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    steps = []
    # llama.cpp prefixes every text fragment (the start, and text after a special token) with a
    # space unless the file says otherwise; HF runs the normalizer once per such fragment.
    if fields.get("tokenizer.ggml.add_space_prefix", True) is not False:
        steps.append(normalizers.Prepend(SPIECE_UNDERLINE))
    steps.append(normalizers.Replace(" ", SPIECE_UNDERLINE))
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse(),
         decoders.Strip(" ", 1, 0)]
    )
    return tokenizer


def _merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's score-driven merging.

    Every split of a piece into two pieces of the vocabulary is a merge. Ordered as Hugging
    Face's ``SentencePieceExtractor`` orders them: by the merged piece's score, highest first;
    equal scores keep vocabulary order, and the splits of one piece are ordered by the ids of
    (left, right). llama.cpp ranks a candidate pair by the same score, so the highest-ranked
    merge is the one it would apply.
    """
    ids = {text: i for i, text in enumerate(tokens)}
    ranked = []
    for piece_id, piece in enumerate(tokens):
        splits = [
            (ids[piece[:k]], ids[piece[k:]])
            for k in range(1, len(piece))
            if piece[:k] in ids and piece[k:] in ids
        ]
        ranked.extend((-scores[piece_id], piece_id, left, right) for left, right in sorted(splits))
    ranked.sort()
    return [(tokens[left], tokens[right]) for _, _, left, right in ranked]
