"""The shared parts of SayPI's OpenAPI document: everything but the operations.

Request and response bodies come from the marshmallow schemas the handlers
validate and dump with (through apispec's marshmallow plugin, taught the
custom fields of app/api/fields.py here), error bodies from the error classes
of app/http/errors.py (their examples are real instances), and response
examples are dumped by the handlers' own schemas from domain objects.
Headers and parameters are shared by many operations; app/openapi/builder.py
decides which operation refers to which.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from apispec import APISpec
from marshmallow import Schema

from app.api import conversations, events, lines, moods, render, users
from app.api.fields import Bool, Email, ObjectList, PublicId, Text, Timestamp
from app.domain import ids
from app.domain.models import BUILTIN_MOODS, Conversation, Line, Mood, User
from app.http import errors as api
from app.http import patterns
from app.http.idempotency import HEADER as IDEMPOTENCY_HEADER
from app.http.pagination import CURSOR_MISSING, DEFAULT_LIMIT, MAX_LIMIT

# JSON Schema patterns (ECMA 262 syntax, as OpenAPI requires) for the rules of app/api/fields.py.
# JSON Schema patterns from the rules the validators use (app/http/patterns.py).
_CONTROL = patterns.CONTROL_CHARS
NO_CONTROL = patterns.anchored(f"[^{_CONTROL}]*")
NO_CONTROL_EXCEPT_NEWLINE_TAB = patterns.anchored(
    f"[^{patterns.CONTROL_CHARS_EXCEPT_NEWLINE_TAB}]*")
PRINTABLE_ASCII = patterns.anchored(f"[{patterns.PRINTABLE_ASCII_CHARS}]*")
_EMAIL_CHAR = rf"[^@ {_CONTROL}]"
_EMAIL_EDGE = rf"[^@ .{_CONTROL}]"
EMAIL = rf"^{_EMAIL_CHAR}+@{_EMAIL_EDGE}{_EMAIL_CHAR}*\.{_EMAIL_CHAR}*{_EMAIL_EDGE}$"
MOOD_NAME = r"^[\u0020-\u002e\u0030-\u007e]{1,30}$"  # printable ASCII except "/"
IDEMPOTENCY_KEY = patterns.anchored(patterns.IDEMPOTENCY_KEY)
REQUEST_ID = patterns.anchored(patterns.REQUEST_ID)


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}



# What each error's `data` holds (API.md's error table); None: the body has no `data`.
ERROR_DATA: dict[type[api.ApiError], dict[str, Any] | None] = {
    api.InvalidRequest: {"type": "object", "required": ["reason"], "additionalProperties": False,
                     "properties": {"reason": {"type": "string"}}},
    api.InvalidParams: {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["params", "message"], "additionalProperties": False,
        "properties": {"params": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                       "message": {"type": "string"}}}},
    api.AuthRequired: None,
    api.AuthInvalid: None,
    api.NotFound: None,
    api.MethodNotAllowed: {"type": "object", "required": ["allowed"], "additionalProperties": False,
                       "properties": {"allowed": {"type": "array",
                                                  "items": {"type": "string"}}}},
    api.ActionNotAllowed: {"type": "object", "required": ["action"], "additionalProperties": False,
                       "properties": {"action": {"type": "string"}}},
    api.IdempotencyKeyInUse: None,
    api.IdempotencyKeyReused: None,
    api.PayloadTooLarge: {"type": "object", "required": ["max_bytes"],
                      "additionalProperties": False,
                      "properties": {"max_bytes": {"type": "integer", "minimum": 0}}},
    api.UnsupportedMediaType: {"type": "object", "required": ["supported"],
                           "additionalProperties": False,
                           "properties": {"supported": {"type": "array",
                                                        "items": {"type": "string"}}}},
    api.RateLimited: {"type": "object", "required": ["retry_after"], "additionalProperties": False,
                  "properties": {"retry_after": {"type": "integer", "minimum": 1}}},
    api.InternalFailure: None,
    api.ServiceUnavailable: {"type": "object", "required": ["retry_after"],
                         "additionalProperties": False,
                         "properties": {"retry_after": {"type": "integer", "minimum": 1}}},
}

# When each error happens, for the response descriptions.
ERROR_WHEN: dict[type[api.ApiError], str] = {
    api.InvalidRequest: "the body does not parse, or its JSON is not an object",
    api.InvalidParams: "parameters are invalid; `data` lists every problem at once",
    api.AuthRequired: "no `Authorization: Bearer` header",
    api.AuthInvalid: "the token is unknown, malformed or forged, or its user was deleted",
    api.NotFound: "nothing of yours is at this path (another user's object and a malformed id "
              "are not found too)",
    api.MethodNotAllowed: "the path exists but not with this method",
    api.ActionNotAllowed: "a rule refuses the action named in `data.action`",
    api.IdempotencyKeyInUse: "the first request with this `Idempotency-Key` is still running; "
                         "retry later",
    api.IdempotencyKeyReused: "this `Idempotency-Key` was used with a different method, path or "
                          "parameters",
    api.PayloadTooLarge: "the body is larger than `MAX_BODY_BYTES`",
    api.UnsupportedMediaType: "a non-empty body that is neither JSON nor a form",
    api.RateLimited: "the rate limit is exceeded; retry after `Retry-After` seconds",
    api.InternalFailure: "an unexpected failure; details are only in the log, under the "
                     "response's `X-Request-ID`",
    api.ServiceUnavailable: "the database is unreachable, the connection pool stayed exhausted, or "
                        "the server is shutting down; retry after `Retry-After` seconds",
}


def error_name(error: type[api.ApiError]) -> str:
    return f"{error.__name__}Error"


def error_examples(config) -> dict[type[api.ApiError], api.ApiError]:
    return {
        api.InvalidRequest: api.InvalidRequest("the body is not valid JSON"),
        api.InvalidParams: api.InvalidParams.one("limit", f"must be an integer between 1 and "
                                                  f"{MAX_LIMIT}"),
        api.AuthRequired: api.AuthRequired(),
        api.AuthInvalid: api.AuthInvalid(),
        api.NotFound: api.NotFound(),
        api.MethodNotAllowed: api.MethodNotAllowed(["GET", "POST"]),
        api.ActionNotAllowed: api.ActionNotAllowed(
            f"create more than {config.max_conversations_per_user} conversations"),
        api.IdempotencyKeyInUse: api.IdempotencyKeyInUse(),
        api.IdempotencyKeyReused: api.IdempotencyKeyReused(),
        api.PayloadTooLarge: api.PayloadTooLarge(config.max_body_bytes),
        api.UnsupportedMediaType: api.UnsupportedMediaType(),
        api.RateLimited: api.RateLimited(12),
        api.InternalFailure: api.InternalFailure(),
        api.ServiceUnavailable: api.ServiceUnavailable(1),
    }


# --- fields -> JSON Schema -----------------------------------------------------------------
def field_properties(self, field, ret: dict, **kwargs: Any) -> dict:
    """apispec attribute function for the custom fields of app/api/fields.py."""
    if isinstance(field, Text):
        props: dict[str, Any] = {"type": "string"}
        if isinstance(field, Email):
            props["pattern"] = EMAIL
        elif field.printable_ascii:
            props["pattern"] = PRINTABLE_ASCII if not field.forbid else MOOD_NAME
        else:
            props["pattern"] = NO_CONTROL_EXCEPT_NEWLINE_TAB if field.allow_newlines \
                else NO_CONTROL
        if field.min_length:
            props["minLength"] = field.min_length
        if field.max_length is not None:
            props["maxLength"] = field.max_length
        return props
    if isinstance(field, Bool):
        return {"type": "boolean"}
    if isinstance(field, ObjectList):
        return {"type": "array", "minItems": 1, "maxItems": field.max_items,
                "items": ref("schemas", field.schema.__name__)}
    if isinstance(field, PublicId):
        return {"type": "string", "pattern": f"^{field.prefix}_[0-9a-f]{{16}}$",
                "description": f"`{field.prefix}_` and 16 hex digits."}
    if isinstance(field, Timestamp):
        return {"type": "string", "format": "date-time",
                "description": "RFC 3339, in UTC (`Z`)."}
    return {}


_TEXT_CONSTRAINTS = ("pattern", "minLength", "maxLength")


def _text_fields(schema: type[Schema]) -> dict[str, Any]:
    return {name: f for name, f in schema().fields.items() if isinstance(f, Text)}


def _describe(field) -> str:
    if isinstance(field, Bool):
        return "A boolean; in a form body `true` or `false` (also `1` or `0`)."
    if isinstance(field, ObjectList):
        return f"A list of 1 to {field.max_items} `{field.schema.__name__}` objects."
    text = field.describe().removeprefix("must be ")
    text = text[:1].upper() + text[1:]
    if isinstance(field, Email):
        text += ": one `@` with a non-empty local part and a domain containing a dot, no spaces"
    if field.forbid:
        text += f" other than {', '.join(f'`{c}`' for c in field.forbid)}"
    if field.allow_newlines:
        text += "; no control characters except newline and tab"
    elif not field.printable_ascii:
        text += "; no control characters"
    return text + "."


def request_component(spec: APISpec, schema: type[Schema], defaults: Mapping[str, Any],
                      notes: Mapping[str, str]) -> None:
    """A request body schema: optional parameters may be `null`, which means "not given"."""
    name = schema.__name__
    spec.components.schema(name, schema=schema)
    component = spec.components.schemas[name]
    required = set(component.get("required", ()))
    for prop_name, field_ in schema().fields.items():
        prop = component["properties"][prop_name]
        description = _describe(field_)
        if field_.allow_none:
            description += " `null` clears it."
        elif prop_name not in required:
            prop["nullable"] = True
            description += " `null` means not given."
        if prop_name in defaults:
            prop["default"] = defaults[prop_name]
        if prop_name in notes:
            description += " " + notes[prop_name]
        prop["description"] = description
    component.pop("additionalProperties", None)  # unknown parameters are ignored
    component["description"] = ("Parameters, as a JSON object or a form. Unknown parameters "
                                "are ignored; JSON values must have the documented type.")


def response_component(spec: APISpec, schema: type[Schema], descriptions: Mapping[str, str],
                       description: str) -> None:
    """A response body schema: every property is always present, and nothing else is."""
    name = schema.__name__
    spec.components.schema(name, schema=schema)
    component = spec.components.schemas[name]
    text_fields = _text_fields(schema)
    for prop_name, prop in component["properties"].items():
        if prop_name in text_fields:
            for keyword in _TEXT_CONSTRAINTS:  # request rules, not promises about output
                prop.pop(keyword, None)
        prop.pop("readOnly", None)
        if prop_name in descriptions:
            prop["description"] = descriptions[prop_name]
    component["required"] = list(component["properties"])
    component["additionalProperties"] = False
    component["description"] = description


def list_component(item: str, kind: str) -> dict[str, Any]:
    return {
        "type": "object", "required": ["type", "has_more", "data"],
        "additionalProperties": False,
        "description": f"One page of {kind}s, oldest first.",
        "properties": {
            "type": {"type": "string", "enum": [kind]},
            "has_more": {"type": "boolean", "description": (
                "Whether more objects follow this page (with `ending_before`: precede it).")},
            "data": {"type": "array", "items": ref("schemas", item)},
        },
    }


HEALTH_STATUS = {"type": "string", "enum": ["healthy", "degraded", "unhealthy", "critical"]}


def health_components() -> dict[str, dict[str, Any]]:
    check = {
        "type": "object", "required": ["status", "message", "duration_ms", "details"],
        "additionalProperties": False,
        "properties": {
            "status": HEALTH_STATUS,
            "message": {"type": "string"},
            "duration_ms": {"type": "number", "minimum": 0},
            "details": {"type": "object", "additionalProperties": True},
        },
    }
    checked_at = {"type": "string", "format": "date-time", "nullable": True,
                  "description": "When the status was determined (`null` only before a "
                                 "worker's first check)."}
    return {
        "HealthLive": {"type": "object", "required": ["status"], "additionalProperties": False,
                       "properties": {"status": {"type": "string", "enum": ["healthy"]}}},
        "HealthSummary": {
            "type": "object", "required": ["status"], "additionalProperties": False,
            "properties": {"status": HEALTH_STATUS, "checked_at": checked_at,
                           "message": {"type": "string",
                                       "description": "Why, when shutting down."}}},
        "HealthCheck": check,
        "HealthDetailed": {
            "type": "object", "required": ["status", "checked_at", "checks"],
            "additionalProperties": False,
            "properties": {"status": HEALTH_STATUS, "checked_at": checked_at,
                           "checks": {"type": "object",
                                      "additionalProperties": ref("schemas", "HealthCheck")}}},
        "PrometheusText": {"type": "string",
                           "description": "Prometheus text exposition format."},
        "AnimalList": {
            "type": "object", "required": ["animals"], "additionalProperties": False,
            "properties": {"animals": {"type": "array", "items": {"type": "string"},
                                       "description": "Animal names, sorted."}}},
    }


# --- headers and parameters -----------------------------------------------------------------
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {"description": "The request's id: the one sent, when it is 1-128 "
                                    "characters of `[A-Za-z0-9._-]`, else a generated one. "
                                    "Every log line of the request carries it.",
                     "required": True, "schema": {"type": "string", "pattern": REQUEST_ID}},
    "RateLimit": {"description": "Remaining quota `r` and seconds `t` until it is full "
                                 "again, e.g. `\"user\";r=59;t=1` (policy `\"ip\"` before "
                                 "authentication). Present when rate limits are enabled.",
                  "schema": {"type": "string"}},
    "RateLimit-Policy": {"description": "Quota `q` per window `w` seconds, e.g. "
                                        "`\"user\";q=60;w=60`. Present when rate limits are "
                                        "enabled.",
                         "schema": {"type": "string"}},
    "Retry-After": {"description": "Whole seconds to wait before retrying.", "required": True,
                    "schema": {"type": "integer", "minimum": 1}},
    "Location": {"description": "The new object's URL (a path on this server).",
                 "required": True, "schema": {"type": "string"}},
    "ETag": {"description": "The representation's entity tag; send it as `If-None-Match` to "
                            "get `304` while it is unchanged. The JSON and the text form of "
                            "one object have different tags.",
             "required": True, "schema": {"type": "string"}},
    "Idempotent-Replayed": {"description": "`true` when this is the stored response to an "
                                           "earlier request with the same `Idempotency-Key`; "
                                           "absent on originals.",
                            "schema": {"type": "string", "enum": ["true"]}},
    "WWW-Authenticate": {"description": "`Bearer` (with `error=\"invalid_token\"` for a bad "
                                        "token).",
                         "required": True, "schema": {"type": "string"}},
}

PARAMETERS: dict[str, dict[str, Any]] = {
    "limit": {"name": "limit", "in": "query", "required": False,
              "description": f"How many objects per page, {1}-{MAX_LIMIT} (default "
                             f"{DEFAULT_LIMIT}). An empty or out-of-range value is "
                             f"`400 invalid_params`.",
              "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                         "default": DEFAULT_LIMIT}},
    "starting_after": {
        "name": "starting_after", "in": "query", "required": False,
        "description": "Cursor: the page of objects right after this one (an object id of "
                       "this list; for moods, a mood name, case-insensitive). Not together "
                       "with `ending_before`. A cursor that names no object of this list is "
                       f"`400 invalid_params` \"{CURSOR_MISSING}\".",
        "schema": {"type": "string", "minLength": 1}},
    "ending_before": {
        "name": "ending_before", "in": "query", "required": False,
        "description": "Cursor: the page of objects right before this one, still oldest "
                       "first; `has_more` then tells whether more precede it. Not together "
                       "with `starting_after`.",
        "schema": {"type": "string", "minLength": 1}},
    "Idempotency-Key": {
        "name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
        "description": "1-255 printable ASCII characters. Within 24 hours, the same key from "
                       "the same caller with the same method, path and parameters (after "
                       "parsing: equal JSON and form bodies match) replays the first response "
                       "with `Idempotent-Replayed: true` and executes nothing. Responses with "
                       "5xx, 429 or `409 idempotency_key_in_use` are not recorded, so their "
                       "retries execute.",
        "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY},
        "example": "3f1c9a52-order-42"},
    "If-None-Match": {
        "name": "If-None-Match", "in": "header", "required": False,
        "description": "An `ETag` from an earlier response: `304` without a body while the "
                       "representation still has that tag.",
        "schema": {"type": "string"}},
    "X-Request-ID": {
        "name": "X-Request-ID", "in": "header", "required": False,
        "description": "Your id for this request, echoed in the response and the logs when it "
                       "is 1-128 characters of `[A-Za-z0-9._-]`; otherwise one is generated.",
        "schema": {"type": "string"}},
}

PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "user_id": {"description": "Your user id (`usr_...`); any other id is `404`.",
                "schema": {"type": "string", "pattern": f"^{ids.USER}_[0-9a-f]{{16}}$"},
                "example": "usr_3a1f0c6e2b9d4857"},
    "conversation_id": {"description": "A conversation id (`cv_...`).",
                        "schema": {"type": "string",
                                   "pattern": f"^{ids.CONVERSATION}_[0-9a-f]{{16}}$"},
                        "example": "cv_0b6d2f9e4c8a1735"},
    "line_id": {"description": "A line id (`ln_...`) of that conversation.",
                "schema": {"type": "string", "pattern": f"^{ids.LINE}_[0-9a-f]{{16}}$"},
                "example": "ln_5e2a9c7f1d3b0846"},
    "event_id": {"description": "An event id (`evt_...`) of yours.",
                 "schema": {"type": "string", "pattern": "^evt_[0-9a-f]{32}$"},
                 "example": "evt_3a1f0c6e2b9d4857000000000000002a"},
    "name": {"description": "A mood name: 1-30 printable ASCII characters other than `/`, "
                            "case-insensitive, percent-encoded in the path.",
             "schema": {"type": "string", "pattern": MOOD_NAME},
             "example": "sleepy"},
}



# --- examples ---------------------------------------------------------------------------------
def example_objects() -> dict[str, Any]:
    """Response examples, dumped by the handlers' own schemas from domain objects."""
    from app.cowsay import BUNDLED_COW_DIR, CowLibrary, Renderer
    from app.http.tokens import TokenSigner

    created = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
    user = User(0x3A1F0C6E2B9D4857, "Ada", "ada@example.com", created)
    tired = next(m for m in BUILTIN_MOODS if m.name == "tired")
    sleepy = Mood("sleepy", "-.", "U ", True)
    line = Line(0x5E2A9C7F1D3B0846, "default", False, tired, "Moo.", created)
    convo = Conversation(0x0B6D2F9E4C8A1735, "Morning on the farm", created, (line,))
    renderer = Renderer(CowLibrary.load([BUNDLED_COW_DIR], logging.getLogger("saypi.openapi")))
    line_json = lines.render_line(line, renderer)
    convo_json = conversations.conversation_json(convo, renderer)
    item = conversations.ConversationListItemOut().dump(convo)
    line_event = events.event_json(events.Event(
        user.id, 42, "line.created", convo.id, created,
        [line.id, line.animal, line.think, line.text,
         int((created - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1000000,
         *tired]), renderer)
    return {
        "EventOut": line_event,
        "EventList": {"type": "event", "has_more": True, "data": [line_event]},
        "UserOut": users.UserOut().dump(user),
        "CreatedUserOut": users.CreatedUserOut().dump(
            {**user._asdict(), "token": TokenSigner(("an example secret, not used",)).sign(
                user.id)}),
        "MoodOut": moods.MoodOut().dump(sleepy),
        "LineOut": line_json,
        "ConversationOut": convo_json,
        "AnimalList": {"animals": ["cat", "default", "fish", "owl", "robot", "turtle"]},
        "MoodList": {"type": "mood", "has_more": True,
                     "data": [moods.MoodOut().dump(m) for m in BUILTIN_MOODS[:2]]},
        "ConversationList": {"type": "conversation", "has_more": False, "data": [item]},
        "LineList": {"type": "line", "has_more": False, "data": [line_json]},
        "HealthLive": {"status": "healthy"},
        "HealthSummary": {"status": "healthy", "checked_at": "2024-05-01T09:30:00.123456Z"},
        "HealthDetailed": {"status": "healthy", "checked_at": "2024-05-01T09:30:00.123456Z",
                           "checks": {"migrations": {
                               "status": "healthy", "message": "schema is current",
                               "duration_ms": 1.52, "details": {"current": 3,
                                                                "expected": 3}}}},
        "PrometheusText": ('# HELP http_requests_total Requests answered.\n'
                           '# TYPE http_requests_total counter\n'
                           'http_requests_total{method="GET",route="/animals",status="200"} '
                           '42.0\n'),
        "text:ConversationOut": conversations.conversation_text(convo, renderer),
        "text:LineOut": line_json["output"],
        "RenderOut": render.RenderOut().dump({"output": line_json["output"]}),
        "text:RenderOut": line_json["output"],
    }


# --- response bodies: the schemas operations' Success entries name ---------------------------
RESPONSE_NOTES: dict[type[Schema], tuple[str, dict[str, str]]] = {
    users.UserOut: ("A user.", {}),
    users.CreatedUserOut: ("A new user, with the token shown only this once.", {
        "token": "Bearer token for `Authorization: Bearer <token>`; shown only in this "
                 "response."}),
    moods.MoodOut: ("A mood: the eyes and tongue an animal is drawn with.", {
        "name": "The mood's own name, in the case it was created with.",
        "user_defined": "`false` for the eight built-ins."}),
    lines.LineOut: ("A line: what an animal says or thinks.", {
        "mood": "The mood's own name.",
        "output": "The rendered cowsay art, final newline included, as `cowsay` prints it."}),
    render.RenderOut: ("What a line with the given parameters would show; nothing is "
                       "stored.", {
        "output": "The rendered cowsay art, final newline included, as `cowsay` prints it."}),
    conversations.ConversationListItemOut: ("A conversation as lists show it (no `lines`).",
                                            {}),
    conversations.ConversationOut: ("A conversation with all its lines, oldest first.", {}),
}

RESPONSE_SCHEMA_NAMES = tuple(schema.__name__ for schema in RESPONSE_NOTES)
