"""``pip install -e '.[test]'`` alone gives a green run: the tests that need an optional extra
(``plot``: matplotlib, ``highs``: highspy) skip with the reason instead of failing.

Checked by running them with both extras hidden: a directory first on ``PYTHONPATH`` holds
stand-ins whose import raises ModuleNotFoundError, as in an environment without the extras.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = ("matplotlib", "highspy")
#: The test files that use an extra (drawing plans and benchmark results; the HiGHS goldens).
USERS = ("tests/cli/test_diff_show.py", "tests/test_bench.py::test_png_draws_the_allreduce",
         "tests/plan/test_golden.py")


def test_tests_skip_with_the_reason_when_the_extras_are_absent(tmp_path):
    for name in HIDDEN:
        (tmp_path / f"{name}.py").write_text(f"raise ModuleNotFoundError('{name} is hidden')\n")
    path = [str(tmp_path), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        *USERS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:]
    assert "drawing needs the plot extra" in r.stdout
    assert "goldens are made with HiGHS" in r.stdout
