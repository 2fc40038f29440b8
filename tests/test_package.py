"""The package's metadata: the version is written once (numaplan/_version.py)."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import numaplan
from numaplan._version import __version__

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_reads_the_version_from_the_package():
    doc = tomllib.loads(PYPROJECT.read_text())
    assert "version" not in doc["project"] and "version" in doc["project"]["dynamic"]
    attr = doc["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "numaplan._version.__version__"


def test_installed_metadata_and_package_agree():
    assert numaplan.__version__ == __version__ == importlib.metadata.version("numaplan")


def test_license_is_an_spdx_expression():
    # A TOML table is deprecated since setuptools 77 and every build printed a page about it
    # (the wheel test checks the build output is free of such warnings).
    doc = tomllib.loads(PYPROJECT.read_text())
    assert doc["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in doc["build-system"]["requires"]
