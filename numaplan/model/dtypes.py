"""Element types of MLC tensors and the two on-disk encodings of the tensor cache.

The tensor cache (``tensor-cache.json``) names dtypes with TVM's strings and stores each tensor
either ``raw`` or ``f32-to-bf16``. The second one only changes float32 tensors: they are written
as bfloat16 (2 bytes an element) and widened back to float32 (4 bytes) when loaded, so a tensor
has two sizes, the encoded one on disk and the decoded one in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from types import MappingProxyType
from typing import Literal

#: Bytes per element of every dtype numaplan accepts (TVM dtype strings).
DTYPE_ITEMSIZE = MappingProxyType({
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "bfloat16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
})

#: The per-tensor encodings ``tvmjs.dump_tensor_cache`` writes.
Encoding = Literal["raw", "f32-to-bf16"]
ENCODINGS: tuple[str, ...] = ("raw", "f32-to-bf16")


def dtype_itemsize(dtype: str) -> int:
    """Bytes per element of ``dtype`` in memory.

    Parameters
    ----------
    dtype
        A TVM dtype string such as ``"float16"`` or ``"uint32"``.

    Raises
    ------
    KeyError
        When the dtype is not one numaplan knows (see :data:`DTYPE_ITEMSIZE`).
    """
    return DTYPE_ITEMSIZE[dtype]


def encoded_itemsize(dtype: str, encoding: str) -> int:
    """Bytes per element of ``dtype`` as stored on disk under ``encoding``.

    Only float32 is converted by ``f32-to-bf16``; every other dtype is stored raw whatever the
    record's format says (MLC marks every record ``f32-to-bf16``, uint32 ones included).

    Examples
    --------
    >>> encoded_itemsize("float32", "f32-to-bf16"), encoded_itemsize("uint32", "f32-to-bf16")
    (2, 4)
    """
    if encoding == "f32-to-bf16" and dtype == "float32":
        return 2
    return dtype_itemsize(dtype)


def numel(shape: Iterable[int]) -> int:
    """Number of elements of a tensor of ``shape`` (1 for a scalar)."""
    return math.prod(shape)
