"""Lines: what an animal says or thinks in a conversation, rendered as cowsay art."""

from __future__ import annotations

from flask import Response
from marshmallow import Schema

from app.api.common import missing, page, parse_id
from app.api.encoders import DEFAULT_ANIMAL, render_line
from app.api.encoders import LineOut as LineOut
from app.api.fields import Bool, Text
from app.domain import ids
from app.domain.models import BUILTIN_MOOD_NAMES
from app.http import respond
from app.http.auth import current_user
from app.http.errors import MOOD_MISSING, ParamProblem


class CreateLine(Schema):
    animal = Text(min_length=1, max_length=100)
    think = Bool()
    mood = Text(min_length=1, max_length=30, printable_ascii=True)
    text = Text(min_length=0, max_length=1000, allow_newlines=True)


ANIMAL_MISSING = "must name an animal listed by GET /animals"


def handle_create_line(lines, renderer, max_lines: int):
    """POST /conversations/{id}/lines: an animal says (or thinks) a text."""
    schema = CreateLine()

    def handler(conversation_id: str) -> Response:
        rid = parse_id(ids.CONVERSATION, conversation_id)
        user = current_user()

        def check(valid: dict) -> list[ParamProblem]:
            problems = []
            animal = valid.get("animal", DEFAULT_ANIMAL)
            if "animal" in valid and renderer.library.get(animal) is None:
                problems.append(ParamProblem(("animal",), ANIMAL_MISSING))
            mood = valid.get("mood")
            if mood is not None and mood.lower() not in BUILTIN_MOOD_NAMES \
                    and not lines.mood_exists(user, mood):
                problems.append(ParamProblem(("mood",), MOOD_MISSING))
            return problems

        params = respond.decode(schema, check=check)
        line = lines.create(user, rid, params.get("animal", DEFAULT_ANIMAL),
                            params.get("think", False), params.get("mood", "default"),
                            params.get("text", ""), max_lines)
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
