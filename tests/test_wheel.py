"""numaplan as a user gets it: a wheel installed into a fresh virtualenv outside the checkout.

The wheel must carry what the package reads at run time besides Python (the collective's and
the measurement kernels' C sources, built at first use; the plan schema; the sample topologies),
and its build must print no deprecation warnings. From a directory outside the checkout, with a
fresh build cache, the installed package runs a 2-rank all-reduce (compiling the collective's
kernel from the installed source) and a TP=2 generation.

Marked ``wheel`` (about a minute, most of it installing the dependencies from pip's cache or
index): ``make test`` and CI run it, ``pytest -m 'not wheel'`` leaves it out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from numaplan.plan.jsonschema import SCHEMA_PATH

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.wheel, pytest.mark.slow]

#: Files the package opens at run time that are not Python modules.
DATA = ("numaplan/runtime/ccl/kernel.c", "numaplan/osnuma/kernels.c",
        f"numaplan/schema/{SCHEMA_PATH.name}",
        "numaplan/topology/machines/epyc7742_2s_nps4_archer2.txt")


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, argv))}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """The wheel, built from a copy of the sources (a ``build/`` left in the checkout by an
    earlier build could carry files that no longer exist), and the build's output."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "out"))
    r = _run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp / "dist"),
              str(src)])
    (whl,) = (tmp / "dist").glob("numaplan-*.whl")
    return whl, r.stdout + r.stderr


def test_the_wheel_carries_the_package_data_and_builds_quietly(wheel):
    whl, log = wheel
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert set(DATA) <= names
    assert not any(n.startswith(("tests/", "examples/", "scripts/")) for n in names)
    assert "License-Expression: Apache-2.0" in meta
    assert "Deprecat" not in log and "BuildBackendWarning" not in log


def test_installed_wheel_runs_allreduce_and_tp2_generation(wheel, tmp_path):
    whl, _ = wheel
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py, numaplan = venv / "bin" / "python", venv / "bin" / "numaplan"
    work = tmp_path / "work"
    work.mkdir()
    # Nothing from the checkout or the test run: no PYTHONPATH (pip would take a checkout on
    # it for numaplan installed), and numaplan gets a fresh kernel cache (pip keeps its own).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([str(py), "-m", "pip", "install", "--quiet", "--no-compile", str(whl)], cwd=work, env=env)
    run = dict(cwd=work, env={**env, "XDG_CACHE_HOME": str(tmp_path / "cache")})

    where = _run([str(py), "-c", "import numaplan; print(numaplan.__file__)"], **run).stdout
    assert Path(where.strip()).is_relative_to(venv)

    _run([str(py), "-m", "numaplan.bench", "--only", "allreduce", "--tensor-parallel-shards",
          "2", "--iters", "5", "--sizes", "256", "--output-file", "r.json"], **run)
    rows = json.loads((work / "r.json").read_text())["results"]["allreduce"]["rows"]
    assert rows and all(r["median_us"] > 0 for r in rows)
    assert list((tmp_path / "cache" / "numaplan").glob("*.so"))  # the kernel built from the wheel

    _run([str(py), "-c", "from numaplan.tiny_llama.build import build_model_dir; "
          "build_model_dir('tiny', size='tiny', dtype='float32')"], **run)
    _run([str(numaplan), "compile", "tiny", "--tp", "2", "--oversubscribe", "-o", "lib"], **run)
    out = _run([str(numaplan), "run", "tiny", "--lib", "lib/tiny-numa-llvm.so", "--prompt-ids",
                "1,2,3", "--max-new-tokens", "4", "--ignore-eos", "--json"], **run).stdout
    doc = json.loads(out)
    assert len(doc["output_ids"]) == 4
