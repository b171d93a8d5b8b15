"""casa_hub's import graph, read statically with ``ast``: no cycles, and the layering holds.

Every import counts, also those inside functions and under ``if TYPE_CHECKING:``. An import names
the most specific module that exists; a name a package re-exports lazily (``_EXPORTS`` in its
``__init__.py``, see ``casa_hub.common.lazy``) names the module that defines it.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "casa_hub"
Graph = dict[str, set[str]]


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every ``<root>/**/*.py`` by dotted module name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def lazy_exports(tree: ast.Module) -> dict[str, str]:
    """A package's ``_EXPORTS = {"Name": "submodule.path"}`` literal (``{}`` without one)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            exports = ast.literal_eval(node.value)
            assert isinstance(exports, dict), "_EXPORTS must be a dict literal"
            return exports
    return {}


def most_specific(name: str, modules: set[str]) -> str | None:
    """``name`` or its longest prefix that is a casa_hub module."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or None


@cache
def build_graph(root: Path = ROOT) -> Graph:
    """Module -> the modules it imports (only modules under ``root``)."""
    files = module_files(root)
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in files.items()}
    modules = set(files)
    exports = {name: lazy_exports(tree) for name, tree in trees.items() if files[name].name == "__init__.py"}
    graph: Graph = {name: set() for name in modules}
    for name, tree in trees.items():
        package = name if files[name].name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.rsplit(".", node.level - 1)[0] if node.level else ""  # level 1: the package
                source = ".".join(p for p in (base, node.module) if p)
                for alias in node.names:  # a submodule, else a lazily re-exported name's module, else source
                    sub, lazy = f"{source}.{alias.name}", exports.get(source, {}).get(alias.name)
                    targets.append(sub if sub in modules else f"{source}.{lazy}" if lazy else source)
            for target in targets:
                resolved = most_specific(target, modules)
                if resolved is not None:
                    graph[name].add(resolved)
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """Cycles closed by a back edge of a depth-first search, each as ``[a, b, ..., a]``."""
    done: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path)
        path.pop()
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [])
    return cycles


def test_graph_covers_every_module() -> None:
    """Every casa_hub/**/*.py file is a node, and the lazy re-exports resolve to real modules."""
    files = module_files()
    assert set(build_graph()) == set(files)
    assert "casa_hub.auth.authenticator" in build_graph()["casa_hub.cli.check"]  # an import in a function
    for package, path in files.items():
        for name, target in lazy_exports(ast.parse(path.read_text())).items():
            assert f"{package}.{target}" in files, f"{package}._EXPORTS[{name!r}]: no module {package}.{target}"


def test_edges_follow_the_rules(tmp_path: Path) -> None:
    """Relative, in-function, TYPE_CHECKING and lazily re-exported imports all become edges."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('_EXPORTS = {"Thing": "sub.deep"}\n')
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "deep.py").write_text("from .. import a\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import Thing\n"
                              "def f():\n    import pkg.sub.nothing\n    from . import b\n")
    (pkg / "b.py").write_text("from pkg.sub import deep, missing\n")
    assert build_graph(pkg) == {"pkg": set(), "pkg.sub": set(), "pkg.sub.deep": {"pkg.a"},
                                "pkg.a": {"pkg.sub.deep", "pkg.sub", "pkg.b"}, "pkg.b": {"pkg.sub.deep", "pkg.sub"}}
    assert find_cycles(build_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.sub.deep", "pkg.a"]]


def test_cycle_finder_finds_a_hand_made_cycle() -> None:
    """The cycle finder reports a cycle it is given, and nothing for an acyclic graph."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"a"}}) == [["a", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles() -> None:
    """No module of casa_hub imports itself through other casa_hub modules, at any depth."""
    cycles = find_cycles(build_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_only_the_demo_command_imports_the_demo() -> None:
    """Outside casa_hub/demo/, only casa_hub/cli/demo.py (`casa-hub demo`) imports casa_hub.demo."""
    def demo(m: str) -> bool:
        return m == "casa_hub.demo" or m.startswith("casa_hub.demo.")

    bad = [f"{m} -> {d}" for m, deps in sorted(build_graph().items()) if not demo(m) and m != "casa_hub.cli.demo"
           for d in sorted(deps) if demo(d)]
    assert not bad, bad


def test_common_imports_only_common() -> None:
    """casa_hub/common/ imports nothing of casa_hub outside casa_hub.common."""
    graph = build_graph()
    bad = [f"{m} -> {d}" for m in sorted(graph) if m == "casa_hub.common" or m.startswith("casa_hub.common.")
           for d in sorted(graph[m]) if d != "casa_hub.common" and not d.startswith("casa_hub.common.")]
    assert not bad, bad


def test_refresh_and_logout_do_not_import_the_authenticator() -> None:
    """casa_hub.auth.refresh and casa_hub.auth.logout never import casa_hub.auth.authenticator,
    directly or through other casa_hub modules (they are typed against casa_hub.auth.contract)."""
    graph = build_graph()
    for module in ("casa_hub.auth.refresh", "casa_hub.auth.logout"):
        seen, todo = {module}, [module]
        while todo:
            for dep in graph[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        assert "casa_hub.auth.authenticator" not in seen, f"{module} imports casa_hub.auth.authenticator"
