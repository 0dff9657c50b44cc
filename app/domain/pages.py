"""A page of a list (limit and cursor) and what a keyset query answers for it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_LIMIT, MAX_LIMIT = 10, 100


@dataclass(frozen=True)
class Page:
    limit: int = DEFAULT_LIMIT
    starting_after: str | None = None
    ending_before: str | None = None

    @property
    def cursor(self) -> str | None:
        return self.starting_after if self.starting_after is not None else self.ending_before

    @property
    def cursor_param(self) -> str:
        return "starting_after" if self.starting_after is not None else "ending_before"

    @property
    def backward(self) -> bool:
        return self.ending_before is not None


@dataclass(frozen=True)
class KeysetResult:
    scope_exists: bool  # the list's owner (user, or the user's conversation) exists
    cursor_found: bool
    rows: Sequence[tuple]  # item columns only, oldest first
    has_more: bool
