"""Small pieces every API area shares: id parsing and not-found-or-gone."""

from __future__ import annotations

from app.domain import ids
from app.http.errors import ApiError, AuthInvalid, NotFound


def parse_id(prefix: str, public_id: str) -> int:
    """The number behind a path id; a malformed id names nothing, so it is 404."""
    number = ids.decode(prefix, public_id)
    if number is None:
        raise NotFound()
    return number


def missing(users, user_id: int) -> ApiError:
    """Not found, unless the caller's own user is gone (deleted token): then auth_invalid."""
    return NotFound() if users.exists(user_id) else AuthInvalid()
