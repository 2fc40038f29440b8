"""bf16 -> float32 widening (the loader's C kernel and its numpy fallback) is exact."""

from __future__ import annotations

import numpy as np
import pytest

from numaplan.runtime import widen


@pytest.mark.parametrize("use_c", [True, False])
def test_widen_matches_a_shift_for_every_layout(monkeypatch, use_c):
    if not use_c:
        monkeypatch.setattr(widen, "_fn", [None])
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 16, size=(37, 203), dtype=np.uint16)
    cases = [
        (bits, np.empty((37, 203), np.uint32)),  # contiguous
        (bits[:, 50:150], np.empty((37, 100), np.uint32)),  # a row-parallel piece
        (bits[:, 3:103], np.empty((37, 120), np.uint32)[:, 7:107]),  # both strided, unaligned
        (bits.reshape(-1)[1:4001], np.empty(4010, np.uint32)[9:4009]),  # 1-D, unaligned
        (bits[::2, ::3], np.empty((19, 68), np.uint32)),  # no contiguous rows: numpy
    ]
    for src, dst in cases:
        widen.widen_bf16(src, dst)
        np.testing.assert_array_equal(dst, src.astype(np.uint32) << 16)
        np.testing.assert_array_equal(dst.view(np.float32)[..., :4],
                                      (src.astype(np.uint32) << 16).view(np.float32)[..., :4])
