"""Fixtures of the runtime tests: example model directories and their compiled libraries."""

from __future__ import annotations

import pytest

from numaplan.cli.main import main
from numaplan.topology import read_sysfs


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """The default example model, q0f32 and q0f16 (MLC format, written by TVM's writer)."""
    from numaplan.tiny_llama.build import build_model_dir

    root = tmp_path_factory.mktemp("models")
    return {dtype: build_model_dir(root / f"tiny-{dtype}", size="default", dtype=dtype)
            for dtype in ("float32", "float16")}


@pytest.fixture(scope="session")
def libraries(model_dirs, tmp_path_factory):
    """``libraries(dtype, W)`` -> (out_dir, library path), compiled once per session for this
    machine (W workers on the one node this machine has)."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("libs")

    def get(dtype: str, w: int):
        if (dtype, w) not in cache:
            out = root / f"{dtype}-tp{w}"
            d = model_dirs[dtype]
            extra = ["--oversubscribe"] if w > len(read_sysfs("/").allowed_cpus) else []
            assert main(["compile", str(d), "--tp", str(w), "-o", str(out), *extra]) == 0
            cache[dtype, w] = (out, out / f"{d.name}-numa-llvm.so")
        return cache[dtype, w]

    return get


@pytest.fixture(scope="session")
def this_machine():
    return read_sysfs("/")
