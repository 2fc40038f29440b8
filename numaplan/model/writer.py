"""Write an MLC model directory: ``params_shard_K.bin`` files, ``tensor-cache.json`` and configs.

The layout is ``tvm.contrib.tvmjs.dump_tensor_cache``'s as ``mlc_llm convert_weight`` calls it
(:func:`numaplan.model.synthetic.pack_shards` documents the packing rule): a 32 MiB cap, every
record marked ``f32-to-bf16`` and float32 tensors stored as bfloat16 (round to nearest even),
an md5 per file, and a ``metadata`` block (``ParamSize``, ``ParamBytes``, ``BitsPerParam``).

Tensors are streamed: the writer holds at most one pending shard and the tensor being added, so
converting a model needs memory for its largest tensor plus one shard, not the whole model. The
directory appears complete or not at all: everything is written into a temporary sibling that is
renamed into place by :meth:`MLCDirWriter.finish`, and removed if anything fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from numaplan.errors import ModelFormatError
from numaplan.model.synthetic import SHARD_CAP_BYTES
from numaplan.model.tensor_cache import TENSOR_CACHE_NAME

ENCODING = "f32-to-bf16"


def f32_to_bf16_bits(a: np.ndarray, *, block: int = 1 << 20) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even as tvmjs does.

    Converted ``block`` elements at a time: the uint32 temporaries of a whole embedding would
    be several times its size."""
    u = np.ascontiguousarray(a, dtype=np.float32).reshape(-1).view(np.uint32)
    out = np.empty(u.shape, np.uint16)
    for start in range(0, u.size, block):
        c = u[start:start + block]
        rounded = c + (((c >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF))
        out[start:start + block] = rounded >> np.uint32(16)
    return out.reshape(np.shape(a))


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns -> float32 (exact)."""
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def encode(array: np.ndarray) -> np.ndarray:
    """The tensor as it is stored in a shard file (a contiguous array; float32 as bf16 bits)."""
    if array.dtype == np.float32:
        return f32_to_bf16_bits(array)
    return np.ascontiguousarray(array)


_DTYPE_NAMES = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16",
                np.dtype(np.uint32): "uint32", np.dtype(np.int32): "int32",
                np.dtype(np.uint16): "bfloat16"}


class MLCDirWriter:
    """Stream tensors into a new MLC model directory.

    Parameters
    ----------
    out_dir
        The directory to create; it must not exist (or be empty).
    shard_cap_bytes
        The shard size cap (MLC: 32 MiB).

    Notes
    -----
    ``uint16`` arrays are taken as bfloat16 bit patterns (numpy has no bfloat16).
    Use as a context manager: leaving the block with an exception removes everything written.
    """

    def __init__(self, out_dir: str | Path, *, shard_cap_bytes: int = SHARD_CAP_BYTES) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and any(self.out_dir.iterdir()):
            raise ModelFormatError("output directory exists and is not empty", path=out_dir)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", dir=self.out_dir.parent))
        self.cap = shard_cap_bytes
        self.shards: list[dict[str, Any]] = []
        self.pending: list[tuple[dict[str, Any], np.ndarray]] = []
        self.pending_nbytes = 0
        self.param_bytes = 0
        self.param_count = 0
        self.names: set[str] = set()

    def __enter__(self) -> MLCDirWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()

    def add(self, name: str, array: np.ndarray) -> None:
        """Append one tensor (written out as soon as its shard is full)."""
        if name in self.names:
            raise ValueError(f"tensor {name!r} added twice")
        self.names.add(name)
        dtype = _DTYPE_NAMES.get(array.dtype)
        if dtype is None:
            raise ValueError(f"{name}: dtype {array.dtype} has no MLC name")
        data = encode(array)
        record = {"name": name, "shape": [int(s) for s in array.shape], "dtype": dtype,
                  "format": ENCODING, "nbytes": data.nbytes, "byteOffset": 0}
        self.param_count += 1
        self.param_bytes += array.size * array.dtype.itemsize
        if self.pending_nbytes + data.nbytes >= self.cap:
            if 2 * data.nbytes >= self.cap:
                self._commit([(record, data)])  # out of band, ahead of the pending shard
                return
            self._flush()
        record["byteOffset"] = self.pending_nbytes
        self.pending.append((record, data))
        self.pending_nbytes += data.nbytes

    def _flush(self) -> None:
        if self.pending:
            self._commit(self.pending)
        self.pending, self.pending_nbytes = [], 0

    def _commit(self, items: list[tuple[dict[str, Any], np.ndarray]]) -> None:
        name = f"params_shard_{len(self.shards)}.bin"
        md5 = hashlib.md5()
        nbytes = 0
        with open(self.tmp / name, "wb") as f:
            for _, data in items:
                view = memoryview(data.reshape(-1).view(np.uint8))
                f.write(view)
                md5.update(view)
                nbytes += data.nbytes
        self.shards.append({"dataPath": name, "format": "raw-shard", "nbytes": nbytes,
                            "records": [r for r, _ in items], "md5sum": md5.hexdigest()})

    def write_json(self, name: str, doc: Any) -> None:
        """Write a JSON file (a config) into the directory."""
        (self.tmp / name).write_text(json.dumps(doc, indent=2) + "\n")

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write any other file (a tokenizer) into the directory."""
        (self.tmp / name).write_bytes(data)

    def finish(self, *, total_params: int | None = None) -> Path:
        """Write the index and move the directory into place.

        Parameters
        ----------
        total_params
            Unquantized parameter count, for ``BitsPerParam`` (default: the element count of
            the tensors written).
        """
        self._flush()
        bits = self.param_bytes * 8 / total_params if total_params else 0.0
        index = {"metadata": {"ParamSize": self.param_count,
                              "ParamBytes": float(self.param_bytes),
                              "BitsPerParam": bits},
                 "records": self.shards}
        (self.tmp / TENSOR_CACHE_NAME).write_text(json.dumps(index, indent=4))
        os.chmod(self.tmp, 0o755)
        if self.out_dir.exists():
            self.out_dir.rmdir()
        os.replace(self.tmp, self.out_dir)
        return self.out_dir

    def abort(self) -> None:
        """Remove everything written so far."""
        shutil.rmtree(self.tmp, ignore_errors=True)
