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


# --- descriptions for the OpenAPI document (app/openapi) ----------------------------------
from app.domain.models import BUILTIN_MOODS  # noqa: E402  (kept with the descriptions)
from app.http.errors import NotFound  # noqa: E402
from app.openapi.doc import Doc, Link, Success  # noqa: E402

_MOOD_LINKS = {
    "GetMood": Link(handle_get_mood, {"name": "$response.body#/name"}, "Read the mood back."),
    "DeleteMood": Link(handle_delete_mood, {"name": "$response.body#/name"}, "Delete the mood."),
}

LIST_MOODS_DOC = Doc(
    handle_list_moods, "Moods", etag=True, paginated=True,
    success=(Success(200, "One page of the list, oldest first.", "MoodList"),),
    notes="The cursors of this list are mood names (case-insensitive), built-ins included.")
GET_MOOD_DOC = Doc(
    handle_get_mood, "Moods", etag=True, errors=(NotFound,),
    success=(Success(200, "The mood.", "MoodOut"),),
    notes="`name` is case-insensitive; the response shows the mood's own name.")
PUT_MOOD_DOC = Doc(
    handle_put_mood, "Moods",
    success=(Success(200, "Your mood, updated.", "MoodOut", links=_MOOD_LINKS),
             Success(201, "Your new mood.", "MoodOut", links=_MOOD_LINKS)),
    conflicts=("update built-in mood borg", "create more than {max_moods} moods"),
    request_example={"eyes": "^^", "tongue": "U "},
    body_notes={"eyes": f"When creating, default `{BUILTIN_MOODS[0].eyes}`; when updating, "
                        "omitted keeps the current value.",
                "tongue": f"When creating, default `{BUILTIN_MOODS[0].tongue}` (two spaces); "
                          "when updating, omitted keeps the current value."},
    notes="PUT is idempotent by itself, so it takes no Idempotency-Key. `name` is "
          "case-insensitive: an existing mood whose name differs only in case is updated "
          "and keeps the case it was created with. The name travels in the path, so it "
          "must be percent-encoded there (a name of only dots, `.` or `..`, as `%2E`). "
          "A name that is not 1-30 printable ASCII characters without `/` is "
          "`400 invalid_params` with parameter `name`. An empty body creates a mood with "
          "the default eyes and tongue, or changes nothing of an existing one. "
          "Updating an existing mood is allowed at the cap.")
DELETE_MOOD_DOC = Doc(
    handle_delete_mood, "Moods", errors=(NotFound,),
    success=(Success(204, "Deleted."),),
    conflicts=("delete built-in mood borg",
               "delete a mood associated with 3 conversation lines"))
