"""The import graph of dmem_lsp/ and memory/, read from the source (ast, nothing is imported).

Imports run one way: no module imports one that imports it back (counting the imports inside
functions, which run later but still tie two modules together), and the runtime and
workspace wings, and memory/, never import the LSP wing or the terminal commands. Imports
under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    found = {}
    for path in [*(ROOT / "dmem_lsp").rglob("*.py"), *(ROOT / "memory").rglob("*.py")]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imported(module: str) -> set[str]:
    """The modules of this project that ``module`` imports at run time (at the top or in a function)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    typing_only = {
        id(node)
        for branch in tree.body
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for node in ast.walk(branch)
    }
    names: set[str] = set()
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in names if name in MODULES and name != module}


GRAPH = {module: _imported(module) for module in MODULES}


def _path_back(start: str, target: str) -> list[str] | None:
    """A chain of imports from ``start`` to ``target``, if there is one."""
    seen, todo = {start}, [[start]]
    while todo:
        chain = todo.pop()
        for nxt in sorted(GRAPH[chain[-1]]):
            if nxt == target:
                return [*chain, nxt]
            if nxt not in seen:
                seen.add(nxt)
                todo.append([*chain, nxt])
    return None


def test_the_graph_is_read():
    assert "dmem_lsp.runtime.options" in GRAPH["dmem_lsp.runtime.engine"]
    assert "dmem_lsp.runtime.settings" in GRAPH["dmem_lsp.workspace.config"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_circle(module):
    for imported in GRAPH[module]:
        back = _path_back(imported, module)
        assert back is None, f"{module} imports {imported}, which imports it back: {' -> '.join(back)}"


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.startswith(("dmem_lsp.runtime", "dmem_lsp.workspace", "memory")))
)
def test_the_lower_wings_never_import_the_lsp_or_the_cli(module):
    upward = {name for name in GRAPH[module] if name.startswith(("dmem_lsp.lsp", "dmem_lsp.cli"))}
    assert not upward, f"{module} imports {sorted(upward)}"
