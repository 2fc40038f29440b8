"""The library cache's key: an edit of what shapes a library changes it, an edit of what only
uses a library does not."""

from __future__ import annotations

import shutil

import pytest

from numaplan.model.relax_source import RelaxSource
from numaplan.passes import build

SRC = RelaxSource(schema_version=1, kind="relax-nn-builder", builder="mybuilder:build",
                  import_root="src")


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A copy of numaplan's sources, read in place of the package's, and a model directory with
    its own builder under its ``import_root``."""
    pkg = tmp_path / "numaplan"
    shutil.copytree(build.PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    model = tmp_path / "model"
    (model / "src").mkdir(parents=True)
    (model / "src" / "mybuilder.py").write_text("def build(config, w): ...\n")
    monkeypatch.setattr(build, "PACKAGE", pkg)
    return pkg, model


def _key(model, **kw):
    build._package_digest.cache_clear()  # the sources are read once per process
    return build.library_sources_digest(model, SRC, **kw)


@pytest.mark.parametrize("edited, shapes", [
    ("passes/lower_collectives.py", True), ("nn/layers.py", True), ("plan/planner.py", True),
    ("model/sharding.py", True), ("cost/slit.py", True), ("ccl_abi.py", True),
    ("cli/help.py", False), ("runtime/session.py", False), ("engine.py", False),
])
def test_an_edit_changes_the_key_where_it_shapes_the_library(tree, edited, shapes):
    pkg, model = tree
    before = _key(model)
    with (pkg / edited).open("a") as f:
        f.write("# edited\n")
    assert (_key(model) != before) == shapes


def test_the_config_the_builder_reads_is_in_the_key(tree):
    # rope_theta is compiled in but not one of the workload fingerprint's facts.
    _, model = tree
    config = model / SRC.config
    config.write_text('{"model_config": {"rope_theta": 10000.0}}\n')
    before = _key(model)
    config.write_text('{"model_config": {"rope_theta": 500000.0}}\n')
    assert _key(model) != before


def test_the_builder_tvm_and_the_target_are_in_the_key(tree, monkeypatch):
    _, model = tree
    before = _key(model)
    (model / "src" / "mybuilder.py").write_text("def build(config, w): return None\n")
    edited = _key(model)
    assert edited != before
    monkeypatch.setattr(build.tvm, "__version__", "0.28.0")
    upgraded = _key(model)
    assert upgraded != edited
    assert _key(model, target={"kind": "llvm", "mcpu": "bdver1"}) != upgraded
    assert _key(model) == upgraded
