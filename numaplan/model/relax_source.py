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
