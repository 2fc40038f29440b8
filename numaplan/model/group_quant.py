"""MLC's 4-bit group quantization (``q4f16_1``, ``q4f32_1``) in numpy.

``mlc_llm/quantization/group_quantization.py``, NK layout, groups of 32 along the input
dimension, computed in the model dtype as MLC computes it::

    scale[o, g] = max_r |w[o, 32 g + r]| / 7
    q[o, k]     = clip(round(w[o, k] / scale[o, k // 32] + 7), 0, 14)     (half to even)
    w'[o, k]    = (q[o, k] - 7) * scale[o, k // 32]

Eight 4-bit values share a uint32, the first in the lowest bits. A group of zeros has no scale
(MLC divides 0 by 0); it is stored with scale 0 and code 7, which dequantizes to zeros.

Used by the GGUF converter, by tests that write quantized model directories, and as the
reference dequantizer that checks the compiled kernels (it shares no code with them).
"""

from __future__ import annotations

import numpy as np

GROUP = 32
PER_WORD = 8
ZERO = 7


def quantize_q4(w: np.ndarray, dtype: str = "float16") -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``w [out, in]`` (``in`` a multiple of 32).

    Parameters
    ----------
    w
        The weight, any float dtype; it is first cast to ``dtype`` (MLC's loader casts to the
        model dtype before quantizing).
    dtype
        The model dtype: ``float16`` (``q4f16_1``) or ``float32`` (``q4f32_1``).

    Returns
    -------
    (q_weight, q_scale)
        ``uint32 [out, in / 8]`` and ``dtype [out, in / 32]``.
    """
    if w.ndim != 2 or w.shape[1] % GROUP:
        raise ValueError(f"expected [out, in] with in a multiple of {GROUP}, got {w.shape}")
    out, k = w.shape
    wd = w.astype(dtype).reshape(out, k // GROUP, GROUP)
    scale = (np.abs(wd).max(axis=2) / np.asarray(ZERO, dtype)).astype(dtype)
    safe = np.where(scale == 0, np.asarray(1, dtype), scale)
    with np.errstate(over="ignore", invalid="ignore"):
        codes = np.round(wd / safe[:, :, None] + np.asarray(ZERO, dtype))
    codes = np.clip(np.nan_to_num(codes, nan=ZERO), 0, 2 * ZERO).astype(np.uint32)
    codes = codes.reshape(out, k // PER_WORD, PER_WORD)
    shifts = (np.arange(PER_WORD, dtype=np.uint32) * 4)[None, None, :]
    q_weight = np.bitwise_or.reduce(codes << shifts, axis=2).astype(np.uint32)
    return q_weight, scale


def unpack_q4(q_weight: np.ndarray) -> np.ndarray:
    """The 4-bit codes of ``q_weight [out, in / 8]`` as ``uint8 [out, in]``."""
    shifts = (np.arange(PER_WORD, dtype=np.uint32) * 4)[None, None, :]
    codes = (q_weight[:, :, None] >> shifts) & np.uint32(15)
    return codes.reshape(q_weight.shape[0], -1).astype(np.uint8)


def dequantize_q4(q_weight: np.ndarray, q_scale: np.ndarray) -> np.ndarray:
    """``(q - 7) * scale`` as float32 ``[out, in]``."""
    codes = unpack_q4(q_weight).astype(np.float32) - ZERO
    scale = np.repeat(q_scale.astype(np.float32), GROUP, axis=1)
    return codes * scale
