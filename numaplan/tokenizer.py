"""Text to token ids and back, with Hugging Face's ``tokenizers`` (``tokenizer.json``, which MLC
also reads), and text streamed token by token.

Special tokens written in the text (``<|im_start|>``) are tokens, as llama.cpp's
``special=True`` and MLC's tokenizer treat them; BOS/EOS are added only as the tokenizer's own
post-processor says (``tokenizer_config.json``'s ``add_bos_token``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from numaplan.errors import ModelFormatError

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    """A model directory's tokenizer.

    Parameters
    ----------
    model_dir
        Directory holding ``tokenizer.json``.

    Raises
    ------
    ModelFormatError
        No ``tokenizer.json``, or one ``tokenizers`` cannot read.
    """

    def __init__(self, model_dir: str | Path) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(model_dir) / TOKENIZER_FILE
        if not path.is_file():
            raise ModelFormatError("no tokenizer.json: the model directory has no tokenizer "
                                   "(pass token ids, or convert the model with numaplan "
                                   "convert)", path=path)
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own Exception subclass
            raise ModelFormatError(f"cannot read: {str(exc).splitlines()[0]}",
                                   path=path) from None

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``."""
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int | None:
        """The id of one token string, if it is in the vocabulary."""
        return self._tok.token_to_id(token)

    def stream(self) -> StreamDecoder:
        """A decoder that turns ids into text as they come."""
        return StreamDecoder(self)


class StreamDecoder:
    """Incremental detokenization: text is emitted once the tokens that make it are complete.

    A token can end inside a UTF-8 sequence (byte-level BPE splits multi-byte characters), and
    a token's text can depend on its neighbours (leading-space rules), so each step decodes a
    short window of recent ids and emits only what the window adds, holding back a trailing
    replacement character until the next token completes it.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the decoding window
        self.read = 0  # ids already turned into emitted text

    def push(self, token: int) -> str:
        """Add one id; the new text it completes (maybe empty)."""
        self.ids.append(int(token))
        before = self.tok.decode(self.ids[self.prefix:self.read])
        after = self.tok.decode(self.ids[self.prefix:])
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]

    def flush(self) -> str:
        """Whatever is still held back (at the end of generation)."""
        before = self.tok.decode(self.ids[self.prefix:self.read])
        after = self.tok.decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return after[len(before):]
