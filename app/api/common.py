"""Small pieces every API area shares: id parsing and list pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Response, request

from app.domain import ids
from app.domain.errors import CursorNotFound
from app.http import pagination, respond
from app.http.auth import current_user
from app.http.errors import AuthInvalid, NotFound


def parse_id(prefix: str, public_id: str) -> int:
    """The number behind a path id; a malformed id names nothing, so it is 404."""
    number = ids.decode(prefix, public_id)
    if number is None:
        raise NotFound()
    return number


def page(kind: str, data: Callable[[list], list], list_rows: Callable[..., Any], *scope: Any,
         cursor_ok: Callable[[str], bool] | None = None) -> Response:
    """A GET of a list: `{"type": kind, "has_more", "data": data(rows)}`.

    Reads limit/starting_after/ending_before, runs `list_rows(user, *scope,
    page)` (a repository's keyset list), and refuses a cursor that names no
    object of the list. A missing scope is auth_invalid when it is the user
    (deleted since the guard saw them), else (the user's conversation) not found.
    `cursor_ok` rules out cursors no object can have before any query.
    """
    params = pagination.parse_page(request.args)
    user = current_user()
    if cursor_ok is not None and params.cursor is not None and not cursor_ok(params.cursor):
        raise CursorNotFound(params.cursor_param)
    result = list_rows(user, *scope, params)
    if not result.scope_exists:
        raise NotFound() if scope else AuthInvalid()
    if params.cursor is not None and not result.cursor_found:
        raise CursorNotFound(params.cursor_param)
    return respond.ok({"type": kind, "has_more": result.has_more, "data": data(result.rows)})
