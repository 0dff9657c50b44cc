"""The import contract: app/'s packages are layers, imports only go down, no file circles.

Read from the source with `ast` (nothing is imported or run), so it takes well
under a second; `make lint` runs it too. Every import counts, wherever it is
written: at the top, inside a function, or under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Highest first. A module may import modules of its own package and of any
# package on a lower row; packages on one row are independent of each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("run", "routes", "app.server", "app.deps"),  # the top files: the one wiring
    ("app.relay",),  # the relay process's loop and tasks: slow and external work
    ("app.ops", "app.openapi"),  # logs, metrics, traces, health, serving; the document
    ("app.api",),  # one module per resource: makers, schemas, docs
    ("app.http",),  # the request envelope: routing, guards, limits, idempotency, respond
    ("app.store",),  # pools, cluster, Redis, migrations, repositories: the only SQL
    ("app.domain",),  # models, ids, errors, pages, protocols: no I/O
    ("app.cowsay", "app.config", "app.client"),  # import nothing else of SayPI
)


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module the contract covers, by dotted name."""
    files = [p for p in root.glob("app/**/*.py") if "__pycache__" not in p.parts]
    files += [root / "run.py", root / "routes.py"]
    modules = {}
    for path in files:
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts != ["app"]:  # the empty root package holds nothing to import
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `name` (at `path`) imports, wherever the import is."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = source_modules(root)
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def unit_of(module: str) -> tuple[int, str]:
    """(row, package) of a module: its layer's row (0 is the top) and its package there."""
    for row, units in enumerate(LAYERS):
        for unit in units:
            if module == unit or module.startswith(unit + "."):
                return row, unit
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Imports that go up a layer, or across to another package of the same row."""
    wrong = []
    for module, targets in sorted(edges.items()):
        row, unit = unit_of(module)
        for target in sorted(targets):
            target_row, target_unit = unit_of(target)
            if row == 0 and target_row == 0:
                continue  # the top files may use each other (circles are checked apart)
            if target_unit != unit and target_row <= row:
                wrong.append(f"{module} -> {target}")
    return wrong


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one file (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_import_goes_down_a_layer():
    assert upward_imports(graph()) == []


def test_no_import_circles_between_files():
    assert circles(graph()) == []


def test_the_contract_catches_an_upward_import_and_a_circle(tmp_path):
    """The checks themselves, on a small tree with one upward import and one circle."""
    for name, text in {
        "run.py": "",
        "routes.py": "",
        "app/__init__.py": "",
        "app/domain/__init__.py": "",
        "app/domain/models.py": "from app.http import respond\n",
        "app/http/__init__.py": "",
        "app/http/respond.py": "from . import routing\n",
        "app/http/routing.py": "from typing import TYPE_CHECKING\n"
                               "if TYPE_CHECKING:\n    from app.http.respond import ok\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    edges = graph(tmp_path)
    assert upward_imports(edges) == ["app.domain.models -> app.http",  # its __init__ runs
                                     "app.domain.models -> app.http.respond"]
    assert circles(edges) == [["app.http.respond", "app.http.routing"]]


if __name__ == "__main__":  # `make lint`: the same checks, one line per problem
    import sys

    problems = [f"upward import: {line}" for line in upward_imports(graph())]
    problems += [f"import circle: {' -> '.join(group)}" for group in circles(graph())]
    print("\n".join(problems) or "import contract: every import goes down, no circles")
    sys.exit(1 if problems else 0)
