"""Model configuration: ``mlc-chat-config.json`` (MLC) or ``config.json`` (Hugging Face).

Only the facts planning needs are kept: sizes, head counts, vocabulary, tying, context window
and the configured tensor-parallel degree. Unknown fields are ignored because real files carry
fields from many MLC releases (``mean_gen_len``, ``shift_fill_factor``, ``tokenizer_info``...).
Sizes are looked up in ``model_config`` first and then in the top-level copies that
``gen_config`` also writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import field_validator, model_validator

from numaplan._base import Frozen
from numaplan._io import read_json
from numaplan.errors import ModelFormatError
from numaplan.model.quantization import get_quantization

MLC_CONFIG_NAME = "mlc-chat-config.json"
HF_CONFIG_NAME = "config.json"

_MISSING = object()


class ModelConfig(Frozen):
    """The architecture facts of a model, whatever file they came from.

    ``context_window_size`` is ``-1`` when the model has no fixed window (MLC writes that for
    sliding-window models). ``tensor_parallel_shards`` is the degree the config was generated
    for; planning may choose another one (see :func:`numaplan.model.validate_tp`).
    """

    model_type: str
    quantization: str
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_hidden_layers: int
    vocab_size: int
    tie_word_embeddings: bool = False
    context_window_size: int = -1
    sliding_window_size: int = -1
    tensor_parallel_shards: int = 1
    rms_norm_eps: float | None = None

    @field_validator("hidden_size", "intermediate_size", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "num_hidden_layers", "vocab_size",
                     "tensor_parallel_shards")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"must be positive, got {v}")
        return v

    @model_validator(mode="after")
    def _heads_group(self) -> ModelConfig:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads={self.num_key_value_heads}")
        return self


def read_mlc_config(path: str | Path) -> ModelConfig:
    """Read an ``mlc-chat-config.json``.

    Parameters
    ----------
    path
        The file, or the model directory holding it.

    Raises
    ------
    ModelFormatError
        When the file is missing, not JSON, in the pre-2024 legacy format, or lacks a required
        field or has one of the wrong type or a non-positive size (the message names the field).
    """
    path = Path(path)
    if path.is_dir():
        path = path / MLC_CONFIG_NAME
    return parse_mlc_config(read_json(path, error=ModelFormatError), path=path)


def parse_mlc_config(doc: Any, *, path: str | Path | None = None) -> ModelConfig:
    """Build a :class:`ModelConfig` from the parsed JSON of an ``mlc-chat-config.json``.

    Parameters
    ----------
    doc
        The parsed document.
    path
        Named in errors.

    Raises
    ------
    ModelFormatError
        As :func:`read_mlc_config`.
    """
    if not isinstance(doc, dict):
        raise ModelFormatError("expected a JSON object", path=path)
    _reject_legacy(doc, path)
    model_config = doc.get("model_config", _MISSING)
    if model_config is _MISSING:
        raise ModelFormatError("missing required field 'model_config'", path=path)
    if not isinstance(model_config, dict):
        raise ModelFormatError("field 'model_config' must be an object", path=path)
    fields = _Fields(path, model_config, doc, prefix="model_config.")
    return _build(fields, path,
                  model_type=fields.string("model_type", top_level_first=True),
                  quantization=fields.quantization("quantization"))


def read_hf_config(path: str | Path, *, quantization: str) -> ModelConfig:
    """Read a Hugging Face ``config.json`` as MLC would see it after conversion.

    Parameters
    ----------
    path
        The file, or the directory holding it.
    quantization
        The MLC quantization the model would be converted with (the HF config does not say).

    Raises
    ------
    ModelFormatError
        When the file is missing or malformed, or the quantization is unknown.
    """
    path = Path(path)
    if path.is_dir():
        path = path / HF_CONFIG_NAME
    doc = read_json(path, error=ModelFormatError)
    if not isinstance(doc, dict):
        raise ModelFormatError("expected a JSON object", path=path)
    get_quantization(quantization)
    fields = _Fields(path, doc, {}, prefix="")
    return _build(fields, path, model_type=fields.string("model_type"),
                  quantization=quantization)


def _reject_legacy(doc: Mapping[str, Any], path: str | Path | None) -> None:
    """Refuse the 2023 format (``model_lib``/``local_id``/string ``conv_template``)."""
    markers = [k for k in ("model_lib", "local_id") if k in doc]
    if isinstance(doc.get("conv_template"), str) and "model_config" not in doc:
        markers.append("conv_template as a string")
    if markers:
        raise ModelFormatError(
            f"legacy (pre-2024) mlc-chat-config.json (has {', '.join(markers)}); "
            "regenerate it with `mlc_llm gen_config`", path=path)


def _build(fields: _Fields, path: str | Path | None, *, model_type: str,
           quantization: str) -> ModelConfig:
    hidden = fields.size("hidden_size")
    heads = fields.size("num_attention_heads")
    # MLC (and HF) treat a missing, null or 0 kv-head count / head_dim as "use the default".
    kv_heads = fields.size("num_key_value_heads", default=heads, zero_is_default=True)
    head_dim = fields.size("head_dim", default=0, zero_is_default=True)
    if head_dim == 0:
        if hidden % heads:
            raise ModelFormatError(
                f"{fields.prefix}head_dim is missing and hidden_size={hidden} is not a multiple "
                f"of num_attention_heads={heads}", path=path)
        head_dim = hidden // heads
    context = fields.integer("context_window_size", "max_position_embeddings",
                             "max_sequence_length", default=-1)
    if context == 0 or context < -1:
        raise ModelFormatError(f"{fields.prefix}context_window_size must be positive or -1, "
                               f"got {context}", path=path)
    values = dict(
        model_type=model_type,
        quantization=quantization,
        hidden_size=hidden,
        intermediate_size=fields.size("intermediate_size"),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        num_hidden_layers=fields.size("num_hidden_layers"),
        vocab_size=fields.size("vocab_size"),
        tie_word_embeddings=fields.boolean("tie_word_embeddings", default=False),
        context_window_size=context,
        sliding_window_size=fields.integer("sliding_window_size", default=-1),
        tensor_parallel_shards=fields.size("tensor_parallel_shards", default=1),
        rms_norm_eps=fields.number("rms_norm_eps", default=None),
    )
    try:
        return ModelConfig(**values)  # type: ignore[arg-type]
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ModelFormatError(first_error(exc), path=path) from None


def first_error(exc: ValueError) -> str:
    """A pydantic validation error as one line: the field and its message."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc)
    err = errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc + ': ' if loc else ''}{msg}"


class _Fields:
    """Typed field lookup in a primary mapping, then a fallback one, with errors naming both."""

    def __init__(self, path: str | Path | None, primary: Mapping[str, Any],
                 fallback: Mapping[str, Any], *, prefix: str) -> None:
        self.path = path
        self.primary = primary
        self.fallback = fallback
        self.prefix = prefix

    def _lookup(self, names: tuple[str, ...], *, top_level_first: bool = False
                ) -> tuple[str, Any]:
        sources = [(self.prefix, self.primary), ("", self.fallback)]
        if top_level_first:
            sources.reverse()
        for prefix, source in sources:
            for name in names:
                if source.get(name) is not None:
                    return prefix + name, source[name]
        return self.prefix + names[0], _MISSING

    def _fail(self, field: str, problem: str) -> ModelFormatError:
        return ModelFormatError(f"{field}: {problem}", path=self.path)

    def string(self, *names: str, top_level_first: bool = False) -> str:
        field, value = self._lookup(names, top_level_first=top_level_first)
        if value is _MISSING:
            raise self._fail(names[0], "missing required field")
        if not isinstance(value, str) or not value:
            raise self._fail(field, f"must be a non-empty string, got {value!r}")
        return value

    def quantization(self, name: str) -> str:
        value = self.string(name, top_level_first=True)
        try:
            get_quantization(value)
        except ModelFormatError as exc:
            raise self._fail(name, exc.message) from None
        return value

    def integer(self, *names: str, default: Any = _MISSING) -> Any:
        field, value = self._lookup(names)
        if value is _MISSING:
            if default is _MISSING:
                raise self._fail(field, "missing required field")
            return default
        # bool is an int subclass in Python; JSON true is not a size.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(field, f"must be an integer, got {value!r}")
        return value

    def size(self, name: str, *, default: Any = _MISSING, zero_is_default: bool = False) -> int:
        field, raw = self._lookup((name,))
        if raw is _MISSING or (zero_is_default and raw == 0 and not isinstance(raw, bool)):
            if default is _MISSING:
                raise self._fail(field, "missing required field")
            return default
        value = self.integer(name)
        if value <= 0:
            raise self._fail(field, f"must be positive, got {value}")
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        field, value = self._lookup((name,))
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise self._fail(field, f"must be true or false, got {value!r}")
        return value

    def number(self, name: str, *, default: float | None) -> float | None:
        field, value = self._lookup((name,))
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(field, f"must be a number, got {value!r}")
        return float(value)
