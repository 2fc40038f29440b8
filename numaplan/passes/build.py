"""Build a model library with numaplan's pipeline: the plan embedded, collectives lowered."""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import tvm

from numaplan._base import Frozen
from numaplan._io import publish
from numaplan.errors import BuildError, ModelFormatError, NumaplanError
from numaplan.model.relax_source import SOURCE_FILE, RelaxSource
from numaplan.passes.pipeline import numaplan_pipeline
from numaplan.plan.schema import Plan


class BuildResult(Frozen):
    """What was built."""

    path: str
    nbytes: int
    compile_s: float
    target: str


def library_name(model_name: str, target_kind: str = "llvm") -> str:
    """``<name>-numa-<target>.so``, MLC's naming with ``numa`` in it."""
    return f"{model_name}-numa-{target_kind}.so"


def _import_builder(model_dir: Path, src: RelaxSource):
    try:
        module = importlib.import_module(src.module_name)
    except ModuleNotFoundError:
        root = src.import_root
        if not root:
            raise
        root_path = (model_dir / root).resolve() if not Path(root).is_absolute() else Path(root)
        if not root_path.is_dir():
            raise BuildError(f"import_root {root} is not a directory",
                             path=model_dir / SOURCE_FILE) from None
        sys.path.insert(0, str(root_path))
        module = importlib.import_module(src.module_name)
    try:
        return getattr(module, src.function_name)
    except AttributeError:
        raise BuildError(f"{src.module_name} has no {src.function_name}",
                         path=model_dir / SOURCE_FILE) from None


def build_ir_module(model_dir: str | Path, src: RelaxSource, tensor_parallel_shards: int
                    ) -> tuple[tvm.IRModule, list[tuple[str, tuple[int, ...], str]]]:
    """Call the directory's builder for W workers.

    Raises
    ------
    BuildError
        W not offered by the builder, the builder cannot be imported, or it fails.
    """
    model_dir = Path(model_dir)
    if src.tensor_parallel_shards and tensor_parallel_shards not in src.tensor_parallel_shards:
        raise BuildError(f"the model's builder offers tensor_parallel_shards "
                         f"{list(src.tensor_parallel_shards)}, not {tensor_parallel_shards}",
                         path=model_dir / SOURCE_FILE)
    try:
        builder = _import_builder(model_dir, src)
    except ModuleNotFoundError as exc:
        raise BuildError(f"cannot import the builder {src.builder!r}: {exc}",
                         path=model_dir / SOURCE_FILE) from None
    cfg_path = model_dir / src.config
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"cannot read: {exc}", path=cfg_path) from None
    try:
        return builder(config, tensor_parallel_shards)
    except NumaplanError:
        raise
    except Exception as exc:  # the builder is third-party code: report, do not crash
        raise BuildError(f"the builder {src.builder} failed: {type(exc).__name__}: {exc}",
                         path=model_dir / SOURCE_FILE) from None


def build_library(model_dir: str | Path, src: RelaxSource, plan: Plan, out_path: str | Path,
                  *, target: str | dict = "llvm") -> BuildResult:
    """Build and export the library for ``plan`` (its W), atomically.

    The module goes through the ``numaplan`` pipeline (AnnotateNumaPlan,
    LowerCollectivesToNuma, fusion, CPU schedules) and is exported to ``out_path``; the file
    appears complete or not at all.
    """
    from numaplan.passes.schedules import resolve_target

    W = plan.request.tensor_parallel_shards
    mod, params = build_ir_module(model_dir, src, W)
    names = {t.name for t in plan.tensors}
    missing = [n for n, _, _ in params if n not in names]
    if missing:
        raise BuildError(f"the module's parameters {missing[:3]} are not in the model's tensor "
                         f"index", path=Path(model_dir) / SOURCE_FILE)
    tgt = resolve_target(target)
    t0 = time.perf_counter()
    ex = tvm.compile(mod, target=tgt, relax_pipeline=numaplan_pipeline(tgt, plan))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".so", dir=out_path.parent)
    os.close(fd)
    try:
        ex.export_library(tmp)
        publish(tmp, out_path, mode=0o755)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return BuildResult(path=str(out_path), nbytes=out_path.stat().st_size,
                       compile_s=round(time.perf_counter() - t0, 3), target=str(tgt.kind.name))
