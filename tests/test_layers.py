"""Import rules of DESIGN.md's layer table, checked by parsing every module with ast.

- ``import numaplan`` stays light: tvm and pulp are never imported at module level outside the
  layers that own them;
- a layer never imports the layers to its right (topology -> cost -> model -> plan -> passes /
  runtime -> cli).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "numaplan"

# layer -> modules (top-level names) it must never import, at any depth.
FORBIDDEN = {
    "topology": {"tvm", "tvm_ffi", "pulp", "highspy", "numaplan.cost", "numaplan.model",
                 "numaplan.plan", "numaplan.passes", "numaplan.runtime", "numaplan.cli"},
    "osnuma": {"tvm", "tvm_ffi", "pulp", "numaplan.model", "numaplan.plan", "numaplan.passes",
               "numaplan.runtime", "numaplan.cli"},
    "cost": {"tvm", "tvm_ffi", "pulp", "numaplan.plan", "numaplan.passes", "numaplan.runtime",
             "numaplan.cli"},
    "model": {"tvm", "tvm_ffi", "pulp", "numaplan.plan", "numaplan.passes", "numaplan.runtime",
              "numaplan.cli"},
    "plan": {"tvm", "tvm_ffi", "numaplan.passes", "numaplan.runtime", "numaplan.cli"},
    "passes": {"pulp", "highspy", "numaplan.runtime", "numaplan.cli"},
    "runtime": {"pulp", "highspy", "numaplan.plan.solver_ilp", "numaplan.plan.solver_greedy",
                "numaplan.plan.solver_partition", "numaplan.cli"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _hits(name: str, forbidden: set[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


def test_layers_import_only_leftwards():
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        for path in (PKG / layer).rglob("*.py"):
            for name in _imports(path):
                if _hits(name, forbidden):
                    bad.append(f"{path.relative_to(PKG.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def test_import_numaplan_is_light():
    code = ("import sys, numaplan, numaplan.topology, numaplan.cost, numaplan.cli.main;"
            "heavy = [m for m in ('tvm', 'pulp', 'tvm_ffi', 'highspy') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
