"""The package's shape: small modules and imports that flow one way.

Every import counts, at module level or inside a function (a function-level import that closes
a cycle is still a cycle: it only moves the failure to the first call); imports under
``if TYPE_CHECKING:`` do not run and do not count.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_multitask"
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (resolving relative imports; ``from pkg import
    sub`` depends on ``pkg.sub``, and on ``pkg`` only when a name is not a submodule)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_nodes(tree)
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
                deps.update(subs)
                if len(subs) < len(node.names):
                    deps.add(base)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_function_level_cycle_and_ignores_type_checking(tmp_path, monkeypatch):
    pkg = tmp_path / "hf_multitask"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .a import y\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import y\n")
    (pkg / "d.py").write_text("from . import c\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    graph = import_graph()
    assert graph["hf_multitask.c"] == set() and graph["hf_multitask.d"] == {"hf_multitask.c"}
    assert cycles(graph) == [["hf_multitask.a", "hf_multitask.b"]]


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles (function-level imports count): " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_no_module_over_the_line_budget(module):
    lines = len(_modules()[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (budget {MAX_LINES}): split it by what it does"


def _architecture_names(readme: str) -> tuple[set[str], dict[str, set[str]]]:
    """The module files the docs' "Architecture" section (``docs/architecture.md``) names: at the top level, and inside
    each ``sub/`` entry's parenthesised list (``compare/`` (``grid.py``, ...))."""
    section = readme.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    packages: dict[str, set[str]] = {}
    rest = section
    for match in re.finditer(r"`(\w+)/` \(", section):
        depth, end = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(section[end], 0)
            end += 1
        group = section[match.end() : end - 1]
        packages.setdefault(match.group(1), set()).update(re.findall(r"`(\w+\.py)`", group))
        rest = rest.replace(group, "")
    return set(re.findall(r"`(\w+\.py)`", rest)), packages


def test_the_architecture_section_names_every_module():
    """One reading path: each module of the package is named in the architecture page's table, under its
    subpackage, so a newcomer can find what owns what (``__init__``/``__main__`` excepted)."""
    top, packages = _architecture_names((PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8"))
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        parts = path.relative_to(PACKAGE).parts
        named = top if len(parts) == 1 else packages.get(parts[0], set())
        if path.name not in named:
            missing.append("/".join(parts))
    assert not missing, f"docs/architecture.md's Architecture section does not name: {', '.join(missing)}"


def test_the_architecture_check_reads_subpackage_lists():
    readme = "# x\n## Architecture\n| a | `top.py`, `sub/` (`one.py` (a note), `two.py`) | x |\n## Next\n`late.py`\n"
    top, packages = _architecture_names(readme)
    assert top == {"top.py"} and packages == {"sub": {"one.py", "two.py"}}
