"""Package-level rules: no tvm/pulp imports, public API exported, docstring examples run."""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import numaplan.model

PACKAGE_DIR = Path(numaplan.model.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE_DIR.glob("*.py") if p.stem != "__init__")


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_never_imports_tvm_or_pulp(path: Path) -> None:
    assert not _imported_roots(path) & {"tvm", "tvm_ffi", "pulp", "highspy"}


def test_all_is_complete_and_importable() -> None:
    for name in numaplan.model.__all__:
        assert hasattr(numaplan.model, name), name
    assert len(set(numaplan.model.__all__)) == len(numaplan.model.__all__)


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module: str) -> None:
    mod = importlib.import_module(f"numaplan.model.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_every_module_is_listed() -> None:
    found = {m.name for m in pkgutil.iter_modules([str(PACKAGE_DIR)])}
    assert found == set(MODULES)
