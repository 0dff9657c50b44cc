"""The README's configuration table lists every setting the code reads."""

from pathlib import Path

from app.config import SETTINGS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_documents_every_setting():
    for setting in SETTINGS:
        assert f"| `{setting.env}` |" in README, setting.env


def test_readme_starts_with_the_two_commands():
    head = README.split("## ")[0]
    assert "make run" in head and "make test" in head
