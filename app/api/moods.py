"""Moods: eight built-ins plus each user's own; names are case-insensitive."""

from __future__ import annotations

from urllib.parse import quote

from flask import Response
from marshmallow import Schema, ValidationError

from app.api.common import page
from app.api.encoders import MOOD_LIST, mood_json
from app.api.encoders import MoodOut as MoodOut
from app.domain.models import BUILTIN_MOOD_NAMES, BUILTIN_MOODS, Mood
from app.domain.repositories import Moods
from app.http import respond
from app.http.auth import current_user
from app.http.doc import Doc, Link, ParamsDoc, Success
from app.http.errors import ActionNotAllowed, NotFound, ParamProblem
from app.http.fields import Text
from app.http.routing import Handler

NAME = Text(min_length=1, max_length=30, printable_ascii=True, forbid="/")


class PutMood(Schema):
    eyes = Text(min_length=2, max_length=2, printable_ascii=True)
    tongue = Text(min_length=2, max_length=2, printable_ascii=True)

    openapi = ParamsDoc(notes={
        "eyes": f"When creating, default `{BUILTIN_MOODS[0].eyes}`; when updating, omitted "
                "keeps the current value.",
        "tongue": f"When creating, default `{BUILTIN_MOODS[0].tongue}` (two spaces); when "
                  "updating, omitted keeps the current value."})


def _moods(rows: list[Mood]) -> list[dict]:
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


def handle_list_moods(moods: Moods) -> Handler:
    """GET /moods: built-ins first in their fixed order, then yours in creation order."""

    def handler() -> Response:
        return page("mood", _moods, moods.list, cursor_ok=_nameable)

    return handler


def handle_get_mood(moods: Moods) -> Handler:
    """GET /moods/{name}: a built-in or one of yours."""

    def handler(name: str) -> Response:
        mood = None if _unnameable(name) else moods.get(current_user(), name)
        if mood is None:
            raise NotFound()
        return respond.ok(mood_json(mood))

    return handler


def handle_put_mood(moods: Moods, max_moods: int) -> Handler:
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


def handle_delete_mood(moods: Moods) -> Handler:
    """DELETE /moods/{name}: delete your mood unless lines use it."""

    def handler(name: str) -> Response:
        if name.lower() in BUILTIN_MOOD_NAMES:
            raise ActionNotAllowed(f"delete built-in mood {name.lower()}")
        deleted = not _unnameable(name) and moods.delete(current_user(), name)
        if not deleted:
            raise NotFound()
        return respond.no_content()

    return handler


# --- descriptions for the OpenAPI document -----------------------------------------------

_MOOD_LINKS = {
    "GetMood": Link(handle_get_mood, {"name": "$response.body#/name"}, "Read the mood back."),
    "DeleteMood": Link(handle_delete_mood, {"name": "$response.body#/name"}, "Delete the mood."),
}

LIST_MOODS_DOC = Doc(
    handle_list_moods, "Moods", etag=True, paginated=True,
    success=(Success(200, "One page of the list, oldest first.", MOOD_LIST),),
    notes="The cursors of this list are mood names (case-insensitive), built-ins included.")
GET_MOOD_DOC = Doc(
    handle_get_mood, "Moods", etag=True, errors=(NotFound,),
    success=(Success(200, "The mood.", MoodOut),),
    notes="`name` is case-insensitive; the response shows the mood's own name.")
PUT_MOOD_DOC = Doc(
    handle_put_mood, "Moods",
    success=(Success(200, "Your mood, updated.", MoodOut, links=_MOOD_LINKS),
             Success(201, "Your new mood.", MoodOut, links=_MOOD_LINKS)),
    conflicts=("update built-in mood borg", "create more than {max_moods} moods"),
    request_example={"eyes": "^^", "tongue": "U "},
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
