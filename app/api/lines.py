"""Lines: what an animal says or thinks in a conversation, rendered as cowsay art."""

from __future__ import annotations

from json.encoder import encode_basestring as json_string

from flask import Response, request
from marshmallow import Schema

from app.api.common import missing, parse_id
from app.api.fields import Bool, PublicId, Text, Timestamp, rfc3339
from app.domain import ids
from app.domain.models import BUILTIN_MOOD_NAMES
from app.http import pagination, respond
from app.http.auth import current_user
from app.http.errors import ActionNotAllowed, AuthInvalid, InvalidParams, NotFound, ParamProblem
from app.platform.db import UnitOfWork
from app.repo.conversations import LimitReached, UserGone
from app.repo.lines import ConversationMissing, MoodMissing

DEFAULT_ANIMAL = "default"


class CreateLine(Schema):
    animal = Text(min_length=1, max_length=100)
    think = Bool()
    mood = Text(min_length=1, max_length=30, printable_ascii=True)
    text = Text(min_length=0, max_length=1000, allow_newlines=True)


class LineOut(Schema):
    id = PublicId(ids.LINE)
    animal = Text()
    think = Bool()
    mood = Text()
    text = Text()
    output = Text()
    created_at = Timestamp()


LINE_OUT = LineOut()
MOOD_MISSING = "must name a built-in mood or one of yours"
ANIMAL_MISSING = "must name an animal listed by GET /animals"


def line_json(line, output: str) -> dict:
    """What LINE_OUT.dump gives, built directly: it runs for every line of every read.

    tests/test_serializers.py keeps the two identical.
    """
    return {"id": f"{ids.LINE}_{line.id:016x}", "animal": line.animal, "think": line.think,
            "mood": line.mood.name, "text": line.text, "output": output,
            "created_at": rfc3339(line.created_at)}


def line_json_text(line, renderer) -> str:
    """encode_json(render_line(line, renderer)) as text, character for character.

    Built from the render cache's ready-escaped output: escaping the art is
    most of what encoding a read costs. tests/test_serializers.py keeps the
    two identical.
    """
    mood = line.mood
    try:
        output = renderer.render_json(line.animal, mood.eyes, mood.tongue, line.think, line.text)
    except KeyError:
        output = renderer.render_json(DEFAULT_ANIMAL, mood.eyes, mood.tongue, line.think,
                                      line.text)
    return (f'{{"id":"{ids.LINE}_{line.id:016x}","animal":{json_string(line.animal)},'
            f'"think":{"true" if line.think else "false"},"mood":{json_string(mood.name)},'
            f'"text":{json_string(line.text)},"output":{output},'
            f'"created_at":"{rfc3339(line.created_at)}"}}')


def render_line(line, renderer) -> dict:
    """The line's JSON, with its output rendered from the mood as it is now.

    A line whose animal has since disappeared from the cow path is drawn by
    the default animal rather than failing the whole conversation.
    """
    mood = line.mood
    try:
        output = renderer.render(line.animal, mood.eyes, mood.tongue, line.think, line.text)
    except KeyError:
        output = renderer.render(DEFAULT_ANIMAL, mood.eyes, mood.tongue, line.think, line.text)
    return line_json(line, output)


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
        try:
            line = lines.create(user, rid, params.get("animal", DEFAULT_ANIMAL),
                                params.get("think", False), params.get("mood", "default"),
                                params.get("text", ""), max_lines, uow=uow)
        except ConversationMissing:
            raise NotFound() from None
        except UserGone:
            raise AuthInvalid() from None
        except MoodMissing:
            raise InvalidParams.one("mood", MOOD_MISSING) from None
        except LimitReached:
            raise ActionNotAllowed(
                f"add more than {max_lines} lines to a conversation") from None
        body = render_line(line, renderer)
        return respond.created(body, location=f"/conversations/{conversation_id}/lines/"
                                              f"{body['id']}")

    return handler


def handle_list_lines(lines, users, renderer):
    """GET /conversations/{id}/lines: the conversation's lines, oldest first."""

    def handler(conversation_id: str) -> Response:
        rid = parse_id(ids.CONVERSATION, conversation_id)
        page = pagination.parse_page(request.args)
        result = lines.list(current_user(), rid, page)
        if not result.scope_exists:
            raise missing(users, current_user())
        if page.cursor is not None and not result.cursor_found:
            raise pagination.cursor_not_found(page)
        return respond.ok({"type": "line", "has_more": result.has_more,
                           "data": [render_line(line, renderer) for line in result.rows]})

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
from app.domain.models import BUILTIN_MOODS  # noqa: E402  (kept with the descriptions)
from app.openapi.doc import Doc, Link, Success  # noqa: E402

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
