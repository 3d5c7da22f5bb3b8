"""The package's design, read from its source (issue 14): no import cycle among its modules, an
engine that imports nothing above it, and no engine component that knows `Factory`.

The modules are read with `ast`, never imported. Every import counts wherever it sits: at the
top, inside a function, under `if TYPE_CHECKING:` (a cycle that only the type checker sees is
still a cycle of the design), in a `try`. Resolution, for a module `m`:
- `import aifactory_sim.a.b` and `from aifactory_sim.a import b`: the module `aifactory_sim.a.b`
  where it exists, else the nearest enclosing module that does (`from aifactory_sim.a import X`,
  X a class, is an edge to `aifactory_sim.a`, its `__init__` when it is a package).
- `from . import x`, `from .x import y`, `from .. import x`: relative to `m`'s package (`m`
  itself when `m` is an `__init__`), then as above: `from . import x` is the submodule `x` where
  there is one, else the package's `__init__`.
- Importing a module does not count as importing its parent packages (Python runs their
  `__init__` first, but every module has that edge and none of them is a design choice): a
  package's `__init__` importing its submodules is an edge down, fine by itself; a submodule
  importing from its parent package (`from . import X`, `import aifactory_sim`) is an edge up
  to that `__init__`, and with the first makes a cycle.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aifactory_sim"

#: What `aifactory_sim/engine/` may not import: the layers above it (issue 14: "`engine/` never
#: imports `results.py` or the package root"), each with its submodules.
ABOVE_THE_ENGINE = ("results", "report", "cli", "sweep", "sweep_plots", "plots")


@dataclass(frozen=True)
class Edge:
    """`src` imports `dst`, first at `path`:`line`."""

    src: str
    dst: str
    path: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root.parent)}:{self.line}"


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package at `root` (a package's name is its
    `__init__.py`'s)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _nearest(name: str, known: dict[str, Path]) -> str | None:
    """`name`, or its longest prefix that is a module."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in known:
            return ".".join(parts)
        parts.pop()
    return None


def _targets(node: ast.Import | ast.ImportFrom, name: str, path: Path, known: dict[str, Path],
             root_name: str) -> list[str]:
    """The package modules that the import statement `node` in module `name` imports."""

    def inside(module: str) -> bool:
        return module == root_name or module.startswith(root_name + ".")

    if isinstance(node, ast.Import):
        return [t for a in node.names if inside(a.name) and (t := _nearest(a.name, known))]
    if node.level:
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        if node.level > 1:
            package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    if not inside(base):
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        target = sub if alias.name != "*" and sub in known else _nearest(base, known)
        if target:
            out.append(target)
    return out


def import_graph(root: Path) -> dict[str, dict[str, Edge]]:
    """Module -> {imported module -> its first import}, over every module of the package at
    `root`; imports of the module itself left out."""
    known = modules(root)
    graph: dict[str, dict[str, Edge]] = {name: {} for name in known}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
        for node in sorted(nodes, key=lambda n: n.lineno):
            for target in _targets(node, name, path, known, root.name):
                if target != name and target not in graph[name]:
                    graph[name][target] = Edge(name, target, path, node.lineno)
    return graph


def strongly_connected(graph: dict[str, dict[str, Edge]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module, each sorted, in order."""
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def cycles(graph: dict[str, dict[str, Edge]], component: list[str]) -> list[list[str]]:
    """Short cycles that together use every import edge inside `component`: for each edge
    u -> v, u -> v and the shortest way back from v to u. Each as [a, b, ..., a], starting at
    its smallest module, without repeats; shortest first."""
    members = set(component)
    found: set[tuple[str, ...]] = set()
    for u in component:
        for v in sorted(set(graph[u]) & members):
            back = {v: v}
            queue = deque([v])
            while queue and u not in back:
                x = queue.popleft()
                for y in sorted(set(graph[x]) & members):
                    if y not in back:
                        back[y] = x
                        queue.append(y)
            path = [u]
            while path[-1] != v:
                path.append(back[path[-1]])
            ring = [u, *reversed(path[1:])]  # u -> v -> ... (the way back, reversed)
            start = ring.index(min(ring))
            found.add(tuple(ring[start:] + ring[:start]))
    return [[*c, c[0]] for c in sorted(found, key=lambda c: (len(c), c))]


def describe_cycles(graph: dict[str, dict[str, Edge]], root: Path) -> list[str]:
    """One readable block per strongly connected component: its modules, then its cycles as
    chains a -> b -> a with where each import is."""
    blocks = []
    for component in strongly_connected(graph):
        lines = [f"{len(component)} modules in one cycle: {', '.join(component)}"]
        for chain in cycles(graph, component):
            lines.append("  " + " -> ".join(chain))
            for a, b in itertools.pairwise(chain):
                lines.append(f"      {a} -> {b}  ({graph[a][b].where(root)})")
        blocks.append("\n".join(lines))
    return blocks


def engine_imports_above(graph: dict[str, dict[str, Edge]], root: Path) -> list[str]:
    """Each import by a module of `engine/` of the package root or of a layer above the engine."""
    engine = f"{root.name}.engine"
    above = [f"{root.name}.{m}" for m in ABOVE_THE_ENGINE]
    out = []
    for src, edges in sorted(graph.items()):
        if src != engine and not src.startswith(engine + "."):
            continue
        for dst, edge in sorted(edges.items()):
            if dst == root.name or any(dst == a or dst.startswith(a + ".") for a in above):
                what = "the package root" if dst == root.name else dst
                out.append(f"{src} imports {what}  ({edge.where(root)})")
    return out


_FACTORY = re.compile(r"\bFactory\b")


def factory_mentions(path: Path) -> list[str]:
    """Where the module at `path` names `Factory` in its code (docstrings and comments aside):
    a name, an attribute, an imported name, a class, a parameter, a string annotation; and
    where it holds the factory itself: a parameter `factory` or an attribute `.factory`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[tuple[int, str]] = set()

    def hit(node: ast.AST, what: str) -> None:
        out.add((getattr(node, "lineno", 0), what))

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == "Factory":
            hit(node, "name Factory")
        elif isinstance(node, ast.Attribute) and node.attr == "Factory":
            hit(node, "attribute .Factory")
        elif isinstance(node, ast.Attribute) and node.attr == "factory":
            hit(node, "attribute .factory")
        elif isinstance(node, ast.alias) and "Factory" in (node.name, node.asname):
            hit(node, f"import of {node.name}" + (f" as {node.asname}" if node.asname else ""))
        elif isinstance(node, ast.ClassDef) and node.name == "Factory":
            hit(node, "class Factory")
        elif isinstance(node, ast.arg) and node.arg in ("Factory", "factory"):
            hit(node, f"parameter {node.arg}")
        annotations = []
        if isinstance(node, ast.arg | ast.AnnAssign) and node.annotation is not None:
            annotations.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            annotations.append(node.returns)
        for annotation in annotations:
            for sub in ast.walk(annotation):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    if _FACTORY.search(sub.value):
                        hit(sub, f"annotation {sub.value!r}")
    return [f"{path.name}:{line}: {what}" for line, what in sorted(out)]


#: The engine's wiring: a site's components (factory.py), an estate's factories (estate_factory.py)
WIRING = ("factory.py", "estate_factory.py")


def engine_factory_mentions(root: Path) -> list[str]:
    """`factory_mentions` of every module of `engine/` but the wiring (WIRING)."""
    engine = root / "engine"
    out = []
    for path in sorted(engine.rglob("*.py")):
        if path.relative_to(engine).as_posix() not in WIRING:
            out.extend(factory_mentions(path))
    return out


# --- the package ------------------------------------------------------------------------------


def test_no_import_cycles():
    blocks = describe_cycles(import_graph(PACKAGE), PACKAGE)
    if blocks:
        pytest.fail("import cycles among the package's modules:\n" + "\n".join(blocks), False)


def test_the_engine_imports_nothing_above_it():
    found = engine_imports_above(import_graph(PACKAGE), PACKAGE)
    if found:
        pytest.fail("engine modules importing above the engine:\n  " + "\n  ".join(found), False)


def test_no_engine_component_names_factory():
    found = engine_factory_mentions(PACKAGE)
    if found:
        lines: dict[tuple[str, str], list[str]] = {}
        for hit in found:
            file, line, what = hit.split(":", 2)
            lines.setdefault((file, what.strip()), []).append(line)
        grouped = [f"{file}: {what} (line {', '.join(ls)})" for (file, what), ls in lines.items()]
        pytest.fail("engine modules other than engine/factory.py naming Factory or holding the "
                    "factory:\n  " + "\n  ".join(grouped), False)


def test_the_walker_finds_every_module():
    names = set(modules(PACKAGE))
    assert {"aifactory_sim", "aifactory_sim.engine", "aifactory_sim.engine.factory",
            "aifactory_sim.results"} <= names


# --- the walker on a synthetic package --------------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_walker_finds_a_cycle(tmp_path):
    """A cycle through an import inside a function and one under TYPE_CHECKING, `from . import
    x` read as the submodule, `from .. import X` as the parent `__init__`; an `__init__` that
    imports its submodules alone makes no cycle."""
    root = _package(tmp_path / "pkg", {
        "__init__.py": "from .a import f\nfrom . import sub\n",
        "a.py": "from . import b\n\ndef f():\n    return b\n",
        "b.py": "def g():\n    from .c import h\n    return h\n",
        "c.py": ("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                 "    from pkg.a import f\n\ndef h():\n    pass\n"),
        "sub/__init__.py": "from .leaf import X\n",
        "sub/leaf.py": "import json\n\nX = 1\n",
        "d.py": "import pkg.sub.leaf\nfrom pkg import sub\nfrom .sub import X\n",
    })
    graph = import_graph(root)
    assert set(graph["pkg"]) == {"pkg.a", "pkg.sub"}
    assert set(graph["pkg.a"]) == {"pkg.b"}
    assert set(graph["pkg.b"]) == {"pkg.c"}
    assert set(graph["pkg.c"]) == {"pkg.a"}
    assert set(graph["pkg.d"]) == {"pkg.sub.leaf", "pkg.sub"}
    assert graph["pkg.sub"] == {"pkg.sub.leaf": graph["pkg.sub"]["pkg.sub.leaf"]}
    assert strongly_connected(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert cycles(graph, ["pkg.a", "pkg.b", "pkg.c"]) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    (block,) = describe_cycles(graph, root)
    assert "pkg.a -> pkg.b -> pkg.c -> pkg.a" in block
    assert "pkg.b -> pkg.c  (pkg/b.py:2)" in block
    assert "pkg.c -> pkg.a  (pkg/c.py:4)" in block


def test_a_submodule_importing_its_parent_makes_a_cycle(tmp_path):
    root = _package(tmp_path / "pkg", {
        "__init__.py": "from .x import run\n",
        "x.py": "from . import y\n\ndef run():\n    pass\n",
        "y.py": "def g():\n    import pkg\n    from . import run\n",
    })
    graph = import_graph(root)
    assert set(graph["pkg.y"]) == {"pkg"}
    assert strongly_connected(graph) == [["pkg", "pkg.x", "pkg.y"]]
    assert cycles(graph, ["pkg", "pkg.x", "pkg.y"]) == [["pkg", "pkg.x", "pkg.y", "pkg"]]


def test_the_engine_rules_catch_what_they_should(tmp_path):
    root = _package(tmp_path / "aifactory_sim", {
        "__init__.py": "",
        "results.py": "",
        "report.py": "",
        "sweep_plots.py": "",
        "engine/__init__.py": "",
        "engine/factory.py": "class Factory:\n    pass\n",
        "engine/ports.py": "from .factory import rng_for\n",
        "engine/a.py": ("from __future__ import annotations\nimport aifactory_sim as af\n"
                        "from ..results import Results\n\n"
                        "def f(x: 'Factory', factory) -> list['Factory']:\n"
                        "    from aifactory_sim.sweep_plots import plot\n"
                        "    return x.factory\n"),
        "engine/b.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                        "    from .factory import Factory\n    from aifactory_sim import report\n"
                        "class C:\n    def __init__(self, f: Factory):\n        pass\n"),
    })
    graph = import_graph(root)
    assert engine_imports_above(graph, root) == [
        "aifactory_sim.engine.a imports the package root  (aifactory_sim/engine/a.py:2)",
        "aifactory_sim.engine.a imports aifactory_sim.results  (aifactory_sim/engine/a.py:3)",
        "aifactory_sim.engine.a imports aifactory_sim.sweep_plots  (aifactory_sim/engine/a.py:6)",
        "aifactory_sim.engine.b imports aifactory_sim.report  (aifactory_sim/engine/b.py:4)",
    ]
    found = engine_factory_mentions(root)
    assert found == [
        "a.py:5: annotation 'Factory'",
        "a.py:5: parameter factory",
        "a.py:7: attribute .factory",
        "b.py:3: import of Factory",
        "b.py:6: name Factory",
    ]
