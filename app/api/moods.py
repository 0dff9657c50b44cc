"""Moods: eight built-ins plus each user's own; names are case-insensitive."""

from __future__ import annotations

from urllib.parse import quote

from flask import Response, request
from marshmallow import Schema, ValidationError

from app.api.common import missing
from app.api.fields import Bool, Text
from app.domain.models import BUILTIN_MOOD_NAMES
from app.http import pagination, respond
from app.http.auth import current_user
from app.http.errors import ActionNotAllowed, AuthInvalid, ParamProblem
from app.repo.conversations import LimitReached, UserGone
from app.repo.moods import MoodInUse

NAME = Text(min_length=1, max_length=30, printable_ascii=True, forbid="/")


class PutMood(Schema):
    eyes = Text(min_length=2, max_length=2, printable_ascii=True)
    tongue = Text(min_length=2, max_length=2, printable_ascii=True)


class MoodOut(Schema):
    name = Text()
    eyes = Text()
    tongue = Text()
    user_defined = Bool()


MOOD_OUT = MoodOut()


def mood_json(mood) -> dict:
    """What MOOD_OUT.dump gives, built directly (tests/test_serializers.py keeps them equal)."""
    return {"name": mood.name, "eyes": mood.eyes, "tongue": mood.tongue,
            "user_defined": mood.user_defined}


def _name_problems(name: str) -> list[ParamProblem]:
    try:
        NAME.deserialize(name)
    except ValidationError as exc:
        return [ParamProblem(("name",), exc.messages[0])]
    return []


def _unnameable(name: str) -> bool:
    """No mood can have this name, so it is not looked up (PostgreSQL rejects a NUL in text)."""
    return bool(_name_problems(name))


def handle_list_moods(moods, users):
    """GET /moods: built-ins first in their fixed order, then yours in creation order."""

    def handler() -> Response:
        page = pagination.parse_page(request.args)
        if page.cursor is not None and _unnameable(page.cursor):
            if not users.exists(current_user()):
                raise AuthInvalid()
            raise pagination.cursor_not_found(page)
        result = moods.list(current_user(), page)
        if not result.scope_exists:
            raise missing(users, current_user())
        if page.cursor is not None and not result.cursor_found:
            raise pagination.cursor_not_found(page)
        return respond.ok({"type": "mood", "has_more": result.has_more,
                           "data": [mood_json(m) for m in result.rows]})

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
        try:
            mood, created = moods.upsert(current_user(), name, params.get("eyes"),
                                         params.get("tongue"), max_moods)
        except LimitReached:
            raise ActionNotAllowed(f"create more than {max_moods} moods") from None
        except UserGone:
            raise AuthInvalid() from None
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
        try:
            deleted = not _unnameable(name) and moods.delete(current_user(), name)
        except MoodInUse as exc:
            noun = "line" if exc.count == 1 else "lines"
            raise ActionNotAllowed(
                f"delete a mood associated with {exc.count} conversation {noun}") from None
        if not deleted:
            raise missing(users, current_user())
        return respond.no_content()

    return handler
