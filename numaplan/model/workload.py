"""The :class:`Workload`: every tensor of a model, with its role, bytes, location and shard rule.

This is what the workload layer hands to the planner. It is built from an MLC model directory
(``mlc-chat-config.json`` + ``tensor-cache.json``/``ndarray-cache.json``) without reading any
weight, or, for a model not converted yet, from a Hugging Face ``config.json`` plus the
quantization it will be converted with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError, model_validator

from numaplan._base import Frozen
from numaplan._io import dumps_canonical
from numaplan.errors import ModelFormatError
from numaplan.model.config import (
    HF_CONFIG_NAME,
    MLC_CONFIG_NAME,
    ModelConfig,
    read_hf_config,
    read_mlc_config,
)
from numaplan.model.dtypes import DTYPE_ITEMSIZE, Encoding, encoded_itemsize, numel
from numaplan.model.quantization import get_quantization
from numaplan.model.roles import Role, classify_tensor
from numaplan.model.sharding import (
    ShardRule,
    mlc_shard_rule,
    shard_byte_ranges,
    shard_mem_nbytes,
    shard_nbytes,
    shard_shape,
)
from numaplan.model.synthetic import synthesize_tensor_cache
from numaplan.model.tensor_cache import (
    TENSOR_CACHE_NAME,
    TensorCache,
    find_tensor_cache,
    read_tensor_cache,
)

#: Where a workload's index came from.
Source = Literal["tensor-cache", "ndarray-cache", "hf-config"]


class TensorInfo(Frozen):
    """One tensor of the model.

    ``nbytes`` is the size in the shard file (encoded), ``mem_nbytes`` the size once loaded;
    they differ only for float32 stored ``f32-to-bf16``. The tensor's bytes are
    ``[byte_offset, byte_offset + nbytes)`` of ``data_path`` (relative to the model directory).
    """

    name: str
    role: Role
    layer: int | None = None
    shape: tuple[int, ...]
    dtype: str
    format: Encoding = "raw"
    nbytes: int
    mem_nbytes: int
    data_path: str
    byte_offset: int
    shard_rule: ShardRule

    @model_validator(mode="after")
    def _consistent(self) -> TensorInfo:
        if self.dtype not in DTYPE_ITEMSIZE:
            raise ValueError(f"{self.name}: unknown dtype {self.dtype!r}")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"{self.name}: negative dimension in {list(self.shape)}")
        if self.nbytes != numel(self.shape) * encoded_itemsize(self.dtype, self.format):
            raise ValueError(f"{self.name}: nbytes {self.nbytes} does not match the shape")
        if self.mem_nbytes != numel(self.shape) * DTYPE_ITEMSIZE[self.dtype]:
            raise ValueError(f"{self.name}: mem_nbytes {self.mem_nbytes} does not match the "
                             "shape")
        if self.byte_offset < 0:
            raise ValueError(f"{self.name}: negative byte_offset")
        rule = self.shard_rule
        if rule.is_split and (rule.dim >= len(self.shape)  # type: ignore[operator]
                              or sum(rule.segments) != self.shape[rule.dim]):  # type: ignore[index]
            raise ValueError(f"{self.name}: shard rule {rule} does not fit shape "
                             f"{list(self.shape)}")
        return self

    @property
    def is_split(self) -> bool:
        """Whether workers hold different pieces (else every worker holds it all)."""
        return self.shard_rule.is_split

    def shard_shape(self, num_workers: int) -> tuple[int, ...]:
        """Shape of each worker's piece (see :func:`numaplan.model.sharding.shard_shape`)."""
        return shard_shape(self.shape, self.shard_rule, num_workers)

    def shard_nbytes(self, num_workers: int) -> int:
        """On-disk bytes of each worker's piece."""
        return shard_nbytes(self.shape, self.dtype, self.shard_rule, num_workers,
                            encoding=self.format)

    def shard_mem_nbytes(self, num_workers: int) -> int:
        """In-memory bytes of each worker's piece."""
        return shard_mem_nbytes(self.shape, self.dtype, self.shard_rule, num_workers)

    def shard_byte_ranges(self, num_workers: int, worker: int) -> tuple[tuple[int, int], ...]:
        """``(offset, length)`` ranges of ``data_path`` that worker ``worker`` must read."""
        return shard_byte_ranges(self.shape, self.dtype, self.shard_rule, num_workers, worker,
                                 byte_offset=self.byte_offset, encoding=self.format)


class Workload(Frozen):
    """A model as the planner sees it: architecture facts and every tensor.

    ``model_dtype`` is the activation dtype (also that of the KV cache and of all-reduces).
    ``context_window_size`` is the most tokens of KV cache one sequence holds: the config's
    context window, or the sliding window for sliding-window models (-1 if neither is known).
    ``tensor_parallel_shards`` is the degree the config was generated for, not necessarily
    the one planned. ``fingerprint`` is the sha256 of a canonical JSON of the model facts and
    the index (name, shape, dtype, format, nbytes, file, offset of every tensor, sorted by name):
    it is filled in when left empty and checked when given, so a plan made for another index is
    detected.
    """

    model_type: str
    quantization: str
    model_dtype: str
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_hidden_layers: int
    vocab_size: int
    tie_word_embeddings: bool
    context_window_size: int
    tensor_parallel_shards: int = 1
    source: Source
    tensors: tuple[TensorInfo, ...]
    fingerprint: str = ""

    @model_validator(mode="after")
    def _index_and_fingerprint(self) -> Workload:
        names = [t.name for t in self.tensors]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"tensor {dup!r} is listed twice")
        expected = _fingerprint(self)
        if not self.fingerprint:
            # Frozen model: the only moment to fill a derived field is during validation.
            object.__setattr__(self, "fingerprint", expected)
        elif self.fingerprint != expected:
            raise ValueError("fingerprint does not match the tensor index and model facts")
        return self

    def tensor(self, name: str) -> TensorInfo:
        """The tensor called ``name``.

        Raises
        ------
        KeyError
            When there is none.
        """
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def iter_role(self, role: Role | str) -> Iterator[TensorInfo]:
        """The tensors of one role, in index order."""
        role = Role(role)
        return (t for t in self.tensors if t.role is role)

    def to_json(self) -> str:
        """Canonical JSON text."""
        return self.model_dump_json(indent=2) + "\n"


_FACT_FIELDS = ("model_type", "quantization", "model_dtype", "hidden_size", "intermediate_size",
                "num_attention_heads", "num_key_value_heads", "head_dim", "num_hidden_layers",
                "vocab_size", "tie_word_embeddings", "context_window_size",
                "tensor_parallel_shards")
_INDEX_FIELDS = ("name", "shape", "dtype", "format", "nbytes", "data_path", "byte_offset")


def _fingerprint(workload: Workload) -> str:
    doc: dict[str, Any] = {k: getattr(workload, k) for k in _FACT_FIELDS}
    # Sorted by name: the same tensors at the same places are the same weights whatever the
    # record order in the JSON.
    doc["tensors"] = [{k: getattr(t, k) for k in _INDEX_FIELDS}
                      for t in sorted(workload.tensors, key=lambda t: t.name)]
    return hashlib.sha256(dumps_canonical(doc).encode()).hexdigest()


def _kv_window(config: ModelConfig) -> int:
    """Tokens of KV cache one sequence can hold: the context window, or for sliding-window
    models (MLC writes ``context_window_size = -1``) the window; -1 only when neither is set."""
    if config.context_window_size > 0:
        return config.context_window_size
    return config.sliding_window_size if config.sliding_window_size > 0 else -1


def workload_from_index(config: ModelConfig, cache: TensorCache, *, source: Source,
                        path: str | Path | None = None) -> Workload:
    """Combine a model config and a weight index into a :class:`Workload`.

    Parameters
    ----------
    config
        The model configuration.
    cache
        The weight index (read or synthesised).
    source
        Recorded in the workload.
    path
        Named in errors.

    Raises
    ------
    ModelFormatError
        When a tensor's shape contradicts the config (e.g. a fused qkv whose rows are not
        ``(heads + 2 * kv_heads) * head_dim``) or the quantization is unknown.
    """
    try:
        quant = get_quantization(config.quantization)
    except ModelFormatError as exc:
        raise ModelFormatError(exc.message, path=path) from None
    q_rows = config.num_attention_heads * config.head_dim
    kv_rows = config.num_key_value_heads * config.head_dim
    tensors = []
    for shard, record in cache.iter_records():
        role = classify_tensor(record.name)
        try:
            rule = mlc_shard_rule(role, record.shape, q_rows=q_rows, kv_rows=kv_rows,
                                  intermediate_size=config.intermediate_size,
                                  kn_layout=quant.layout == "KN")
        except ValueError as exc:
            raise ModelFormatError(f"tensor {record.name!r}: {exc}", path=path) from None
        tensors.append(TensorInfo(
            name=record.name, role=role.role, layer=role.layer, shape=record.shape,
            dtype=record.dtype, format=record.format, nbytes=record.nbytes,
            mem_nbytes=record.mem_nbytes, data_path=shard.data_path,
            byte_offset=record.byte_offset, shard_rule=rule))
    try:
        return Workload(
            model_type=config.model_type, quantization=config.quantization,
            model_dtype=quant.model_dtype, hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim,
            num_hidden_layers=config.num_hidden_layers, vocab_size=config.vocab_size,
            tie_word_embeddings=config.tie_word_embeddings,
            context_window_size=_kv_window(config),
            tensor_parallel_shards=config.tensor_parallel_shards, source=source,
            tensors=tuple(tensors))
    except ValidationError as exc:
        msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ModelFormatError(msg, path=path) from None


def load_workload(model_dir: str | Path, *, quantization: str | None = None) -> Workload:
    """Describe the model in ``model_dir`` without reading its weights.

    Parameters
    ----------
    model_dir
        Either an MLC model directory (``mlc-chat-config.json`` and ``tensor-cache.json``, or the
        older ``ndarray-cache.json``), or a directory holding only a Hugging Face ``config.json``
        (families: llama, mistral, qwen2, phi3), whose tensors are then derived as
        ``mlc_llm convert_weight`` would write them.
    quantization
        Required for a Hugging Face directory. For an MLC directory it may be given, and must
        then equal the config's.

    Returns
    -------
    Workload

    Raises
    ------
    ModelFormatError
        When a file is missing (named), malformed or in the legacy format, when a Hugging Face
        directory comes without ``quantization``, or when ``quantization`` contradicts the
        MLC config.

    Examples
    --------
    >>> import tempfile
    >>> from numaplan.model.presets import write_hf_config
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = write_hf_config(d, "llama3-8b")
    ...     w = load_workload(d, quantization="q4f16_1")
    >>> len(w.tensors), w.source
    (325, 'hf-config')
    """
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise ModelFormatError("model directory not found", path=model_dir)
    if not model_dir.is_dir():
        raise ModelFormatError("not a directory (expected an MLC model directory)",
                               path=model_dir)
    mlc_config = model_dir / MLC_CONFIG_NAME
    if mlc_config.exists():
        config = read_mlc_config(mlc_config)
        if quantization is not None and quantization != config.quantization:
            raise ModelFormatError(f"quantization {quantization!r} was requested but the model "
                                   f"is quantized {config.quantization!r}", path=mlc_config)
        index = find_tensor_cache(model_dir)
        cache = read_tensor_cache(index)
        source: Source = "tensor-cache" if index.name == TENSOR_CACHE_NAME else "ndarray-cache"
        return workload_from_index(config, cache, source=source, path=index)
    hf_config = model_dir / HF_CONFIG_NAME
    if hf_config.exists():
        if quantization is None:
            raise ModelFormatError(
                f"only a Hugging Face {HF_CONFIG_NAME} (no {MLC_CONFIG_NAME}): pass "
                "--quantization (e.g. q4f16_1) to plan for the converted model", path=hf_config)
        config = read_hf_config(hf_config, quantization=quantization)
        try:
            cache = synthesize_tensor_cache(config, get_quantization(quantization))
        except ModelFormatError as exc:
            raise ModelFormatError(exc.message, path=hf_config) from None
        return workload_from_index(config, cache, source="hf-config", path=hf_config)
    raise ModelFormatError(f"not a model directory: {MLC_CONFIG_NAME} not found (nor a Hugging "
                           f"Face {HF_CONFIG_NAME})", path=mlc_config)
