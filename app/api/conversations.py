"""Conversations: a heading and the lines animals say in it."""

from __future__ import annotations

import functools

from flask import Response
from marshmallow import Schema

from app.api.common import page, parse_id
from app.api.encoders import CONVERSATION_LIST, conversation_body, conversation_text, item_json
from app.api.encoders import ConversationListItemOut as ConversationListItemOut
from app.api.encoders import ConversationOut as ConversationOut
from app.api.encoders import conversation_json as conversation_json
from app.api.lines import (
    LINES_NOTE,
    decode_with_lines,
    handle_create_line,
    handle_create_lines,
    handle_list_lines,
    line_list,
    new_line,
)
from app.cowsay.cache import Renderer
from app.domain import ids
from app.domain.models import Conversation
from app.domain.repositories import Conversations, Lines
from app.domain.unit_of_work import UnitOfWork
from app.http import respond
from app.http.auth import current_user
from app.http.doc import Doc, Link, ParamsDoc, Success
from app.http.errors import NotFound
from app.http.fields import Text
from app.http.routing import Handler


class CreateConversation(Schema):
    heading = Text(min_length=1, max_length=100, required=True)


@functools.cache
def create_conversation_body(max_lines: int) -> type[Schema]:
    """The body of POST /conversations: a heading and optionally up to `max_lines` lines
    (MAX_BATCH_LINES); one class per value, so the route and its handler share it."""
    schema = CreateConversation.from_dict({"lines": line_list(max_lines)},
                                          name="CreateConversation")
    schema.openapi = ParamsDoc(notes={  # type: ignore[attr-defined]
        "lines": "Optional: the conversation's first lines, created with it in one "
                 "transaction (all of them and the conversation, or nothing). " + LINES_NOTE})
    return schema


class UpdateConversation(Schema):
    heading = Text(min_length=1, max_length=100, required=True)


def _items(rows: list[Conversation]) -> list[dict]:
    return [item_json(c) for c in rows]


def handle_list_conversations(conversations: Conversations) -> Handler:
    """GET /conversations: your conversations, oldest first, without lines."""

    def handler() -> Response:
        return page("conversation", _items, conversations.list)  # the user is the scope

    return handler


def handle_create_conversation(conversations: Conversations, lines: Lines, renderer: Renderer,
                               max_conversations: int, max_lines: int,
                               max_batch: int) -> Handler:
    """POST /conversations: start a conversation with a heading; `lines` adds its first lines
    with it, atomically."""
    schema = create_conversation_body(max_batch)()

    def handler(uow: UnitOfWork | None) -> Response:
        user = current_user()
        params = decode_with_lines(schema, renderer.library, lines, user, uow)
        if "lines" not in params:
            convo = conversations.create(user, params["heading"], max_conversations, uow=uow)
            body = item_json(convo)
            body["lines"] = []
        else:
            convo = conversations.create_with_lines(
                user, params["heading"], max_conversations,
                [new_line(item) for item in params["lines"]], max_lines, uow=uow)
            body = conversation_json(convo, renderer)
        return respond.created(body, location=f"/conversations/{body['id']}")

    return handler


def handle_get_conversation(conversations: Conversations, renderer: Renderer) -> Handler:
    """GET /conversations/{id}: one conversation with all its lines; Accept: text/plain gives
    the rendered text."""

    def handler(conversation_id: str) -> Response:
        convo = conversations.get(current_user(), parse_id(ids.CONVERSATION, conversation_id))
        if convo is None:
            raise NotFound()
        if respond.wants_text():
            return respond.text(conversation_text(convo, renderer))
        return respond.ok_encoded(conversation_body(convo, renderer))

    return handler


def handle_update_conversation(conversations: Conversations,
                               renderer: Renderer) -> Handler:
    """PATCH /conversations/{id}: change the heading."""
    schema = UpdateConversation()

    def handler(conversation_id: str) -> Response:
        rid = parse_id(ids.CONVERSATION, conversation_id)
        params = respond.decode(schema)
        convo = conversations.update_heading(current_user(), rid, params["heading"])
        if convo is None:
            raise NotFound()
        return respond.ok_encoded(conversation_body(convo, renderer))

    return handler


def handle_delete_conversation(conversations: Conversations) -> Handler:
    """DELETE /conversations/{id}: delete it and its lines."""

    def handler(conversation_id: str) -> Response:
        if not conversations.delete(current_user(), parse_id(ids.CONVERSATION, conversation_id)):
            raise NotFound()
        return respond.no_content()

    return handler


# --- descriptions for the OpenAPI document -----------------------------------------------

LIST_CONVERSATIONS_DOC = Doc(
    handle_list_conversations, "Conversations", etag=True, paginated=True,
    success=(Success(200, "One page of the list, oldest first.", CONVERSATION_LIST),))
CREATE_CONVERSATION_DOC = Doc(
    handle_create_conversation, "Conversations",
    success=(Success(201, "The new conversation, with its `lines` (`[]` when none were given).",
                     ConversationOut,
                     links={
                         "GetConversation": Link(handle_get_conversation,
                                                 {"conversation_id": "$response.body#/id"},
                                                 "Read the conversation."),
                         "UpdateConversation": Link(handle_update_conversation,
                                                    {"conversation_id": "$response.body#/id"},
                                                    "Change its heading."),
                         "DeleteConversation": Link(handle_delete_conversation,
                                                    {"conversation_id": "$response.body#/id"},
                                                    "Delete it."),
                         "CreateLine": Link(handle_create_line,
                                            {"conversation_id": "$response.body#/id"},
                                            "Add a line to it."),
                         "CreateLines": Link(handle_create_lines,
                                             {"conversation_id": "$response.body#/id"},
                                             "Add several lines to it at once."),
                         "ListLines": Link(handle_list_lines,
                                           {"conversation_id": "$response.body#/id"},
                                           "List its lines."),
                     }),),
    conflicts=("create more than {max_conversations} conversations",
               "add more than {max_lines} lines to a conversation"),
    request_example={"heading": "Morning on the farm"},
    notes="Each of `lines` is validated as `POST /conversations/{conversation_id}/lines` "
          "validates a line, and every problem is reported at once, named by its element: "
          "`lines[3].mood`. More than {max_lines} lines is `409` and creates nothing.")
GET_CONVERSATION_DOC = Doc(
    handle_get_conversation, "Conversations", etag=True, errors=(NotFound,),
    success=(Success(200, "The conversation with all its lines, oldest first.",
                     ConversationOut,
                     text="With `Accept: text/plain`: the heading, a blank line, then "
                          "each line's `output` in order."),))
UPDATE_CONVERSATION_DOC = Doc(
    handle_update_conversation, "Conversations", errors=(NotFound,),
    success=(Success(200, "The changed conversation, with its lines.", ConversationOut),),
    request_example={"heading": "Evening on the farm"},
    notes="`heading` is required: it is the only thing a conversation has to change.")
DELETE_CONVERSATION_DOC = Doc(
    handle_delete_conversation, "Conversations", errors=(NotFound,),
    success=(Success(204, "Deleted, with its lines."),))
