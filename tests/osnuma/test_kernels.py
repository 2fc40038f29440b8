"""The measurement kernels: C build and cache, numpy fallback, identical results."""

from __future__ import annotations

import numpy as np
import pytest

from numaplan.errors import CBuildError
from numaplan.osnuma import kernels as kn
from numaplan.osnuma.buffer import NodeBuffer

MIB = 1 << 20


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "numaplan"


def test_compile_is_cached_and_keyed(cache):
    path = kn.compile_kernels()
    assert path.parent == cache and path.name.startswith("kernels-")
    mtime = path.stat().st_mtime_ns
    assert kn.compile_kernels() == path and path.stat().st_mtime_ns == mtime
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp left over


def test_no_compiler_falls_back_to_numpy(monkeypatch, cache):
    monkeypatch.setattr(kn, "find_compiler", lambda: None)
    k = kn.load_kernels("auto")
    assert k.kind == "numpy" and k.latency_upper_bound and "no C compiler" in k.note
    with pytest.raises(CBuildError, match="no C compiler"):
        kn.load_kernels("c")


def test_broken_compiler_falls_back(monkeypatch, cache):
    monkeypatch.setenv("CC", "false")
    k = kn.load_kernels("auto")
    assert k.kind == "numpy" and "failed" in k.note


def test_c_and_numpy_agree():
    c, py = kn.load_kernels("c"), kn.load_kernels("numpy")
    assert c.kind == "c" and not c.latency_upper_bound
    with NodeBuffer(2 * MIB) as a, NodeBuffer(2 * MIB) as b:
        c.fill(a.address, a.nbytes, 5)
        py.fill(b.address, b.nbytes, 5)
        va, vb = a.array(np.uint64), b.array(np.uint64)
        assert np.array_equal(va, vb) and len(np.unique(va)) == va.size
        assert np.all((va >> np.uint64(52)) == 0x3FF)  # floats in [1, 2): never denormal
        del va, vb
        assert c.read(a.address, a.nbytes) == py.read(a.address, a.nbytes)
        assert c.read(a.address, 64 + 24) == py.read(a.address, 64 + 24)  # tail words


@pytest.mark.parametrize("kind", ["c", "numpy"])
def test_chain_is_one_cycle_through_every_slot(kind):
    k = kn.load_kernels(kind)
    with NodeBuffer(MIB) as buf:
        slots = buf.nbytes // kn.SLOT_BYTES
        start = k.build_chain(buf.address, buf.nbytes, seed=3)
        kw = {"address": buf.address, "nbytes": buf.nbytes}
        assert k.chase(start, slots, **kw) == start
        assert k.chase(start, slots // 2, **kw) != start
        assert k.chase(start, 7, **kw) == k.chase(k.chase(start, 3, **kw), 4, **kw)
