"""Lines: what an animal says or thinks in a conversation, rendered as cowsay art."""

from __future__ import annotations

from flask import Response
from marshmallow import Schema

from app.api.common import missing, page, parse_id
from app.api.encoders import DEFAULT_ANIMAL, render_line
from app.api.encoders import LineOut as LineOut
from app.api.fields import Bool, Text
from app.domain import ids
from app.domain.models import BUILTIN_MOOD_NAMES, BUILTIN_MOODS
from app.http import respond
from app.http.auth import current_user
from app.http.errors import MOOD_MISSING, NotFound, ParamProblem
from app.openapi.doc import Doc, Link, Success
from app.platform.db import UnitOfWork


class CreateLine(Schema):
    animal = Text(min_length=1, max_length=100)
    think = Bool()
    mood = Text(min_length=1, max_length=30, printable_ascii=True)
    text = Text(min_length=0, max_length=1000, allow_newlines=True)


ANIMAL_MISSING = "must name an animal listed by GET /animals"


def handle_create_line(lines, renderer, max_lines: int):
    """POST /conversations/{id}/lines: an animal says (or thinks) a text."""
    schema = CreateLine()

    def handler(conversation_id: str, uow: UnitOfWork | None) -> Response:
        rid = parse_id(ids.CONVERSATION, conversation_id)
        user = current_user()

        def check(valid: dict) -> list[ParamProblem]:
            problems = []
            animal = valid.get("animal", DEFAULT_ANIMAL)
            if "animal" in valid and renderer.library.get(animal) is None:
                problems.append(ParamProblem(("animal",), ANIMAL_MISSING))
            mood = valid.get("mood")
            if mood is not None and mood.lower() not in BUILTIN_MOOD_NAMES \
                    and not lines.mood_exists(user, mood, uow=uow):
                problems.append(ParamProblem(("mood",), MOOD_MISSING))
            return problems

        params = respond.decode(schema, check=check)
        line = lines.create(user, rid, params.get("animal", DEFAULT_ANIMAL),
                            params.get("think", False), params.get("mood", "default"),
                            params.get("text", ""), max_lines, uow=uow)
        body = render_line(line, renderer)
        return respond.created(body, location=f"/conversations/{conversation_id}/lines/"
                                              f"{body['id']}")

    return handler


def handle_list_lines(lines, users, renderer):
    """GET /conversations/{id}/lines: the conversation's lines, oldest first."""

    def rendered(rows: list) -> list[dict]:
        return [render_line(line, renderer) for line in rows]

    def handler(conversation_id: str) -> Response:
        rid = parse_id(ids.CONVERSATION, conversation_id)
        return page("line", rendered, lines.list, rid, users=users)

    return handler


def handle_get_line(lines, users, renderer):
    """GET /conversations/{id}/lines/{line}: one line; Accept: text/plain gives its output."""

    def handler(conversation_id: str, line_id: str) -> Response:
        line = lines.get(current_user(), parse_id(ids.CONVERSATION, conversation_id),
                         parse_id(ids.LINE, line_id))
        if line is None:
            raise missing(users, current_user())
        body = render_line(line, renderer)
        if respond.wants_text():
            return respond.text(body["output"])
        return respond.ok(body)

    return handler


def handle_delete_line(lines, users):
    """DELETE /conversations/{id}/lines/{line}: remove one line."""

    def handler(conversation_id: str, line_id: str) -> Response:
        deleted = lines.delete(current_user(), parse_id(ids.CONVERSATION, conversation_id),
                               parse_id(ids.LINE, line_id))
        if not deleted:
            raise missing(users, current_user())
        return respond.no_content()

    return handler


# --- descriptions for the OpenAPI document (app/openapi) ----------------------------------

LIST_LINES_DOC = Doc(
    handle_list_lines, "Lines", etag=True, paginated=True, errors=(NotFound,),
    success=(Success(200, "One page of the list, oldest first.", "LineList"),))
CREATE_LINE_DOC = Doc(
    handle_create_line, "Lines", errors=(NotFound,),
    success=(Success(201, "The new line, rendered.", "LineOut", links={
        "GetLine": Link(handle_get_line,
                        {"conversation_id": "$request.path.conversation_id",
                         "line_id": "$response.body#/id"},
                        "Read the line."),
        "DeleteLine": Link(handle_delete_line,
                           {"conversation_id": "$request.path.conversation_id",
                            "line_id": "$response.body#/id"},
                           "Delete the line."),
    }),),
    conflicts=("add more than {max_lines} lines to a conversation",),
    request_example={"animal": "default", "think": False, "mood": "tired", "text": "Moo."},
    body_defaults={"animal": DEFAULT_ANIMAL, "think": False, "mood": BUILTIN_MOODS[0].name,
                   "text": ""},
    body_notes={"animal": "Must be listed by `GET /animals`.",
                "mood": "A built-in mood or one of yours, case-insensitive.",
                "text": "Rendered literally."},
    notes="`animal` must be listed by `GET /animals`; `mood` is a built-in or one of "
          "yours, case-insensitively, and the line reports the mood's own name. "
          "`output` is rendered from the mood as it is now, so changing a mood shows in "
          "every line that uses it.")
GET_LINE_DOC = Doc(
    handle_get_line, "Lines", etag=True, errors=(NotFound,),
    success=(Success(200, "The line.", "LineOut",
                     text="With `Accept: text/plain`: just its rendered `output`."),))
DELETE_LINE_DOC = Doc(
    handle_delete_line, "Lines", errors=(NotFound,),
    success=(Success(204, "Deleted."),))
