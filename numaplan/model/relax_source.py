"""The optional ``numaplan-model.json`` of a model directory: where its Relax module comes from.

A real MLC weights directory holds weights and configs, not the model's Relax module (that is
MLC's Python code). A directory that wants ``numaplan compile`` to build its library names a
builder here; the contract (documented in ``examples/tiny_llama/README.md``)::

    {"schema_version": 1, "kind": "relax-nn-builder",
     "builder": "package.module:function",      # function(config: dict, W: int)
                                                #   -> (IRModule, [(name, shape, dtype)])
     "import_root": "/path/or/relative/to/dir", # optional: added to sys.path if needed
     "config": "mlc-chat-config.json",
     "tensor_parallel_shards": [1, 2, 4]}
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict, ValidationError

from numaplan._base import Frozen
from numaplan._io import read_json
from numaplan.errors import ModelFormatError

SOURCE_FILE = "numaplan-model.json"


class RelaxSource(Frozen):
    """Where to get a model's Relax module (extra keys are documentation and are kept)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int
    kind: str
    builder: str
    config: str = "mlc-chat-config.json"
    import_root: str | None = None
    tensor_parallel_shards: tuple[int, ...] = ()

    @property
    def module_name(self) -> str:
        """The builder's module."""
        return self.builder.partition(":")[0]

    @property
    def function_name(self) -> str:
        """The builder function's name."""
        return self.builder.partition(":")[2]


def read_relax_source(model_dir: str | Path) -> RelaxSource | None:
    """The directory's ``numaplan-model.json``, or ``None`` when it has none.

    Raises
    ------
    ModelFormatError
        When the file is malformed, of an unknown version or kind.
    """
    path = Path(model_dir) / SOURCE_FILE
    if not path.exists():
        return None
    doc = read_json(path, error=ModelFormatError)
    if not isinstance(doc, dict):
        raise ModelFormatError("expected a JSON object", path=path)
    if doc.get("schema_version") != 1:
        raise ModelFormatError(f"unknown schema_version {doc.get('schema_version')!r}",
                               path=path)
    try:
        src = RelaxSource.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ModelFormatError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}",
                               path=path) from None
    if src.kind != "relax-nn-builder":
        raise ModelFormatError(f"unknown kind {src.kind!r} (expected 'relax-nn-builder')",
                               path=path)
    if not src.module_name or not src.function_name:
        raise ModelFormatError(f"builder {src.builder!r} is not 'module:function'", path=path)
    return src


#: The builder of numaplan's own model definitions (``numaplan.nn``), used for any MLC model
#: directory whose ``model_type`` has one and that names no builder of its own.
BUILTIN_BUILDER = "numaplan.nn.export:build_ir_module"


def relax_source_for(model_dir: str | Path) -> tuple[RelaxSource | None, str]:
    """Where a directory's Relax module comes from, and why when it has none.

    ``numaplan-model.json`` wins (a user's own builder); otherwise an MLC directory whose
    ``model_type`` numaplan defines (:data:`numaplan.model.architecture.MODEL_TYPES`) is built
    by :data:`BUILTIN_BUILDER`.

    Returns
    -------
    (RelaxSource or None, str)
        The source, and a one-line reason when there is none.

    Raises
    ------
    ModelFormatError
        A malformed ``numaplan-model.json`` or ``mlc-chat-config.json``.
    """
    from numaplan.model.architecture import MODEL_TYPES
    from numaplan.model.config import MLC_CONFIG_NAME

    src = read_relax_source(model_dir)
    if src is not None:
        return src, ""
    config = Path(model_dir) / MLC_CONFIG_NAME
    if not config.exists():
        return None, f"{model_dir} has no {MLC_CONFIG_NAME} (a Hugging Face config plans only)"
    doc = read_json(config, error=ModelFormatError)
    model_type = doc.get("model_type") if isinstance(doc, dict) else None
    quant = doc.get("quantization") if isinstance(doc, dict) else None
    if model_type not in MODEL_TYPES:
        return None, (f"numaplan has no model definition for model_type {model_type!r} "
                      f"(supported: {', '.join(MODEL_TYPES)}); a directory can name its own "
                      f"builder in {SOURCE_FILE}")
    if quant not in RUNNABLE_QUANTIZATIONS:
        return None, (f"numaplan's {model_type} definition runs quantizations "
                      f"{', '.join(RUNNABLE_QUANTIZATIONS)}, not {quant!r}")
    return RelaxSource(schema_version=1, kind="relax-nn-builder", builder=BUILTIN_BUILDER,
                       config=MLC_CONFIG_NAME), ""


#: The quantizations numaplan's model definitions run (``numaplan.nn.layers``).
RUNNABLE_QUANTIZATIONS = ("q0f32", "q0f16", "q0bf16", "q4f16_1", "q4f32_1")
