"""The prose rules: module docstrings of five lines at most, and no link to a missing page.

Read from the source with `ast` and regular expressions (nothing is imported or run).
A docstring's reasoning lives in docs/, linked as `docs/<page>.md`; each such link must name
a page that exists, and each relative link between the Markdown pages must resolve.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_DOCSTRING_LINES = 5
DOCS_LINK = re.compile(r"\bdocs/[\w./-]+?\.md\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def checked_modules(root: Path = ROOT) -> list[Path]:
    """The modules whose docstrings are held to the rule: app/, routes.py, run.py."""
    files = [p for p in root.glob("app/**/*.py") if "__pycache__" not in p.parts]
    return [*sorted(files), root / "routes.py", root / "run.py"]


def long_module_docstrings(root: Path = ROOT) -> list[str]:
    """`path: N lines` for each module docstring over the limit."""
    found = []
    for path in checked_modules(root):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        doc = ast.get_docstring(tree)
        lines = len(doc.splitlines()) if doc else 0
        if lines > MAX_MODULE_DOCSTRING_LINES:
            found.append(f"{path.relative_to(root)}: {lines} lines")
    return found


def source_files(root: Path = ROOT) -> list[Path]:
    """Every Python file where code may name a docs page (but this one, for its examples)."""
    return sorted(p for p in root.rglob("*.py")
                  if not {"__pycache__", "node_modules"} & set(p.relative_to(root).parts)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts)
                  and p.resolve() != Path(__file__).resolve())


def broken_docs_links(root: Path = ROOT) -> list[str]:
    """`path: docs/x.md` for each docs page named in code that does not exist."""
    broken = []
    for path in source_files(root):
        for link in sorted(set(DOCS_LINK.findall(path.read_text(encoding="utf-8")))):
            if not (root / link).is_file():
                broken.append(f"{path.relative_to(root)}: {link}")
    return broken


def broken_markdown_links(root: Path = ROOT) -> list[str]:
    """`page: target` for each relative .md link in README.md or docs/ that does not resolve."""
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        if not page.is_file():
            continue
        for target in MARKDOWN_LINK.findall(page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).is_file():
                broken.append(f"{page.relative_to(root)}: {target}")
    return broken


def test_module_docstrings_are_five_lines_at_most():
    assert long_module_docstrings() == []


def test_every_docs_page_named_in_code_exists():
    assert broken_docs_links() == []


def test_every_link_between_the_pages_resolves():
    assert broken_markdown_links() == []


def test_readme_links_the_architecture_page():
    assert "(docs/architecture.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_checks_catch_a_long_docstring_and_missing_pages(tmp_path):
    """The checks themselves, on a small tree with one of each problem."""
    for name, text in {
        "run.py": '"""One.\n\nTwo.\nThree.\nFour.\n"""\n',
        "routes.py": '"""One.\n\nTwo.\nThree.\nFour.\nFive.\n"""\n',
        "app/__init__.py": "",
        "app/store/db.py": '"""Pool.\n\nSee docs/outages.md and docs/here.md."""\n',
        "docs/here.md": "[there](there.md), [here](here.md#top), [web](https://x.org/a.md)\n",
        "README.md": "[docs](docs/here.md)\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert long_module_docstrings(tmp_path) == ["routes.py: 6 lines"]
    assert broken_docs_links(tmp_path) == ["app/store/db.py: docs/outages.md"]
    assert broken_markdown_links(tmp_path) == ["docs/here.md: there.md"]


if __name__ == "__main__":  # `make lint`: the same checks, one line per problem
    import sys

    problems = [f"module docstring over {MAX_MODULE_DOCSTRING_LINES} lines: {line}"
                for line in long_module_docstrings()]
    problems += [f"missing docs page: {line}" for line in broken_docs_links()]
    problems += [f"broken link: {line}" for line in broken_markdown_links()]
    print("\n".join(problems) or "docs: module docstrings short, every linked page exists")
    sys.exit(1 if problems else 0)
