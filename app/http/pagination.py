"""List parameters (limit, starting_after, ending_before) and keyset pages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.http.errors import CURSOR_MISSING, InvalidParams, ParamProblem

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


def parse_page(args: Mapping[str, str]) -> Page:
    """Read list parameters from the query string; every problem reported at once."""
    problems = []
    limit = DEFAULT_LIMIT
    raw = args.get("limit")
    if raw is not None:
        # Length first: int() refuses strings of thousands of digits with a ValueError.
        if raw.isascii() and raw.isdigit() and len(raw) <= 10 and 1 <= int(raw) <= MAX_LIMIT:
            limit = int(raw)
        else:
            problems.append(ParamProblem(("limit",), f"must be an integer between 1 and "
                                                     f"{MAX_LIMIT}"))
    after, before = args.get("starting_after"), args.get("ending_before")
    if after is not None and before is not None:
        problems.append(ParamProblem(("ending_before", "starting_after"),
                                     "must not be given together"))
    for name, value in (("starting_after", after), ("ending_before", before)):
        if value is not None and value == "":
            problems.append(ParamProblem((name,), CURSOR_MISSING))
    if problems:
        raise InvalidParams(problems)
    return Page(limit, after, before)
