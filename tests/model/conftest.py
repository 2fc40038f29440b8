"""Fixtures of the workload-layer tests: MLC model directories in ``tmp_path``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from numaplan.model import write_hf_config

from .mlc_fixtures import write_mlc_dir


@pytest.fixture
def make_mlc_dir(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_mlc_dir(name="m", **write_mlc_dir options)``."""
    def make(name: str = "model", **kwargs: Any) -> Path:
        return write_mlc_dir(tmp_path / name, **kwargs)
    return make


@pytest.fixture
def llama3_8b_dir(tmp_path: Path) -> Path:
    """A directory with only the Llama-3-8B Hugging Face config."""
    write_hf_config(tmp_path / "llama3-8b", "llama3-8b")
    return tmp_path / "llama3-8b"
