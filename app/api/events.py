"""Events: what changed, in the order it committed (GET /events, GET /events/{id}).

An event's `data.object` is built here, by the same encoders the other
handlers answer with, from the fields its write stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Response, request

from app.api import samples
from app.api.encoders import (
    USER_OUT,
    ConversationListItemOut,
    LineOut,
    MoodOut,
    UserOut,
    item_json,
    mood_json,
    render_line,
)
from app.cowsay.cache import Renderer
from app.domain import ids
from app.domain.errors import CursorNotFound
from app.domain.events import TYPES, Event, from_micros
from app.domain.models import Conversation, Line, Mood, User
from app.domain.repositories import Events
from app.http import pagination, respond
from app.http.auth import current_user
from app.http.doc import Component, Doc, Link, Success, list_of
from app.http.errors import ApiError, AuthInvalid, InvalidParams, NotFound, ParamProblem
from app.http.fields import rfc3339
from app.http.routing import Handler

EVENT = "evt"
_EVENT_ID = re.compile(r"evt_([0-9a-f]{16})([0-9a-f]{16})")
RESOURCES = tuple(dict.fromkeys(t.split(".")[0] for t in TYPES))
TYPE_PROBLEM = ("must be an event type (" + ", ".join(TYPES) + ") or a prefix with `*` "
                "(" + ", ".join(f"{r}.*" for r in RESOURCES) + ")")
CONVERSATION_PROBLEM = "must be a conversation id (`cv_` and 16 hex digits)"


def event_id(user_id: int, seq: int) -> str:
    """`evt_`, the owner's number, then the event's: ids of one user sort as their events."""
    return f"evt_{user_id:016x}{seq:016x}"


def parse_event_id(public_id: str, user_id: int) -> int | None:
    """The event's number if `public_id` is one of this user's event ids, else None."""
    match = _EVENT_ID.fullmatch(public_id)
    if match is None or int(match.group(1), 16) != user_id:
        return None
    seq = int(match.group(2), 16)
    return seq if 0 < seq < 2**63 else None


def object_of(event: Event, renderer: Renderer) -> dict[str, Any]:
    """The object as the API showed it right after the change (before, for a deletion)."""
    kind, data = event.type.split(".")[0], event.data
    if kind == "line":
        rid, animal, think, text, created, mood_name, eyes, tongue, user_defined = data
        return render_line(Line(rid, animal, think, Mood(mood_name, eyes, tongue, user_defined),
                                text, from_micros(created)), renderer)
    if kind == "conversation":
        return item_json(Conversation(data[0], data[1], from_micros(data[2])))
    if kind == "mood":
        return mood_json(Mood(*data))
    return USER_OUT.dump(User(data[0], data[1], data[2], from_micros(data[3])))


def event_json(event: Event, renderer: Renderer) -> dict[str, Any]:
    return {"id": event_id(event.user_id, event.seq), "type": event.type,
            "created_at": rfc3339(event.created_at),
            "conversation": None if event.conversation is None
            else ids.CONVERSATION_ID % event.conversation,
            "data": {"object": object_of(event, renderer)}}


def _filters(args: Mapping[str, str]) -> tuple[list[str] | None, int | None]:
    """The `type` filter as the exact types it selects, and the `conversation` filter."""
    problems, types, conversation = [], None, None
    wanted = args.get("type")
    if wanted is not None:
        if wanted in TYPES:
            types = [wanted]
        elif wanted.endswith(".*") and wanted[:-2] in RESOURCES:
            types = [t for t in TYPES if t.startswith(wanted[:-1])]
        else:
            problems.append(ParamProblem(("type",), TYPE_PROBLEM))
    raw = args.get("conversation")
    if raw is not None:
        conversation = ids.decode(ids.CONVERSATION, raw)
        if conversation is None:
            problems.append(ParamProblem(("conversation",), CONVERSATION_PROBLEM))
    if problems:
        raise InvalidParams(problems)
    return types, conversation


def _expired(param: str, hours: int) -> ApiError:
    return InvalidParams([ParamProblem((param,), f"names an event older than the "
                                                 f"{hours}-hour event retention")])


def handle_list_events(events: Events, renderer: Renderer) -> Handler:
    """GET /events: your events, oldest first, in the order their changes committed."""

    def handler() -> Response:
        page = pagination.parse_page(request.args)
        types, conversation = _filters(request.args)
        user = current_user()
        cursor = None
        if page.cursor is not None:
            cursor = parse_event_id(page.cursor, user)
            if cursor is None:
                raise CursorNotFound(page.cursor_param)
        result = events.list(user, page, cursor, types, conversation)
        if not result.user_exists:
            raise AuthInvalid()
        if result.cursor_state == "missing":
            raise CursorNotFound(page.cursor_param)
        if result.cursor_state == "expired":
            raise _expired(page.cursor_param, events.retention_hours)
        return respond.ok({"type": "event", "has_more": result.has_more,
                           "data": [event_json(e, renderer) for e in result.events]})

    return handler


def handle_get_event(events: Events, renderer: Renderer) -> Handler:
    """GET /events/{id}: one of your events."""

    def handler(event_id: str) -> Response:
        user = current_user()
        seq = parse_event_id(event_id, user)
        event = events.get(user, seq) if seq is not None else None
        if event is None:
            raise NotFound()
        return respond.ok(event_json(event, renderer))

    return handler


# --- descriptions for the OpenAPI document (app/openapi) ----------------------------------

ORDER_NOTE = (
    "Every change you make records its events in the same transaction: a committed change "
    "always has them, a refused or rolled-back one never does, and an idempotent replay "
    "records nothing. Your events have one order, the order their changes committed, and "
    "event ids sort in it: once you have seen an event, no event sorting before it appears "
    "later. `data.object` is the object as the API showed it right after the change (a "
    "line with its `output`, a conversation without `lines`), or just before, for a "
    "deletion. Deleting a conversation records `conversation.deleted` alone: its lines "
    "went with it. Events are kept `EVENTS_RETENTION_HOURS` (this server: {retention} "
    "hours).")


def sample_event(renderer: Renderer) -> dict[str, Any]:
    line, created = samples.LINE, samples.CREATED
    micros = int((created - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1_000_000
    return event_json(Event(samples.USER.id, 42, "line.created", samples.CONVERSATION.id,
                            created, [line.id, line.animal, line.think, line.text, micros,
                                      *samples.TIRED]), renderer)


EVENT_OUT = Component("EventOut", {
    "type": "object", "additionalProperties": False,
    "required": ["id", "type", "created_at", "conversation", "data"],
    "description": "A change you made, and the object it changed.",
    "properties": {
        "id": {"type": "string", "pattern": "^evt_[0-9a-f]{32}$",
               "description": "Sorts in the order the changes committed."},
        "type": {"type": "string", "enum": list(TYPES)},
        "created_at": {"type": "string", "format": "date-time"},
        "conversation": {"type": "string", "nullable": True,
                         "pattern": f"^{ids.CONVERSATION}_[0-9a-f]{{16}}$",
                         "description": "The conversation the change was in, if any."},
        "data": {"type": "object", "additionalProperties": False, "required": ["object"],
                 "properties": {"object": {
                     "description": "The object after the change (before it, for a "
                                    "deletion): a user, a conversation without `lines`, a "
                                    "line or a mood, as `type` says.",
                     "oneOf": [{"$ref": f"#/components/schemas/{schema.__name__}"}
                               for schema in (UserOut, ConversationListItemOut, LineOut,
                                              MoodOut)]}}},
    },
}, sample_event, requires=(UserOut, ConversationListItemOut, LineOut, MoodOut))
EVENT_LIST = list_of("EventList", EVENT_OUT, "event", lambda renderer: {
    "type": "event", "has_more": True, "data": [sample_event(renderer)]})

QUERY_PARAMETERS: dict[str, dict[str, Any]] = {
    "type": {"name": "type", "in": "query", "required": False,
             "description": "Only events of this type (`line.created`), or of every type "
                            "with this prefix (`line.*`).",
             "schema": {"type": "string", "enum": [*TYPES, *(f"{r}.*" for r in RESOURCES)]},
             "example": "line.*"},
    "conversation": {"name": "conversation", "in": "query", "required": False,
                     "description": "Only events of this conversation (`cv_...`): its own "
                                    "and its lines'.",
                     "schema": {"type": "string",
                                "pattern": f"^{ids.CONVERSATION}_[0-9a-f]{{16}}$"},
                     "example": "cv_0b6d2f9e4c8a1735"},
}

LIST_EVENTS_DOC = Doc(
    handle_list_events, "Events", etag=True, paginated=True, query=QUERY_PARAMETERS,
    success=(Success(200, "One page of your events, oldest first.", EVENT_LIST, links={
        "GetFirstEvent": Link(handle_get_event, {"event_id": "$response.body#/data/0/id"},
                              "Read the page's first event."),
    }),),
    notes=ORDER_NOTE + " `starting_after` and `ending_before` take any of your event ids, "
          "whatever the filters; one older than the retention is `400 invalid_params`. "
          "`conversation` names a conversation id: one that is not yours, or that never had "
          "events, lists nothing. Follow changes by polling with `starting_after` set to "
          "the last id you saw.")
GET_EVENT_DOC = Doc(
    handle_get_event, "Events", etag=True, errors=(NotFound,),
    success=(Success(200, "The event.", EVENT_OUT),),
    notes="Another user's event id, or one older than the retention, is `404`.")
