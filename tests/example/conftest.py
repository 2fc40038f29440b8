"""Fixtures of the tiny_llama example tests: model directories and compiled modules, built once.

The model ships in the package (``numaplan.tiny_llama``); its reference and compile helpers live
in ``examples/tiny_llama`` (a namespace package under the repository root), so the root goes on
``sys.path``. Everything expensive is session-scoped: the directories are
written once and each module is compiled once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """The default model written as q0f32 and q0f16 directories (seed 0)."""
    pytest.importorskip("tvm")
    from numaplan.tiny_llama.build import build_model_dir

    base = tmp_path_factory.mktemp("tiny_llama")
    return {dtype: build_model_dir(base / f"default-{dtype}", size="default", dtype=dtype,
                                   seed=0)
            for dtype in ("float32", "float16")}


def read_chat_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "mlc-chat-config.json").read_text())


class Compiled:
    """A compiled TP=1 model on a VM, with its params and compile time."""

    def __init__(self, model_dir: Path, tensor_parallel_shards: int = 1):
        import tvm
        from tvm import relax

        from examples.tiny_llama.compile import compile_model_timed
        from examples.tiny_llama.reference import load_shard_params
        from numaplan.tiny_llama.model import build_ir_module

        self.model_dir = model_dir
        self.config = read_chat_config(model_dir)
        self.mod, self.order = build_ir_module(self.config, tensor_parallel_shards)
        self.executable, self.compile_s = compile_model_timed(self.mod)
        self.vm = relax.VirtualMachine(self.executable, tvm.cpu())
        self.params = (load_shard_params(model_dir, 1, 0, names=[n for n, _, _ in self.order])
                       if tensor_parallel_shards == 1 else None)


@pytest.fixture(scope="session")
def compiled(model_dirs) -> dict[str, Compiled]:
    """TP=1 modules compiled for both dtypes (once per session)."""
    return {dtype: Compiled(path) for dtype, path in model_dirs.items()}


@pytest.fixture(scope="session")
def compiled_tp2(model_dirs) -> Compiled:
    """The q0f32 TP=2 module compiled (it only runs `_metadata` outside Disco)."""
    return Compiled(model_dirs["float32"], tensor_parallel_shards=2)
