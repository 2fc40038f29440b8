"""Build a model library with numaplan's pipeline: the plan embedded, collectives lowered."""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
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


#: The parts of numaplan that shape a library: the planning chain (the plan is compiled into
#: it), the model definitions and the example model's builder, the passes, and the collective's
#: ABI that the lowered calls follow. The runtime, the CLI and the text layer only use a library.
SHAPING = ("topology", "cost", "model", "plan", "nn", "passes", "tiny_llama", "ccl_abi.py")
PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache
def _package_digest(root: Path) -> str:
    """sha256 of the :data:`SHAPING` sources under ``root``, read once per process."""
    h = hashlib.sha256()
    for part in SHAPING:
        path = root / part
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            h.update(f.read_bytes())
    return h.hexdigest()


def library_sources_digest(model_dir: str | Path, src: RelaxSource, *,
                           target: str | dict = "llvm") -> str:
    """sha256 of the code and tools that turn a plan into a library.

    A library cache keyed on this (with the plan's own inputs) is never reused after an edit of
    numaplan's planner, model definitions, passes or collective ABI, of the model's builder or
    the config it reads, or after a TVM upgrade, and never on a CPU its target was not tuned
    for.

    Parameters
    ----------
    model_dir
        The model directory: its config (``src.config``), and its ``import_root`` may hold the
        builder.
    src
        The directory's builder.
    target
        As :func:`build_library` takes it; the resolved target (with ``mcpu``) is hashed.

    Returns
    -------
    str
        Hex digest.
    """
    from numaplan.passes.schedules import resolve_target

    h = hashlib.sha256()
    for part in (_package_digest(PACKAGE), f"tvm {tvm.__version__}", str(resolve_target(target)),
                 src.builder):
        h.update(part.encode() + b"\0")
    # The config the builder reads: rope, norm epsilon, chunk sizes are not in the workload's
    # fingerprint, yet they are compiled in.
    for path in (_builder_file(Path(model_dir), src), Path(model_dir) / src.config):
        if path is not None and path.is_file():
            h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def _builder_file(model_dir: Path, src: RelaxSource) -> Path | None:
    """The builder module's source file, found as :func:`_import_builder` imports it."""
    try:
        spec = importlib.util.find_spec(src.module_name)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin and Path(spec.origin).is_file():
        return Path(spec.origin)
    root = _import_root(model_dir, src)
    if root is None:
        return None
    stem = root.joinpath(*src.module_name.split("."))
    return next((f for f in (stem.with_suffix(".py"), stem / "__init__.py") if f.is_file()), None)


def _import_root(model_dir: Path, src: RelaxSource) -> Path | None:
    root = src.import_root
    if not root:
        return None
    return (model_dir / root).resolve() if not Path(root).is_absolute() else Path(root)


def _import_builder(model_dir: Path, src: RelaxSource):
    try:
        module = importlib.import_module(src.module_name)
    except ModuleNotFoundError:
        root_path = _import_root(model_dir, src)
        if root_path is None:
            raise
        root = src.import_root
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
