"""The type checker holds the fakes to the repository protocols, where build_deps takes them.

Each test copies tests/inprocess/fakes.py with one drift from its protocol
and runs mypy (as `make lint` does, with its cache) on the copy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[2]
FAKES = ROOT / "tests" / "inprocess" / "fakes.py"


def mypy_on_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: str, new: str
                  ) -> tuple[str, int]:
    source = FAKES.read_text(encoding="utf-8")
    assert source.count(old) == 1, old
    copy = tmp_path / "drifted_fakes.py"
    copy.write_text(source.replace(old, new), encoding="utf-8")
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MYPYPATH", str(ROOT))
    stdout, stderr, status = api.run(["--config-file", str(ROOT / "pyproject.toml"),
                                      "--no-error-summary", "--hide-error-context", str(copy)])
    assert not stderr, stderr
    return stdout, status


def test_the_fakes_as_they_are_type_check(tmp_path, monkeypatch):
    out, status = mypy_on_fakes(tmp_path, monkeypatch, "class FakeLines:", "class FakeLines:")
    assert status == 0, out


def test_a_fake_whose_signature_drifts_fails_where_it_is_wired(tmp_path, monkeypatch):
    out, status = mypy_on_fakes(
        tmp_path, monkeypatch,
        "    def update_heading(self, user_id: int, rid: int, heading: str)",
        "    def update_heading(self, user_id: int, rid: str, heading: str)")
    assert status == 1
    assert ('Argument "conversations" to "build_deps" has incompatible type '
            '"FakeConversations"; expected "Conversations"') in out, out


def test_a_fake_missing_a_method_fails_where_it_is_wired(tmp_path, monkeypatch):
    out, status = mypy_on_fakes(
        tmp_path, monkeypatch,
        "    def mood_exists(self, user_id: int, mood: str",
        "    def mood_is_there(self, user_id: int, mood: str")
    assert status == 1
    assert ('Argument "lines" to "build_deps" has incompatible type "FakeLines"; '
            'expected "Lines"') in out, out
