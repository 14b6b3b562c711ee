"""The package's shape, read from its source with `ast` (nothing is imported or run).

A shared core and its wings: a module stays at the package root (or in media/, or
pretrained/) when two or more wings use it; each wing is a folder named for a way the model
is used. The core never imports a wing, a wing never imports another wing, nothing imports
the entry points, and nothing imports in a circle -- counting every `import` and
`from ... import`, at module level or inside a function. A package's `__init__.py` only
re-exports its own modules' names, so the implicit import of a package by its submodules is
not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mmsa_ray"
WINGS = ("batch", "train", "serve", "report")
ENTRY_POINTS = ("mmsa_ray.cli", "mmsa_ray.demo")  # above the wings: they wire commands to them
MAX_FILE_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool, known: dict[str, Path]) -> list[str]:
    """The modules of ours that one import statement names: `from a import b` is a.b when
    a.b is a module, else a."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the module's own package upwards
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    else:
        return []
    out = []
    for name in names:
        while name and name not in known:  # `import mmsa_ray.x.y` of a name inside a module: its module
            name = name.rpartition(".")[0]
        if name.startswith("mmsa_ray"):
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports anywhere in its source (itself excluded)."""
    known = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for node in ast.walk(tree):
            targets.update(_imported(node, name, path.name == "__init__.py", known))
        graph[name] = targets - {name}
    return graph


def _wing(module: str) -> str | None:
    """"batch" for mmsa_ray.batch and everything in it; None for the core and the entry points."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in WINGS else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None. A package's own __init__ importing its
    submodules is part of the graph like any other edge."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def forbidden_edges(graph: dict[str, set[str]]) -> list[str]:
    """Edges that break the direction core <- wings <- entry points."""
    bad = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            src_wing, dst_wing = _wing(src), _wing(dst)
            if dst in ENTRY_POINTS:
                bad.append(f"{src} -> {dst}: nothing imports an entry point")
            elif src in ENTRY_POINTS:
                continue
            elif dst_wing and src_wing is None:
                bad.append(f"{src} -> {dst}: the core imports the {dst_wing} wing")
            elif dst_wing and src_wing != dst_wing:
                bad.append(f"{src} -> {dst}: the {src_wing} wing imports the {dst_wing} wing")
    return bad


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_core_and_wings_import_in_one_direction():
    assert forbidden_edges(import_graph()) == []


def test_leaves_and_the_checkpoint_direction():
    graph = import_graph()
    assert graph["mmsa_ray.media.types"] == set(), "media/types.py must import nothing of ours"
    assert graph["mmsa_ray.labels"] == set()
    assert "mmsa_ray.model" in graph["mmsa_ray.checkpoint"]
    assert "mmsa_ray.checkpoint" not in graph["mmsa_ray.model"]


def test_package_inits_only_reexport_their_own_modules():
    for name, path in _modules().items():
        if path.name != "__init__.py":
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # the docstring
                continue
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"{name}."):
                continue
            if isinstance(node, ast.Assign) and {t.id for t in node.targets} <= {"__all__", "__version__"}:
                continue
            pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno}: an __init__.py only re-exports its own modules' "
                        f"names, found {ast.unparse(node)[:80]!r}")


def test_no_file_past_the_limit():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values() if (n := len(p.read_text().splitlines()))
            > MAX_FILE_LINES}
    assert long == {}, f"files past {MAX_FILE_LINES} lines: split them along a seam"


def test_every_command_names_a_module_with_main():
    from mmsa_ray.cli import COMMANDS

    modules = _modules()
    for command, (module, _) in COMMANDS.items():
        assert module in modules, f"mmsa-ray {command}: no module {module}"
        tree = ast.parse(modules[module].read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), f"{module} has no main()"


def test_tests_use_public_names_only():
    """Tests reach the package through its public names: no `module._private`, no
    `from mmsa_ray.x import _private`."""
    known = _modules()
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules_bound: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmsa_ray"):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        found.append(f"{path.name}:{node.lineno}: imports {node.module}.{alias.name}")
                    if f"{node.module}.{alias.name}" in known:
                        modules_bound.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                modules_bound.update(a.asname for a in node.names if a.name.startswith("mmsa_ray") and a.asname)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules_bound
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert found == [], "tests reach private names:\n" + "\n".join(found)


# ----------------------------------------------------------------------------- the checks themselves


def test_the_checks_find_what_they_look_for():
    """The graph checks on a made-up graph: a circle is named in order, and each kind of
    forbidden edge is reported."""
    graph = {"mmsa_ray.model": {"mmsa_ray.checkpoint"}, "mmsa_ray.checkpoint": {"mmsa_ray.model"},
             "mmsa_ray.labels": set()}
    assert find_cycle(graph) == ["mmsa_ray.checkpoint", "mmsa_ray.model", "mmsa_ray.checkpoint"]
    assert find_cycle({"mmsa_ray.a": {"mmsa_ray.b"}, "mmsa_ray.b": set()}) is None
    edges = {"mmsa_ray.predict": {"mmsa_ray.serve.config"}, "mmsa_ray.serve.page": {"mmsa_ray.report.html"},
             "mmsa_ray.batch.label": {"mmsa_ray.cli", "mmsa_ray.predict", "mmsa_ray.batch.staging"},
             "mmsa_ray.demo": {"mmsa_ray.train.driver"}}
    assert forbidden_edges(edges) == [
        "mmsa_ray.batch.label -> mmsa_ray.cli: nothing imports an entry point",
        "mmsa_ray.predict -> mmsa_ray.serve.config: the core imports the serve wing",
        "mmsa_ray.serve.page -> mmsa_ray.report.html: the serve wing imports the report wing",
    ]
