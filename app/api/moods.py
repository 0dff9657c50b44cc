"""Moods: eight built-ins plus each user's own; names are case-insensitive."""

from __future__ import annotations

from urllib.parse import quote

from flask import Response
from marshmallow import Schema, ValidationError

from app.api.common import missing, page
from app.api.encoders import MoodOut as MoodOut
from app.api.encoders import mood_json
from app.api.fields import Text
from app.domain.models import BUILTIN_MOOD_NAMES
from app.http import respond
from app.http.auth import current_user
from app.http.errors import ActionNotAllowed, ParamProblem

NAME = Text(min_length=1, max_length=30, printable_ascii=True, forbid="/")


class PutMood(Schema):
    eyes = Text(min_length=2, max_length=2, printable_ascii=True)
    tongue = Text(min_length=2, max_length=2, printable_ascii=True)


def _moods(rows: list) -> list[dict]:
    return [mood_json(m) for m in rows]


def _name_problems(name: str) -> list[ParamProblem]:
    try:
        NAME.deserialize(name)
    except ValidationError as exc:
        return [ParamProblem(("name",), exc.messages[0])]
    return []


def _unnameable(name: str) -> bool:
    """No mood can have this name, so it is not looked up (PostgreSQL rejects a NUL in text)."""
    return bool(_name_problems(name))


def _nameable(name: str) -> bool:
    return not _unnameable(name)


def handle_list_moods(moods, users):
    """GET /moods: built-ins first in their fixed order, then yours in creation order."""

    def handler() -> Response:
        return page("mood", _moods, moods.list, users=users, cursor_ok=_nameable)

    return handler


def handle_get_mood(moods, users):
    """GET /moods/{name}: a built-in or one of yours."""

    def handler(name: str) -> Response:
        mood = None if _unnameable(name) else moods.get(current_user(), name)
        if mood is None:
            raise missing(users, current_user())
        return respond.ok(mood_json(mood))

    return handler


def handle_put_mood(moods, max_moods: int):
    """PUT /moods/{name}: create (201) or update (200) your mood."""
    schema = PutMood()

    def handler(name: str) -> Response:
        params = respond.decode(schema, check=lambda _: _name_problems(name))
        if name.lower() in BUILTIN_MOOD_NAMES:
            raise ActionNotAllowed(f"update built-in mood {name.lower()}")
        mood, created = moods.upsert(current_user(), name, params.get("eyes"),
                                     params.get("tongue"), max_moods)
        body = mood_json(mood)
        if created:
            return respond.created(body, location=f"/moods/{quote(mood.name, safe='')}")
        return respond.ok(body)

    return handler


def handle_delete_mood(moods, users):
    """DELETE /moods/{name}: delete your mood unless lines use it."""

    def handler(name: str) -> Response:
        if name.lower() in BUILTIN_MOOD_NAMES:
            raise ActionNotAllowed(f"delete built-in mood {name.lower()}")
        deleted = not _unnameable(name) and moods.delete(current_user(), name)
        if not deleted:
            raise missing(users, current_user())
        return respond.no_content()

    return handler
