"""Lines: what an animal says or thinks in a conversation, rendered as cowsay art."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import Response
from marshmallow import Schema

from app.api.common import page, parse_id
from app.api.encoders import DEFAULT_ANIMAL, LINE_LIST, render_line
from app.api.encoders import LineOut as LineOut
from app.cowsay.cache import Renderer
from app.cowsay.library import CowLibrary
from app.domain import ids
from app.domain.models import BUILTIN_MOOD_NAMES, BUILTIN_MOODS, Line, NewLine
from app.domain.repositories import Lines
from app.domain.unit_of_work import UnitOfWork
from app.http import respond
from app.http.auth import current_user
from app.http.doc import Doc, Link, ParamsDoc, Success
from app.http.errors import MOOD_MISSING, InvalidParams, NotFound, ParamProblem
from app.http.fields import Bool, ObjectList, Text
from app.http.routing import Handler


class CreateLine(Schema):
    animal = Text(min_length=1, max_length=100)
    think = Bool()
    mood = Text(min_length=1, max_length=30, printable_ascii=True)
    text = Text(min_length=0, max_length=1000, allow_newlines=True)

    openapi = ParamsDoc(
        notes={"animal": "Must be listed by `GET /animals`.",
               "mood": "A built-in mood or one of yours, case-insensitive.",
               "text": "Rendered literally."},
        defaults={"animal": DEFAULT_ANIMAL, "think": False, "mood": BUILTIN_MOODS[0].name,
                  "text": ""})


LINES_NOTE = ("Each element holds the parameters of one line, as `POST "
              "/conversations/{conversation_id}/lines` takes them; the server's "
              "`MAX_BATCH_LINES` sets how many. Only a JSON body can carry it: in a form it is "
              "a string, which is refused.")


ANIMAL_MISSING = "must name an animal listed by GET /animals"


def line_list(max_lines: int, **kwargs: Any) -> ObjectList:
    """A `lines` parameter: 1 to `max_lines` objects of a line's parameters."""
    return ObjectList(CreateLine, max_items=max_lines, **kwargs)


@functools.cache
def create_lines_body(max_lines: int) -> type[Schema]:
    """The body of POST .../lines/batch on a server taking `max_lines` lines at once
    (MAX_BATCH_LINES); one class per value, so the route and its handler share it."""
    schema = Schema.from_dict({"lines": line_list(max_lines, required=True)}, name="CreateLines")
    schema.openapi = ParamsDoc(notes={"lines": LINES_NOTE})  # type: ignore[attr-defined]
    return schema


def line_problems(valid: dict, library: CowLibrary, mood_known: Callable[[str], bool]
                  ) -> list[ParamProblem]:
    """What a line's schema cannot see: an animal that is not listed, a mood that is
    neither built in nor, as `mood_known(name)` answers, the user's."""
    problems = []
    if "animal" in valid and library.get(valid["animal"]) is None:
        problems.append(ParamProblem(("animal",), ANIMAL_MISSING))
    mood = valid.get("mood")
    if mood is not None and mood.lower() not in BUILTIN_MOOD_NAMES and not mood_known(mood):
        problems.append(ParamProblem(("mood",), MOOD_MISSING))
    return problems


def new_line(params: dict) -> NewLine:
    """A line's validated parameters, with the defaults of what was not given."""
    return NewLine(params.get("animal", DEFAULT_ANIMAL), params.get("think", False),
                   params.get("mood", BUILTIN_MOODS[0].name), params.get("text", ""))


def decode_with_lines(schema: Schema, library: CowLibrary, lines: Lines, user: int,
                      uow: UnitOfWork | None) -> dict:
    """Read a body whose `lines` lists line parameters (a batch, a new conversation's lines).

    Each element is checked as a line's parameters are, and every problem is
    reported at once, named by element: `lines[3].mood`. A mood that is not
    built in is left to the write, which resolves it in its own statement
    (so a batch is one round trip); only a body that is refused anyway looks
    such moods up first, so that its answer names them too.
    """
    not_built_in: list[tuple[int, str]] = []

    def check(valid: dict) -> list[ParamProblem]:
        problems = []
        for index, item in enumerate(valid.get("lines") or ()):
            if item is None:  # not an object: already reported
                continue
            mood = item.get("mood")
            if mood is not None and mood.lower() not in BUILTIN_MOOD_NAMES:
                not_built_in.append((index, mood))
            for problem in line_problems(item, library, lambda _: True):
                problems.append(ParamProblem((f"lines[{index}].{problem.params[0]}",),
                                             problem.message))
        return problems

    try:
        return respond.decode(schema, check=check)
    except InvalidParams as invalid:
        if not not_built_in:
            raise
        known = lines.known_moods(user, [mood for _, mood in not_built_in], uow=uow)
        raise InvalidParams([*invalid.problems, *(
            ParamProblem((f"lines[{index}].mood",), MOOD_MISSING)
            for index, mood in not_built_in if mood.lower() not in known)]) from None


def handle_create_line(lines: Lines, renderer: Renderer, max_lines: int) -> Handler:
    """POST /conversations/{id}/lines: an animal says (or thinks) a text."""
    schema = CreateLine()

    def handler(conversation_id: str, uow: UnitOfWork | None) -> Response:
        rid = parse_id(ids.CONVERSATION, conversation_id)
        user = current_user()

        def check(valid: dict) -> list[ParamProblem]:
            return line_problems(valid, renderer.library,
                                 lambda mood: lines.mood_exists(user, mood, uow=uow))

        new = new_line(respond.decode(schema, check=check))
        line = lines.create(user, rid, new.animal, new.think, new.mood, new.text, max_lines,
                            uow=uow)
        body = render_line(line, renderer)
        return respond.created(body, location=f"/conversations/{conversation_id}/lines/"
                                              f"{body['id']}")

    return handler


def handle_create_lines(lines: Lines, renderer: Renderer, max_lines: int,
                        max_batch: int) -> Handler:
    """POST /conversations/{id}/lines/batch: several lines at once, in order, all or none."""
    schema = create_lines_body(max_batch)()

    def handler(conversation_id: str, uow: UnitOfWork | None) -> Response:
        rid = parse_id(ids.CONVERSATION, conversation_id)
        user = current_user()
        params = decode_with_lines(schema, renderer.library, lines, user, uow)
        created = lines.create_many(user, rid, [new_line(item) for item in params["lines"]],
                                    max_lines, uow=uow)
        body = {"type": "line", "has_more": False,
                "data": [render_line(line, renderer) for line in created]}
        return respond.created(body, location=f"/conversations/{conversation_id}/lines")

    return handler


def handle_list_lines(lines: Lines, renderer: Renderer) -> Handler:
    """GET /conversations/{id}/lines: the conversation's lines, oldest first."""

    def rendered(rows: list[Line]) -> list[dict]:
        return [render_line(line, renderer) for line in rows]

    def handler(conversation_id: str) -> Response:
        rid = parse_id(ids.CONVERSATION, conversation_id)
        return page("line", rendered, lines.list, rid)

    return handler


def handle_get_line(lines: Lines, renderer: Renderer) -> Handler:
    """GET /conversations/{id}/lines/{line}: one line; Accept: text/plain gives its output."""

    def handler(conversation_id: str, line_id: str) -> Response:
        line = lines.get(current_user(), parse_id(ids.CONVERSATION, conversation_id),
                         parse_id(ids.LINE, line_id))
        if line is None:
            raise NotFound()
        body = render_line(line, renderer)
        if respond.wants_text():
            return respond.text(body["output"])
        return respond.ok(body)

    return handler


def handle_delete_line(lines: Lines) -> Handler:
    """DELETE /conversations/{id}/lines/{line}: remove one line."""

    def handler(conversation_id: str, line_id: str) -> Response:
        deleted = lines.delete(current_user(), parse_id(ids.CONVERSATION, conversation_id),
                               parse_id(ids.LINE, line_id))
        if not deleted:
            raise NotFound()
        return respond.no_content()

    return handler


# --- descriptions for the OpenAPI document -----------------------------------------------

LIST_LINES_DOC = Doc(
    handle_list_lines, "Lines", etag=True, paginated=True, errors=(NotFound,),
    success=(Success(200, "One page of the list, oldest first.", LINE_LIST),))
LINE_EXAMPLE = {"animal": "default", "think": False, "mood": "tired", "text": "Moo."}

CREATE_LINE_DOC = Doc(
    handle_create_line, "Lines", errors=(NotFound,),
    success=(Success(201, "The new line, rendered.", LineOut, links={
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
    request_example=LINE_EXAMPLE,
    notes="`animal` must be listed by `GET /animals`; `mood` is a built-in or one of "
          "yours, case-insensitively, and the line reports the mood's own name. "
          "`output` is rendered from the mood as it is now, so changing a mood shows in "
          "every line that uses it.")
GET_LINE_DOC = Doc(
    handle_get_line, "Lines", etag=True, errors=(NotFound,),
    success=(Success(200, "The line.", LineOut,
                     text="With `Accept: text/plain`: just its rendered `output`."),))
DELETE_LINE_DOC = Doc(
    handle_delete_line, "Lines", errors=(NotFound,),
    success=(Success(204, "Deleted."),))
CREATE_LINES_DOC = Doc(
    handle_create_lines, "Lines", errors=(NotFound,),
    success=(Success(201, "The new lines, rendered, in the order given; `Location` is the "
                          "conversation's list of lines.", LINE_LIST, links={
        "ListLines": Link(handle_list_lines,
                          {"conversation_id": "$request.path.conversation_id"},
                          "List the conversation's lines."),
        "GetFirstLine": Link(handle_get_line,
                             {"conversation_id": "$request.path.conversation_id",
                              "line_id": "$response.body#/data/0/id"},
                             "Read the first new line."),
    }),),
    conflicts=("add more than {max_lines} lines to a conversation",),
    request_example={"lines": [LINE_EXAMPLE, {"animal": "owl", "think": True,
                                              "text": "Who?"}]},
    notes="Every line is validated as `POST /conversations/{conversation_id}/lines` "
          "validates one, and every problem is reported at once, named by its element: "
          "`lines[3].mood`. The lines are created in one transaction, in the order given, "
          "or none is: an invalid element, or a conversation that would hold more than "
          "{max_lines} lines, creates nothing. `has_more` is always `false`.")
