"""Import rules of DESIGN.md's layer table, checked by parsing every module with ast.

- ``import numaplan`` stays light: tvm and pulp are never imported at module level outside the
  layers that own them, and the top-level package loads its names on first use;
- a layer never imports the layers to its right (topology -> cost -> model -> plan -> passes /
  runtime -> cli), and the top-level modules keep to their place: the foundations
  (``_version``, ``_base``, ``_io``, ``_cbuild``, ``errors``) import no layer, the engine and
  the bench never the CLI;
- imports run one way: no module imports names from ``numaplan/__init__`` (only its
  submodules), no two modules import each other (directly or around a circle, counting imports
  inside functions), and nothing imports ``examples`` or ``tests`` (a wheel has neither).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "numaplan"

_LAYERS_RIGHT_OF_TOPOLOGY = {"numaplan.cost", "numaplan.model", "numaplan.plan",
                             "numaplan.passes", "numaplan.runtime", "numaplan.cli",
                             "numaplan.tiny_llama", "numaplan.engine", "numaplan.bench",
                             "numaplan.nn", "numaplan.convert", "numaplan.llama",
                             "numaplan.serve"}
#: The text layer (tokenizer, conversation templates, sampling): used by the CLI, the engine
#: and the server; it knows nothing of placement, compilation or the runtime.
_TEXT = ("sampling.py", "conversation.py", "tokenizer.py")

# layer (package or top-level module) -> modules it must never import, at any depth.
FORBIDDEN = {
    "topology": {"tvm", "tvm_ffi", "pulp", "highspy", *_LAYERS_RIGHT_OF_TOPOLOGY},
    "osnuma": {"tvm", "tvm_ffi", "pulp", "numaplan.model", "numaplan.plan", "numaplan.passes",
               "numaplan.runtime", "numaplan.cli", "numaplan.engine", "numaplan.bench"},
    "cost": {"tvm", "tvm_ffi", "pulp", "numaplan.plan", "numaplan.passes", "numaplan.runtime",
             "numaplan.cli", "numaplan.engine", "numaplan.bench"},
    "model": {"tvm", "tvm_ffi", "pulp", "numaplan.plan", "numaplan.passes", "numaplan.runtime",
              "numaplan.cli", "numaplan.engine", "numaplan.bench", "numaplan.nn",
              "numaplan.convert"},
    # Model definitions (tvm, compiler side): read the workload layer, never plan or run.
    "nn": {"pulp", "highspy", "numaplan.plan", "numaplan.runtime", "numaplan.cli",
           "numaplan.engine", "numaplan.bench", "numaplan.convert"},
    # GGUF conversion: files in, files out; no tvm, no runtime.
    "convert": {"tvm", "tvm_ffi", "pulp", "highspy", "numaplan.plan", "numaplan.passes",
                "numaplan.runtime", "numaplan.nn", "numaplan.cli", "numaplan.engine",
                "numaplan.bench"},
    "plan": {"tvm", "tvm_ffi", "numaplan.passes", "numaplan.runtime", "numaplan.cli",
             "numaplan.engine", "numaplan.bench"},
    "passes": {"pulp", "highspy", "numaplan.runtime", "numaplan.cli", "numaplan.engine",
               "numaplan.bench"},
    "runtime": {"pulp", "highspy", "numaplan.plan.solver_ilp", "numaplan.plan.solver_greedy",
                "numaplan.plan.solver_partition", "numaplan.cli", "numaplan.engine",
                "numaplan.bench", "numaplan.nn", "numaplan.convert"},
    # The embedded example model: a Relax definition (tvm) and an MLC directory writer.
    "tiny_llama": {"pulp", "highspy", "numaplan.plan", "numaplan.passes", "numaplan.runtime",
                   "numaplan.cli", "numaplan.engine", "numaplan.bench"},
    "engine.py": {"numaplan.cli", "numaplan.bench", "numaplan.serve"},
    # The proposal's model-level names: a configuration over the engine and the model
    # definitions; tvm only through numaplan.nn, inside the function that builds a model.
    "llama.py": {"pulp", "highspy", "numaplan.cli", "numaplan.bench", "numaplan.runtime",
                 "numaplan.plan", "numaplan.passes", "numaplan.serve"},
    "bench.py": {"numaplan.cli", "numaplan.serve"},
    # The server: the engine, the generation loop, the text layer and the OpenAI protocol over
    # HTTP; it reaches the runtime and the planner only through the engine.
    "serve": {"tvm", "tvm_ffi", "pulp", "highspy", "numaplan.topology", "numaplan.osnuma",
              "numaplan.cost", "numaplan.model", "numaplan.plan", "numaplan.passes",
              "numaplan.runtime", "numaplan.nn", "numaplan.convert", "numaplan.tiny_llama",
              "numaplan.bench", "numaplan.cli"},
}
# Every layer may use these; they use none of the layers.
FOUNDATIONS = ("_version.py", "_base.py", "_io.py", "_cbuild.py", "errors.py")
for _name in FOUNDATIONS:
    FORBIDDEN[_name] = {"tvm", "tvm_ffi", "pulp", "highspy", "numaplan.topology",
                        "numaplan.osnuma", *_LAYERS_RIGHT_OF_TOPOLOGY}
# The collective's ABI: what the compile pass and the runtime share (it reads plans' types);
# it may import neither of them.
FORBIDDEN["ccl_abi.py"] = {"tvm", "tvm_ffi", "pulp", "highspy", "numaplan.passes",
                           "numaplan.runtime", "numaplan.cli", "numaplan.engine",
                           "numaplan.bench", "numaplan.nn", "numaplan.convert"}
# The generation loop (and the chat on top of it) steps any model through a protocol: they
# never import the runtime.
for _name in ("generation.py", "chat.py"):
    FORBIDDEN[_name] = {"tvm", "tvm_ffi", "pulp", "highspy", "numaplan.topology",
                        "numaplan.osnuma", *_LAYERS_RIGHT_OF_TOPOLOGY}
# OpenAI's protocol over the engine: the engine hands itself in; no layer below is imported.
FORBIDDEN["openai_api.py"] = {"tvm", "tvm_ffi", "pulp", "highspy", "numaplan.topology",
                              "numaplan.osnuma", *_LAYERS_RIGHT_OF_TOPOLOGY}
for _name in _TEXT:
    FORBIDDEN[_name] = {"tvm", "tvm_ffi", "pulp", "highspy", "numaplan.topology",
                        "numaplan.osnuma", *_LAYERS_RIGHT_OF_TOPOLOGY}
# Only the command line starts a server.
for _layer, _forbidden in FORBIDDEN.items():
    if _layer != "serve":
        _forbidden.add("numaplan.serve")
#: Nothing in the package may import these (they are not installed with it).
OUTSIDE = {"examples", "tests"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _import_nodes(path: Path, *, runtime_only: bool = False,
                  module_level: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a file; ``runtime_only`` skips ``if TYPE_CHECKING:`` blocks,
    ``module_level`` skips function and class bodies."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                out.append(child)
            elif runtime_only and isinstance(child, ast.If) and _type_checking(child):
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]))
            elif module_level and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef |
                                             ast.ClassDef):
                continue
            else:
                visit(child)

    visit(ast.parse(path.read_text()))
    return out


def _imports(path: Path) -> list[str]:
    names = []
    for node in _import_nodes(path):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif node.module and node.level == 0:
            names.append(node.module)
    return names


def _hits(name: str, forbidden: set[str]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


def _layer_files(layer: str) -> list[Path]:
    return [PKG / layer] if layer.endswith(".py") else sorted((PKG / layer).rglob("*.py"))


def test_every_layer_and_top_level_module_is_covered():
    tops = {p.name for p in PKG.glob("*.py")} | {p.name for p in PKG.iterdir()
                                                  if (p / "__init__.py").exists()}
    unruled = tops - set(FORBIDDEN) - {"__init__.py", "__main__.py", "cli"}
    assert not unruled, f"no import rule for {sorted(unruled)}: add them to FORBIDDEN"


def test_layers_import_only_leftwards():
    bad = []
    for layer, forbidden in FORBIDDEN.items():
        for path in _layer_files(layer):
            for name in _imports(path):
                if _hits(name, forbidden):
                    bad.append(f"{path.relative_to(PKG.parent)} imports {name}")
    assert not bad, "\n".join(bad)


def test_nothing_imports_examples_or_tests():
    bad = [f"{path.relative_to(PKG.parent)} imports {name}"
           for path in MODULES.values() for name in _imports(path) if _hits(name, OUTSIDE)]
    assert not bad, "\n".join(bad)


def test_no_module_imports_names_from_the_top_level_package():
    # ``from numaplan import X`` runs numaplan/__init__; only submodules may be named that way.
    bad = []
    for name, path in MODULES.items():
        if name == "numaplan":
            continue
        for node in _import_nodes(path):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and \
                    node.module == "numaplan":
                bad += [f"{path.relative_to(PKG.parent)} imports numaplan.{a.name} from "
                        f"numaplan/__init__" for a in node.names
                        if f"numaplan.{a.name}" not in MODULES]
    assert not bad, "\n".join(bad)


def test_top_level_package_imports_only_the_version():
    names = []
    for node in _import_nodes(PKG / "__init__.py", runtime_only=True, module_level=True):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif node.module:
            names.append(node.module)
    assert [n for n in names if n.startswith("numaplan")] == ["numaplan._version"]


def _graph() -> dict[str, set[str]]:
    """Module -> the numaplan modules it imports anywhere (``if TYPE_CHECKING:`` aside)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _import_nodes(path, runtime_only=True):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package
                    for _ in range(node.level - 1):
                        up = up.rpartition(".")[0]
                    base = f"{up}.{base}" if base else up
                # ``from pkg import sub`` runs pkg/__init__ and imports pkg.sub.
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            edges |= {t for t in targets if t in MODULES and t != name}
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "modules that import each other: " + "; ".join(map(str, cycles))


def test_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_import_numaplan_is_light():
    code = ("import sys, numaplan, numaplan.topology, numaplan.cost, numaplan.cli.main;"
            "heavy = [m for m in ('tvm', 'pulp', 'tvm_ffi', 'highspy') if m in sys.modules];"
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_top_level_names_load_on_first_use():
    code = ("import sys, numaplan;"
            "print(sorted(m for m in sys.modules if m.startswith('numaplan')));"
            "print(numaplan.Engine.__module__, numaplan.PlacementError.__module__,"
            "      numaplan.__version__ == sys.modules['numaplan._version'].__version__,"
            "      set(numaplan.__all__) <= set(dir(numaplan)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded, names = out.stdout.splitlines()
    assert loaded == "['numaplan', 'numaplan._version']"
    assert names == "numaplan.engine numaplan.errors True True"
