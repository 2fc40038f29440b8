"""The weight index of an MLC model: ``tensor-cache.json`` (or the older ``ndarray-cache.json``).

Schema (written by ``tvm.contrib.tvmjs.dump_tensor_cache``, read by TVM's
``runtime/vm/tensor_cache_support.cc``)::

    {"metadata": {...free form...},
     "records": [{"dataPath": "params_shard_0.bin", "format": "raw-shard", "nbytes": <file size>,
                  "md5sum": "<hex>",                       # optional (absent in 2023 caches)
                  "records": [{"name": ..., "shape": [...], "dtype": "float16",
                               "format": "raw" | "f32-to-bf16", "nbytes": <encoded bytes>,
                               "byteOffset": <offset in the shard file>}, ...]}, ...]}

Reading the index never touches the shard files: planning needs no weights.
:func:`check_shard_files` is the separate step a loader runs before reading them.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from numaplan._base import Frozen
from numaplan._io import read_json
from numaplan.errors import ModelFormatError
from numaplan.model.dtypes import DTYPE_ITEMSIZE, ENCODINGS, Encoding, encoded_itemsize, numel

TENSOR_CACHE_NAME = "tensor-cache.json"
#: The name before mlc-llm PR #3326 (Sept 2025); same schema. TVM 0.27 only opens the new name.
LEGACY_TENSOR_CACHE_NAME = "ndarray-cache.json"


class TensorRecord(Frozen):
    """One tensor inside a shard file.

    ``nbytes`` is the encoded (on-disk) size; :attr:`mem_nbytes` the decoded one.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    format: Encoding
    nbytes: int
    byte_offset: int

    @property
    def mem_nbytes(self) -> int:
        """Bytes once loaded (float32 stored as bf16 takes 4 bytes an element again)."""
        return numel(self.shape) * DTYPE_ITEMSIZE[self.dtype]


class ShardFile(Frozen):
    """One ``params_shard_K.bin`` and the tensors it holds.

    ``data_path`` is relative to the model directory, with any ``?query`` suffix removed.
    """

    data_path: str
    nbytes: int
    md5sum: str | None = None
    records: tuple[TensorRecord, ...]


class TensorCache(Frozen):
    """A validated weight index.

    ``index_name`` is the file it was read from (``tensor-cache.json`` or
    ``ndarray-cache.json``), or ``""`` for an index synthesised from a config.
    """

    index_name: str
    shards: tuple[ShardFile, ...]

    def iter_records(self) -> Iterator[tuple[ShardFile, TensorRecord]]:
        """Every tensor with its shard, in file order."""
        for shard in self.shards:
            for record in shard.records:
                yield shard, record

    @property
    def num_tensors(self) -> int:
        """Number of tensor records."""
        return sum(len(s.records) for s in self.shards)

    @property
    def total_nbytes(self) -> int:
        """Sum of the shard files' sizes."""
        return sum(s.nbytes for s in self.shards)


def find_tensor_cache(model_dir: str | Path) -> Path:
    """The weight index of ``model_dir``: ``tensor-cache.json``, else ``ndarray-cache.json``.

    Raises
    ------
    ModelFormatError
        When neither exists (the message names both).
    """
    model_dir = Path(model_dir)
    for name in (TENSOR_CACHE_NAME, LEGACY_TENSOR_CACHE_NAME):
        if (model_dir / name).is_file():
            return model_dir / name
    raise ModelFormatError(f"no weight index: neither {TENSOR_CACHE_NAME} nor "
                           f"{LEGACY_TENSOR_CACHE_NAME} exists", path=model_dir / TENSOR_CACHE_NAME)


def read_tensor_cache(path: str | Path) -> TensorCache:
    """Read and validate a weight index.

    Parameters
    ----------
    path
        The index file, or the model directory (then :func:`find_tensor_cache` picks the file).
        ``dataPath`` values are relative to the file's directory.

    Raises
    ------
    ModelFormatError
        On a missing/empty/invalid file, a missing or mistyped field, an unknown dtype, a
        negative dimension, an ``nbytes`` that disagrees with shape and dtype, a tensor outside
        its shard or overlapping another, a duplicate name, or a ``dataPath`` that is absolute
        or leaves the model directory. The message names the index file and the record.
    """
    path = Path(path)
    if path.is_dir():
        path = find_tensor_cache(path)
    doc = read_json(path, error=ModelFormatError)
    return parse_tensor_cache(doc, path=path, model_dir=path.parent)


def parse_tensor_cache(doc: Any, *, path: str | Path, model_dir: str | Path) -> TensorCache:
    """Validate the parsed JSON of a weight index (see :func:`read_tensor_cache`).

    Parameters
    ----------
    doc
        The parsed document.
    path
        The index file, named in errors; its name becomes ``index_name``.
    model_dir
        The directory ``dataPath`` values must stay inside.
    """
    path = Path(path)
    if not isinstance(doc, dict):
        raise ModelFormatError("expected a JSON object", path=path)
    shards_doc = _field(doc, "records", list, path, "")
    shards: list[ShardFile] = []
    seen: dict[str, str] = {}
    for k, shard_doc in enumerate(shards_doc):
        where = f"records[{k}]"
        shard = _parse_shard(shard_doc, where, path, Path(model_dir))
        for j, record in enumerate(shard.records):
            if record.name in seen:
                raise ModelFormatError(f"{where}.records[{j}]: duplicate tensor name "
                                       f"{record.name!r} (first at {seen[record.name]})",
                                       path=path)
            seen[record.name] = f"{where}.records[{j}]"
        shards.append(shard)
    return TensorCache(index_name=path.name, shards=tuple(shards))


def check_shard_files(model_dir: str | Path, cache: TensorCache, *,
                      verify_md5: bool = False) -> None:
    """Check that every shard file exists, stays inside ``model_dir`` and has its recorded size.

    Running a model needs this; planning does not. TVM's loader checks the size too, but only
    when it gets there; this fails early with the file named.

    Parameters
    ----------
    model_dir
        The model directory.
    cache
        The index read from it.
    verify_md5
        Also compare each file's md5 with ``md5sum`` when recorded (reads every byte; TVM
        itself never verifies it).

    Raises
    ------
    ModelFormatError
        Naming the first shard file that is missing, escapes the directory, has the wrong size
        or the wrong checksum.
    """
    model_dir = Path(model_dir)
    for shard in cache.shards:
        file = model_dir / shard.data_path
        _check_inside(shard.data_path, model_dir, file)
        if not file.is_file():
            raise ModelFormatError("shard file not found", path=file)
        size = file.stat().st_size
        if size != shard.nbytes:
            raise ModelFormatError(f"shard file has {size} bytes, the index records "
                                   f"{shard.nbytes}", path=file)
        if verify_md5 and shard.md5sum:
            digest = hashlib.md5()
            with file.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != shard.md5sum.lower():
                raise ModelFormatError(f"md5 {digest.hexdigest()} differs from the recorded "
                                       f"{shard.md5sum}", path=file)


def _parse_shard(doc: Any, where: str, path: Path, model_dir: Path) -> ShardFile:
    if not isinstance(doc, dict):
        raise ModelFormatError(f"{where}: expected an object", path=path)
    raw_path = _field(doc, "dataPath", str, path, where)
    data_path = _safe_data_path(raw_path, model_dir, path, where)
    fmt = _field(doc, "format", str, path, where)
    if fmt != "raw-shard":
        raise ModelFormatError(f"{where}: format {fmt!r} is not supported (TVM reads only "
                               "'raw-shard')", path=path)
    nbytes = _non_negative(_field(doc, "nbytes", int, path, where), "nbytes", path, where)
    md5 = doc.get("md5sum")
    if md5 is not None and not isinstance(md5, str):
        raise ModelFormatError(f"{where}.md5sum: must be a string", path=path)
    records = tuple(_parse_record(r, f"{where}.records[{j}]", path)
                    for j, r in enumerate(_field(doc, "records", list, path, where)))
    _check_ranges(records, nbytes, where, path)
    return ShardFile(data_path=data_path, nbytes=nbytes, md5sum=md5, records=records)


def _parse_record(doc: Any, where: str, path: Path) -> TensorRecord:
    if not isinstance(doc, dict):
        raise ModelFormatError(f"{where}: expected an object", path=path)
    name = _field(doc, "name", str, path, where)
    if not name:
        raise ModelFormatError(f"{where}.name: empty tensor name", path=path)
    where = f"{where} ({name!r})"
    shape = _field(doc, "shape", list, path, where)
    for dim in shape:
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise ModelFormatError(f"{where}.shape: dimension {dim!r} is not an integer",
                                   path=path)
        if dim < 0:
            raise ModelFormatError(f"{where}.shape: negative dimension {dim} in {shape}",
                                   path=path)
    dtype = _field(doc, "dtype", str, path, where)
    if dtype not in DTYPE_ITEMSIZE:
        raise ModelFormatError(f"{where}.dtype: unknown dtype {dtype!r}; known: "
                               f"{', '.join(DTYPE_ITEMSIZE)}", path=path)
    fmt = _field(doc, "format", str, path, where)
    if fmt not in ENCODINGS:
        raise ModelFormatError(f"{where}.format: unknown tensor format {fmt!r}; known: "
                               f"{', '.join(ENCODINGS)}", path=path)
    nbytes = _non_negative(_field(doc, "nbytes", int, path, where), "nbytes", path, where)
    offset = _non_negative(_field(doc, "byteOffset", int, path, where), "byteOffset", path,
                           where)
    expected = numel(shape) * encoded_itemsize(dtype, fmt)
    if nbytes != expected:
        raise ModelFormatError(f"{where}.nbytes: {nbytes} does not match shape {shape} of "
                               f"{dtype} in format {fmt} ({expected} bytes)", path=path)
    return TensorRecord(name=name, shape=tuple(shape), dtype=dtype, format=fmt,  # type: ignore[arg-type]
                        nbytes=nbytes, byte_offset=offset)


def _check_ranges(records: tuple[TensorRecord, ...], shard_nbytes: int, where: str,
                  path: Path) -> None:
    """Every tensor lies inside its shard and no two share a byte."""
    for r in records:
        if r.byte_offset + r.nbytes > shard_nbytes:
            raise ModelFormatError(
                f"{where}: tensor {r.name!r} at byteOffset {r.byte_offset} with {r.nbytes} "
                f"bytes ends past the shard's nbytes {shard_nbytes}", path=path)
    # Empty tensors occupy no byte, so they cannot overlap anything.
    ordered = sorted((r for r in records if r.nbytes), key=lambda r: r.byte_offset)
    for prev, cur in itertools.pairwise(ordered):
        if cur.byte_offset < prev.byte_offset + prev.nbytes:
            raise ModelFormatError(
                f"{where}: tensors {prev.name!r} [{prev.byte_offset}, "
                f"{prev.byte_offset + prev.nbytes}) and {cur.name!r} [{cur.byte_offset}, "
                f"{cur.byte_offset + cur.nbytes}) overlap", path=path)


def _safe_data_path(raw: str, model_dir: Path, path: Path, where: str) -> str:
    """Strip a ``?query`` and refuse anything that would read outside ``model_dir``."""
    # One real repo (llamaxist/Llama-3-8B-Instruct-q4f16) appends "?partitions=4"; TVM would
    # try to open that literal name, so the suffix is dropped.
    data_path = raw.split("?", 1)[0]
    if not data_path or "\0" in data_path:
        raise ModelFormatError(f"{where}.dataPath: invalid file name {raw!r}", path=path)
    if PurePosixPath(data_path).is_absolute() or PureWindowsPath(data_path).drive:
        raise ModelFormatError(f"{where}.dataPath {raw!r} is absolute; it must be relative to "
                               "the model directory", path=path)
    if ".." in PurePosixPath(data_path).parts:
        raise ModelFormatError(f"{where}.dataPath {raw!r} leaves the model directory",
                               path=path)
    _check_inside(raw, model_dir, model_dir / data_path, index_path=path, where=where)
    return data_path


def _check_inside(raw: str, model_dir: Path, file: Path, *, index_path: Path | None = None,
                  where: str = "") -> None:
    """Refuse a path that resolves (through symlinks) outside the model directory."""
    prefix = f"{where}.dataPath " if where else "dataPath "
    try:
        resolved = file.resolve()
        inside = resolved.is_relative_to(model_dir.resolve())
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        raise ModelFormatError(f"{prefix}{raw!r} cannot be resolved: {exc}",
                               path=index_path or file) from None
    if not inside:
        raise ModelFormatError(f"{prefix}{raw!r} resolves outside the model directory "
                               f"(to {resolved})", path=index_path or file)


def _field(doc: dict[str, Any], key: str, kind: type, path: Path, where: str) -> Any:
    loc = f"{where}.{key}" if where else key
    if key not in doc:
        raise ModelFormatError(f"{loc}: missing required field", path=path)
    value = doc[key]
    # JSON true/false must not pass as the integers 1/0.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ModelFormatError(f"{loc}: expected {_KIND_NAMES[kind]}, got {value!r}",
                               path=path)
    return value


def _non_negative(value: int, key: str, path: Path, where: str) -> int:
    if value < 0:
        raise ModelFormatError(f"{where}.{key}: negative value {value}", path=path)
    return value


_KIND_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}
