"""List parameters (limit, starting_after, ending_before) read from a query string."""

from __future__ import annotations

from collections.abc import Mapping

from app.domain.pages import DEFAULT_LIMIT, MAX_LIMIT, Page
from app.http.errors import CURSOR_MISSING, InvalidParams, ParamProblem


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
