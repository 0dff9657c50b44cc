"""Conversations: a heading and the lines animals say in it."""

from __future__ import annotations

from json.encoder import encode_basestring as json_string

from flask import Response, request
from marshmallow import Schema, fields

from app.api.common import missing, parse_id
from app.api.fields import PublicId, Text, Timestamp, rfc3339
from app.api.lines import LineOut, line_json_text, render_line
from app.domain import ids
from app.http import pagination, respond
from app.http.auth import current_user
from app.http.errors import ActionNotAllowed, AuthInvalid
from app.platform.db import UnitOfWork
from app.repo.conversations import LimitReached, UserGone


class CreateConversation(Schema):
    heading = Text(min_length=1, max_length=100, required=True)


class UpdateConversation(Schema):
    heading = Text(min_length=1, max_length=100, required=True)


class ConversationListItemOut(Schema):
    id = PublicId(ids.CONVERSATION)
    heading = Text()
    created_at = Timestamp()


class ConversationOut(ConversationListItemOut):
    lines = fields.List(fields.Nested(LineOut))


ITEM_OUT = ConversationListItemOut()


def item_json(convo) -> dict:
    """What ITEM_OUT.dump gives, built directly (tests/test_serializers.py keeps them equal)."""
    return {"id": f"{ids.CONVERSATION}_{convo.id:016x}", "heading": convo.heading,
            "created_at": rfc3339(convo.created_at)}


def conversation_json(convo, renderer) -> dict:
    body = item_json(convo)
    body["lines"] = [render_line(line, renderer) for line in convo.lines]
    return body


def conversation_body(convo, renderer) -> bytes:
    """encode_json(conversation_json(convo, renderer)), byte for byte, from each line's JSON
    text (see line_json_text); tests/test_serializers.py keeps the two identical."""
    lines = ",".join([line_json_text(line, renderer) for line in convo.lines])
    return (f'{{"id":"{ids.CONVERSATION}_{convo.id:016x}","heading":{json_string(convo.heading)},'
            f'"created_at":"{rfc3339(convo.created_at)}","lines":[{lines}]}}').encode()


def conversation_text(convo, renderer) -> str:
    outputs = "".join(render_line(line, renderer)["output"] for line in convo.lines)
    return f"{convo.heading}\n\n{outputs}"


def handle_list_conversations(conversations, users):
    """GET /conversations: your conversations, oldest first, without lines."""

    def handler() -> Response:
        page = pagination.parse_page(request.args)
        result = conversations.list(current_user(), page)
        if not result.scope_exists:
            raise AuthInvalid()
        if page.cursor is not None and not result.cursor_found:
            raise pagination.cursor_not_found(page)
        return respond.ok({"type": "conversation", "has_more": result.has_more,
                           "data": [item_json(c) for c in result.rows]})

    return handler


def handle_create_conversation(conversations, max_conversations: int):
    """POST /conversations: start a conversation with a heading."""
    schema = CreateConversation()

    def handler(uow: UnitOfWork | None) -> Response:
        params = respond.decode(schema)
        try:
            convo = conversations.create(current_user(), params["heading"], max_conversations,
                                         uow=uow)
        except LimitReached:
            raise ActionNotAllowed(
                f"create more than {max_conversations} conversations") from None
        except UserGone:
            raise AuthInvalid() from None
        body = item_json(convo)
        body["lines"] = []
        return respond.created(body, location=f"/conversations/{body['id']}")

    return handler


def handle_get_conversation(conversations, users, renderer):
    """GET /conversations/{id}: one conversation with all its lines; Accept: text/plain gives
    the rendered text."""

    def handler(conversation_id: str) -> Response:
        convo = conversations.get(current_user(), parse_id(ids.CONVERSATION, conversation_id))
        if convo is None:
            raise missing(users, current_user())
        if respond.wants_text():
            return respond.text(conversation_text(convo, renderer))
        return respond.ok_encoded(conversation_body(convo, renderer))

    return handler


def handle_update_conversation(conversations, users, renderer):
    """PATCH /conversations/{id}: change the heading."""
    schema = UpdateConversation()

    def handler(conversation_id: str) -> Response:
        rid = parse_id(ids.CONVERSATION, conversation_id)
        params = respond.decode(schema)
        convo = conversations.update_heading(current_user(), rid, params["heading"])
        if convo is None:
            raise missing(users, current_user())
        return respond.ok_encoded(conversation_body(convo, renderer))

    return handler


def handle_delete_conversation(conversations, users):
    """DELETE /conversations/{id}: delete it and its lines."""

    def handler(conversation_id: str) -> Response:
        if not conversations.delete(current_user(), parse_id(ids.CONVERSATION, conversation_id)):
            raise missing(users, current_user())
        return respond.no_content()

    return handler


# --- descriptions for the OpenAPI document (app/openapi) ----------------------------------
from app.api.lines import handle_create_line, handle_list_lines  # noqa: E402  (for links)
from app.http.errors import NotFound  # noqa: E402
from app.openapi.doc import Doc, Link, Success  # noqa: E402

LIST_CONVERSATIONS_DOC = Doc(
    handle_list_conversations, "Conversations", etag=True, paginated=True,
    success=(Success(200, "One page of the list, oldest first.", "ConversationList"),))
CREATE_CONVERSATION_DOC = Doc(
    handle_create_conversation, "Conversations",
    success=(Success(201, "The new conversation, with `\"lines\": []`.", "ConversationOut",
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
                         "ListLines": Link(handle_list_lines,
                                           {"conversation_id": "$response.body#/id"},
                                           "List its lines."),
                     }),),
    conflicts=("create more than {max_conversations} conversations",),
    request_example={"heading": "Morning on the farm"})
GET_CONVERSATION_DOC = Doc(
    handle_get_conversation, "Conversations", etag=True, errors=(NotFound,),
    success=(Success(200, "The conversation with all its lines, oldest first.",
                     "ConversationOut",
                     text="With `Accept: text/plain`: the heading, a blank line, then "
                          "each line's `output` in order."),))
UPDATE_CONVERSATION_DOC = Doc(
    handle_update_conversation, "Conversations", errors=(NotFound,),
    success=(Success(200, "The changed conversation, with its lines.", "ConversationOut"),),
    request_example={"heading": "Evening on the farm"},
    notes="`heading` is required: it is the only thing a conversation has to change.")
DELETE_CONVERSATION_DOC = Doc(
    handle_delete_conversation, "Conversations", errors=(NotFound,),
    success=(Success(204, "Deleted, with its lines."),))
