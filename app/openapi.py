"""The OpenAPI 3.0.3 description of SayPI, built from the code that serves the API.

Request and response bodies come from the marshmallow schemas the handlers
validate and dump with (through apispec's marshmallow plugin), summaries and
descriptions from the maker functions' docstrings, error bodies from the error
classes in `app/http/errors.py` (their examples are real instances), and limits from
the running configuration. What none of those can say (which statuses a route
answers, whether it is authenticated, idempotent or paginated, its links) lives
in one table, `OPERATIONS`, keyed by `(method, Flask rule)` exactly as routes.py
registers them; `route_drift` compares that table with an app's url_map, and the
test suite fails on any difference.

The document is built once per worker, when the app is constructed
(`spec_json`), and served as precomputed bytes.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema

from app.api import animals, conversations, lines, moods, ops, users
from app.api.fields import Bool, Email, PublicId, Text, Timestamp
from app.domain import ids
from app.domain.models import BUILTIN_MOODS, Conversation, Line, Mood, User
from app.http.errors import (
    ALL_ERRORS,
    ActionNotAllowed,
    ApiError,
    AuthInvalid,
    AuthRequired,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InternalFailure,
    InvalidParams,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from app.http.idempotency import HEADER as IDEMPOTENCY_HEADER
from app.http.pagination import CURSOR_MISSING, DEFAULT_LIMIT, MAX_LIMIT

OPENAPI_VERSION = "3.0.3"
TITLE = "SayPI"

# Routes that serve the description itself are not part of it (API.md), nor are the
# fault-injection routes, which exist only in test servers.
SELF_RULES = frozenset({"/openapi.json", "/docs", "/docs/<asset>"})
UNDOCUMENTED_PREFIXES = ("/debug/",)

# JSON Schema patterns (ECMA 262 syntax, as OpenAPI requires) for the rules of app/api/fields.py.
_CONTROL = r"\u0000-\u001f\u007f-\u009f"
_CONTROL_EXCEPT_NEWLINE_TAB = r"\u0000-\u0008\u000b-\u001f\u007f-\u009f"
NO_CONTROL = rf"^[^{_CONTROL}]*$"
NO_CONTROL_EXCEPT_NEWLINE_TAB = rf"^[^{_CONTROL_EXCEPT_NEWLINE_TAB}]*$"
PRINTABLE_ASCII = r"^[\u0020-\u007e]*$"
_EMAIL_CHAR = rf"[^@ {_CONTROL}]"
_EMAIL_EDGE = rf"[^@ .{_CONTROL}]"
EMAIL = rf"^{_EMAIL_CHAR}+@{_EMAIL_EDGE}{_EMAIL_CHAR}*\.{_EMAIL_CHAR}*{_EMAIL_EDGE}$"
MOOD_NAME = r"^[\u0020-\u002e\u0030-\u007e]{1,30}$"  # printable ASCII except "/"
IDEMPOTENCY_KEY = r"^[\u0020-\u007e]{1,255}$"
REQUEST_ID = r"^[A-Za-z0-9._-]{1,128}$"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


# --- the per-route table ----------------------------------------------------------------
@dataclass(frozen=True)
class Link:
    """An OpenAPI link: a later operation that takes a value from this response."""

    operation: Callable  # the target's maker function (its operationId)
    parameters: Mapping[str, str]
    description: str


@dataclass(frozen=True)
class Success:
    """One successful status of an operation and what its body is."""

    status: int
    description: str
    schema: str | None = None  # component name; None: no body
    text: str | None = None  # what `Accept: text/plain` returns instead, if it can
    links: Mapping[str, Link] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    """What the spec needs to know about one registered route beyond its schemas."""

    maker: Callable  # the maker function: docstring, operationId
    tag: str
    success: tuple[Success, ...]
    request: type[Schema] | None = None  # JSON and form body
    body_required: bool = False
    errors: tuple[type[ApiError], ...] = ()  # beyond those implied by the flags below
    authenticated: bool = True  # bearer token, then the user's rate limit
    limited: bool = True  # rate limited (per user, or per address when not authenticated)
    idempotent: bool = False  # takes an Idempotency-Key
    paginated: bool = False  # limit, starting_after, ending_before
    etag: bool = False  # successful GETs carry an ETag and answer If-None-Match with 304
    request_example: Mapping[str, Any] | None = None
    conflicts: tuple[str, ...] = ()  # actions refused with 409 action_not_allowed
    notes: str = ""  # decisions beyond the docstring, where the contract is silent


LIST_SUCCESS = "One page of the list, oldest first."

OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/users"): Operation(
        users.handle_create_user, "Users", authenticated=False, idempotent=True,
        request=users.CreateUser,
        success=(Success(201, "The new user, with its token.", "CreatedUserOut"),),
        conflicts=("use email ada@example.com, which is already registered",),
        request_example={"name": "Ada", "email": "ada@example.com"},
        notes="Both parameters are optional: `{}` creates a user with `null` name and email. "
              "The token authenticates every other endpoint; it cannot be shown again. "
              "Idempotency keys of this endpoint are scoped by client address. "
              "The new user is reached with the returned token, e.g. "
              "`GET /users/{user_id}` with the `id` of this response."),
    ("GET", "/users/<user_id>"): Operation(
        users.handle_get_user, "Users", etag=True, errors=(NotFound,),
        success=(Success(200, "Your user object.", "UserOut"),)),
    ("PATCH", "/users/<user_id>"): Operation(
        users.handle_update_user, "Users", request=users.UpdateUser, errors=(NotFound,),
        success=(Success(200, "The changed user object.", "UserOut"),),
        conflicts=("use email ada@example.com, which is already registered",),
        request_example={"name": "Ada Lovelace", "email": None}),
    ("DELETE", "/users/<user_id>"): Operation(
        users.handle_delete_user, "Users", errors=(NotFound,),
        success=(Success(204, "Deleted, with its moods, conversations and lines."),)),

    ("GET", "/animals"): Operation(
        animals.handle_list_animals, "Animals", etag=True,
        success=(Success(200, "Every animal this server can render.", "AnimalList"),),
        notes="Animals are the `.cow` files found in each directory of `COWPATH`, then the "
              "system's cowsay directories, then those bundled with SayPI; the first file of "
              "a name wins. The list is not paginated."),

    ("GET", "/moods"): Operation(
        moods.handle_list_moods, "Moods", etag=True, paginated=True,
        success=(Success(200, LIST_SUCCESS, "MoodList"),),
        notes="The cursors of this list are mood names (case-insensitive), built-ins "
              "included."),
    ("GET", "/moods/<name>"): Operation(
        moods.handle_get_mood, "Moods", etag=True, errors=(NotFound,),
        success=(Success(200, "The mood.", "MoodOut"),),
        notes="`name` is case-insensitive; the response shows the mood's own name."),
    ("PUT", "/moods/<name>"): Operation(
        moods.handle_put_mood, "Moods", request=moods.PutMood,
        success=(
            Success(200, "Your mood, updated.", "MoodOut", links={
                "GetMood": Link(moods.handle_get_mood, {"name": "$response.body#/name"},
                                "Read the mood back."),
                "DeleteMood": Link(moods.handle_delete_mood, {"name": "$response.body#/name"},
                                   "Delete the mood."),
            }),
            Success(201, "Your new mood.", "MoodOut", links={
                "GetMood": Link(moods.handle_get_mood, {"name": "$response.body#/name"},
                                "Read the mood back."),
                "DeleteMood": Link(moods.handle_delete_mood, {"name": "$response.body#/name"},
                                   "Delete the mood."),
            }),
        ),
        conflicts=("update built-in mood borg", "create more than {max_moods} moods"),
        request_example={"eyes": "^^", "tongue": "U "},
        notes="PUT is idempotent by itself, so it takes no Idempotency-Key. `name` is "
              "case-insensitive: an existing mood whose name differs only in case is updated "
              "and keeps the case it was created with. The name travels in the path, so it "
              "must be percent-encoded there (a name of only dots, `.` or `..`, as `%2E`). "
              "A name that is not 1-30 printable ASCII characters without `/` is "
              "`400 invalid_params` with parameter `name`. An empty body creates a mood with "
              "the default eyes and tongue, or changes nothing of an existing one. "
              "Updating an existing mood is allowed at the cap."),
    ("DELETE", "/moods/<name>"): Operation(
        moods.handle_delete_mood, "Moods", errors=(NotFound,),
        success=(Success(204, "Deleted."),),
        conflicts=("delete built-in mood borg",
                   "delete a mood associated with 3 conversation lines")),

    ("GET", "/conversations"): Operation(
        conversations.handle_list_conversations, "Conversations", etag=True, paginated=True,
        success=(Success(200, LIST_SUCCESS, "ConversationList"),)),
    ("POST", "/conversations"): Operation(
        conversations.handle_create_conversation, "Conversations", idempotent=True,
        request=conversations.CreateConversation, body_required=True,
        success=(Success(201, "The new conversation, with `\"lines\": []`.",
                         "ConversationOut", links={
                             "GetConversation": Link(
                                 conversations.handle_get_conversation,
                                 {"conversation_id": "$response.body#/id"},
                                 "Read the conversation."),
                             "UpdateConversation": Link(
                                 conversations.handle_update_conversation,
                                 {"conversation_id": "$response.body#/id"},
                                 "Change its heading."),
                             "DeleteConversation": Link(
                                 conversations.handle_delete_conversation,
                                 {"conversation_id": "$response.body#/id"},
                                 "Delete it."),
                             "CreateLine": Link(
                                 lines.handle_create_line,
                                 {"conversation_id": "$response.body#/id"},
                                 "Add a line to it."),
                             "ListLines": Link(
                                 lines.handle_list_lines,
                                 {"conversation_id": "$response.body#/id"},
                                 "List its lines."),
                         }),),
        conflicts=("create more than {max_conversations} conversations",),
        request_example={"heading": "Morning on the farm"}),
    ("GET", "/conversations/<conversation_id>"): Operation(
        conversations.handle_get_conversation, "Conversations", etag=True, errors=(NotFound,),
        success=(Success(200, "The conversation with all its lines, oldest first.",
                         "ConversationOut",
                         text="With `Accept: text/plain`: the heading, a blank line, then "
                              "each line's `output` in order."),)),
    ("PATCH", "/conversations/<conversation_id>"): Operation(
        conversations.handle_update_conversation, "Conversations", errors=(NotFound,),
        request=conversations.UpdateConversation, body_required=True,
        success=(Success(200, "The changed conversation, with its lines.", "ConversationOut"),),
        request_example={"heading": "Evening on the farm"},
        notes="`heading` is required: it is the only thing a conversation has to change."),
    ("DELETE", "/conversations/<conversation_id>"): Operation(
        conversations.handle_delete_conversation, "Conversations", errors=(NotFound,),
        success=(Success(204, "Deleted, with its lines."),)),

    ("GET", "/conversations/<conversation_id>/lines"): Operation(
        lines.handle_list_lines, "Lines", etag=True, paginated=True, errors=(NotFound,),
        success=(Success(200, LIST_SUCCESS, "LineList"),)),
    ("POST", "/conversations/<conversation_id>/lines"): Operation(
        lines.handle_create_line, "Lines", idempotent=True, request=lines.CreateLine,
        errors=(NotFound,),
        success=(Success(201, "The new line, rendered.", "LineOut", links={
            "GetLine": Link(lines.handle_get_line,
                            {"conversation_id": "$request.path.conversation_id",
                             "line_id": "$response.body#/id"},
                            "Read the line."),
            "DeleteLine": Link(lines.handle_delete_line,
                               {"conversation_id": "$request.path.conversation_id",
                                "line_id": "$response.body#/id"},
                               "Delete the line."),
        }),),
        conflicts=("add more than {max_lines} lines to a conversation",),
        request_example={"animal": "default", "think": False, "mood": "tired",
                         "text": "Moo."},
        notes="`animal` must be listed by `GET /animals`; `mood` is a built-in or one of "
              "yours, case-insensitively, and the line reports the mood's own name. "
              "`output` is rendered from the mood as it is now, so changing a mood shows in "
              "every line that uses it."),
    ("GET", "/conversations/<conversation_id>/lines/<line_id>"): Operation(
        lines.handle_get_line, "Lines", etag=True, errors=(NotFound,),
        success=(Success(200, "The line.", "LineOut",
                         text="With `Accept: text/plain`: just its rendered `output`."),)),
    ("DELETE", "/conversations/<conversation_id>/lines/<line_id>"): Operation(
        lines.handle_delete_line, "Lines", errors=(NotFound,),
        success=(Success(204, "Deleted."),)),

    ("GET", "/health/live"): Operation(
        ops.handle_live, "Operations", authenticated=False, limited=False,
        success=(Success(200, "The process serves.", "HealthLive"),)),
    ("GET", "/health/ready"): Operation(
        ops.handle_ready, "Operations", authenticated=False, limited=False,
        success=(Success(200, "Ready: `healthy` or `degraded`.", "HealthSummary"),
                 Success(503, "Not ready: `unhealthy` or `critical`, or shutting down "
                              "(then with a `message`).", "HealthSummary"))),
    ("GET", "/health/quick"): Operation(
        ops.handle_quick, "Operations", authenticated=False, limited=False,
        success=(Success(200, "Last known status `healthy` or `degraded`.", "HealthSummary"),
                 Success(503, "Last known status `unhealthy` or `critical`.",
                         "HealthSummary"))),
    ("GET", "/health/detailed"): Operation(
        ops.handle_detailed, "Operations", authenticated=False, limited=False,
        success=(Success(200, "Overall `healthy` or `degraded`.", "HealthDetailed"),
                 Success(503, "Overall `unhealthy` or `critical`.", "HealthDetailed")),
        notes="Components: `database` (pool statistics), `migrations`, `memory`, "
              "`lifecycle`, and others as the deployment configures them (read replica, "
              "rate-limit store). Hostnames and versions appear in `details` only with "
              "`HEALTH_DETAILS=true`; credentials never do."),
    ("GET", "/metrics"): Operation(
        ops.handle_metrics, "Operations", authenticated=False, limited=False,
        success=(Success(200, "Prometheus text exposition format 0.0.4, merged across the "
                              "workers.", "PrometheusText"),)),
}

# What each error's `data` holds (API.md's error table); None: the body has no `data`.
ERROR_DATA: dict[type[ApiError], dict[str, Any] | None] = {
    InvalidRequest: {"type": "object", "required": ["reason"], "additionalProperties": False,
                     "properties": {"reason": {"type": "string"}}},
    InvalidParams: {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["params", "message"], "additionalProperties": False,
        "properties": {"params": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                       "message": {"type": "string"}}}},
    AuthRequired: None,
    AuthInvalid: None,
    NotFound: None,
    MethodNotAllowed: {"type": "object", "required": ["allowed"], "additionalProperties": False,
                       "properties": {"allowed": {"type": "array",
                                                  "items": {"type": "string"}}}},
    ActionNotAllowed: {"type": "object", "required": ["action"], "additionalProperties": False,
                       "properties": {"action": {"type": "string"}}},
    IdempotencyKeyInUse: None,
    IdempotencyKeyReused: None,
    PayloadTooLarge: {"type": "object", "required": ["max_bytes"],
                      "additionalProperties": False,
                      "properties": {"max_bytes": {"type": "integer", "minimum": 0}}},
    UnsupportedMediaType: {"type": "object", "required": ["supported"],
                           "additionalProperties": False,
                           "properties": {"supported": {"type": "array",
                                                        "items": {"type": "string"}}}},
    RateLimited: {"type": "object", "required": ["retry_after"], "additionalProperties": False,
                  "properties": {"retry_after": {"type": "integer", "minimum": 1}}},
    InternalFailure: None,
    ServiceUnavailable: {"type": "object", "required": ["retry_after"],
                         "additionalProperties": False,
                         "properties": {"retry_after": {"type": "integer", "minimum": 1}}},
}

# When each error happens, for the response descriptions.
ERROR_WHEN: dict[type[ApiError], str] = {
    InvalidRequest: "the body does not parse, or its JSON is not an object",
    InvalidParams: "parameters are invalid; `data` lists every problem at once",
    AuthRequired: "no `Authorization: Bearer` header",
    AuthInvalid: "the token is unknown, malformed or forged, or its user was deleted",
    NotFound: "nothing of yours is at this path (another user's object and a malformed id "
              "are not found too)",
    MethodNotAllowed: "the path exists but not with this method",
    ActionNotAllowed: "a rule refuses the action named in `data.action`",
    IdempotencyKeyInUse: "the first request with this `Idempotency-Key` is still running; "
                         "retry later",
    IdempotencyKeyReused: "this `Idempotency-Key` was used with a different method, path or "
                          "parameters",
    PayloadTooLarge: "the body is larger than `MAX_BODY_BYTES`",
    UnsupportedMediaType: "a non-empty body that is neither JSON nor a form",
    RateLimited: "the rate limit is exceeded; retry after `Retry-After` seconds",
    InternalFailure: "an unexpected failure; details are only in the log, under the "
                     "response's `X-Request-ID`",
    ServiceUnavailable: "the database is unreachable, the connection pool stayed exhausted, or "
                        "the server is shutting down; retry after `Retry-After` seconds",
}


def _error_examples(config) -> dict[type[ApiError], ApiError]:
    return {
        InvalidRequest: InvalidRequest("the body is not valid JSON"),
        InvalidParams: InvalidParams.one("limit", f"must be an integer between 1 and "
                                                  f"{MAX_LIMIT}"),
        AuthRequired: AuthRequired(),
        AuthInvalid: AuthInvalid(),
        NotFound: NotFound(),
        MethodNotAllowed: MethodNotAllowed(["GET", "POST"]),
        ActionNotAllowed: ActionNotAllowed(
            f"create more than {config.max_conversations_per_user} conversations"),
        IdempotencyKeyInUse: IdempotencyKeyInUse(),
        IdempotencyKeyReused: IdempotencyKeyReused(),
        PayloadTooLarge: PayloadTooLarge(config.max_body_bytes),
        UnsupportedMediaType: UnsupportedMediaType(),
        RateLimited: RateLimited(12),
        InternalFailure: InternalFailure(),
        ServiceUnavailable: ServiceUnavailable(1),
    }


# --- comparing the table with the routes ---------------------------------------------------
def documented_rule(rule: str) -> bool:
    """Whether a Flask rule belongs in the description (docs and debug routes do not)."""
    return rule not in SELF_RULES and not rule.startswith(UNDOCUMENTED_PREFIXES)


def registered_operations(url_map) -> dict[tuple[str, str], str]:
    """(method, rule) -> endpoint of every route of a url_map that the description covers."""
    found = {}
    for rule in url_map.iter_rules():
        if rule.endpoint == "static" or not documented_rule(rule.rule):
            continue
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                found[(method, rule.rule)] = rule.endpoint
    return found


def maker_of(view: Callable) -> str:
    """`module.maker` that made a registered view (seen through functools.wraps wrappers)."""
    handler = inspect.unwrap(view)
    return f"{handler.__module__}.{handler.__qualname__.split('.<locals>')[0]}"


def route_drift(app, table: Mapping[tuple[str, str], Operation] = OPERATIONS) -> list[str]:
    """Every difference between an app's routes and the table; empty when they agree.

    A route must be documented with its exact rule and method, and by the maker
    function whose handler it serves (so its docstring is the one shown).
    """
    registered = registered_operations(app.url_map)
    problems = [f"{method} {rule} is registered but not documented"
                for method, rule in sorted(set(registered) - set(table))]
    problems += [f"{method} {rule} is documented but not registered"
                 for method, rule in sorted(set(table) - set(registered))]
    for key in sorted(set(registered) & set(table)):
        made_by = maker_of(app.view_functions[registered[key]])
        documented = f"{table[key].maker.__module__}.{table[key].maker.__name__}"
        if made_by != documented:
            problems.append(f"{key[0]} {key[1]} is served by {made_by} but documented "
                            f"from {documented}")
    return problems


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: `<conversation_id>` becomes `{conversation_id}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def path_shape(path: str) -> str:
    """A path with every parameter replaced by `{}`, to compare docstrings with rules."""
    return re.sub(r"\{[^}]*\}", "{}", openapi_path(path))


def docstring_route(maker: Callable) -> tuple[str, str] | None:
    """The `METHOD /path` a maker's docstring starts with, if it does."""
    first = (inspect.getdoc(maker) or "").split("\n", 1)[0]
    match = re.match(r"([A-Z]+) (/\S*): ", first)
    return (match.group(1), match.group(2)) if match else None


def _summary_and_description(op: Operation, config) -> tuple[str, str]:
    doc = inspect.getdoc(op.maker) or ""
    first, _, rest = doc.partition("\n\n")  # the first paragraph, then the others
    text = re.sub(r"^[A-Z]+ /\S*: ", "", " ".join(first.split()))
    text = text[:1].upper() + text[1:]
    summary = text.split(";")[0].rstrip(".")
    parts = [text, rest.strip(), _format(op.notes, config)]
    return summary, "\n\n".join(part for part in parts if part)


def _format(text: str, config) -> str:
    """Fill in this server's limits: `{max_moods}`, `{max_conversations}`, `{max_lines}`."""
    for name, value in (("max_moods", config.max_moods_per_user),
                        ("max_conversations", config.max_conversations_per_user),
                        ("max_lines", config.max_lines_per_conversation)):
        text = text.replace("{" + name + "}", str(value))
    return text


# --- fields -> JSON Schema -----------------------------------------------------------------
def _field_properties(self, field, ret: dict, **kwargs: Any) -> dict:
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


def _request_component(spec: APISpec, schema: type[Schema], defaults: Mapping[str, Any],
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


def _response_component(spec: APISpec, schema: type[Schema], descriptions: Mapping[str, str],
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


def _list_component(item: str, kind: str) -> dict[str, Any]:
    return {
        "type": "object", "required": ["type", "has_more", "data"],
        "additionalProperties": False,
        "description": f"One page of {kind}s, oldest first.",
        "properties": {
            "type": {"type": "string", "enum": [kind]},
            "has_more": {"type": "boolean", "description": (
                "Whether more objects follow this page (with `ending_before`: precede it).")},
            "data": {"type": "array", "items": _ref("schemas", item)},
        },
    }


HEALTH_STATUS = {"type": "string", "enum": ["healthy", "degraded", "unhealthy", "critical"]}


def _health_components() -> dict[str, dict[str, Any]]:
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
                                      "additionalProperties": _ref("schemas", "HealthCheck")}}},
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
    "name": {"description": "A mood name: 1-30 printable ASCII characters other than `/`, "
                            "case-insensitive, percent-encoded in the path.",
             "schema": {"type": "string", "pattern": MOOD_NAME},
             "example": "sleepy"},
}


# --- building ---------------------------------------------------------------------------------
def _example_objects(config) -> dict[str, Any]:
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
    return {
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
    }


def _error_name(error: type[ApiError]) -> str:
    return f"{error.__name__}Error"


def _errors_of(op: Operation) -> list[type[ApiError]]:
    errors: list[type[ApiError]] = list(op.errors)
    if op.authenticated:
        errors += [AuthRequired, AuthInvalid]
    if op.limited:
        errors.append(RateLimited)
    if op.request is not None:
        errors += [InvalidRequest, InvalidParams, PayloadTooLarge, UnsupportedMediaType]
    if op.idempotent:
        errors += [InvalidParams, IdempotencyKeyInUse, IdempotencyKeyReused]
    if op.paginated:
        errors.append(InvalidParams)
    if op.conflicts:
        errors.append(ActionNotAllowed)
    errors.append(InternalFailure)
    if op.limited:  # every route that touches the database
        errors.append(ServiceUnavailable)
    seen: list[type[ApiError]] = []
    for error in errors:
        if error not in seen:
            seen.append(error)
    return seen


def _headers(op: Operation, method: str, status: int, error_headers: Iterable[str] = ()
             ) -> dict[str, Any]:
    names = ["X-Request-ID"]
    if op.limited:
        names += ["RateLimit", "RateLimit-Policy"]
    if status == 201:
        names.append("Location")
    if op.etag and method == "GET" and status in (200, 304):
        names.append("ETag")
    if op.idempotent and status < 500 and status != 429:
        names.append("Idempotent-Replayed")
    names += [n for n in error_headers if n not in names]
    return {name: _ref("headers", name) for name in names}


def _error_response(op: Operation, method: str, status: int, errors: list[type[ApiError]],
                    examples: Mapping[type[ApiError], ApiError], config) -> dict[str, Any]:
    refs = [_ref("schemas", _error_name(e)) for e in errors]
    schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    lines_ = []
    for error in errors:
        when = ERROR_WHEN[error]
        if error is ActionNotAllowed and op.conflicts:
            when = "a rule refuses the action: " + "; ".join(
                f"You may not {_format(a, config)}" for a in op.conflicts)
        lines_.append(f"`{error.code}`: {when}.")
    media_examples: dict[str, Any] = {}
    for error in errors:
        if error is ActionNotAllowed and op.conflicts:
            for n, action in enumerate(op.conflicts):
                media_examples[f"{error.code}_{n + 1}"] = {
                    "value": ActionNotAllowed(_format(action, config)).body()}
        else:
            media_examples[error.code] = {"value": examples[error].body()}
    error_headers: list[str] = []
    for error in errors:
        if error in (RateLimited, ServiceUnavailable):
            error_headers.append("Retry-After")
        if error in (AuthRequired, AuthInvalid):
            error_headers.append("WWW-Authenticate")
    return {
        "description": " ".join(lines_),
        "headers": _headers(op, method, status, error_headers),
        "content": {"application/json": {"schema": schema, "examples": media_examples}},
    }


def _success_response(op: Operation, method: str, success: Success,
                      examples: Mapping[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": success.description,
                                "headers": _headers(op, method, success.status)}
    if success.schema is not None:
        if success.schema == "PrometheusText":
            content = {"text/plain": {"schema": _ref("schemas", success.schema),
                                      "example": examples[success.schema]}}
        else:
            content = {"application/json": {"schema": _ref("schemas", success.schema),
                                             "example": examples[success.schema]}}
        if success.text is not None:
            content["text/plain"] = {"schema": {"type": "string", "description": success.text},
                                     "example": examples[f"text:{success.schema}"]}
            response["description"] += " " + success.text
        response["content"] = content
    if success.links:
        response["links"] = {
            name: {"operationId": operation_id(link.operation),
                   "parameters": dict(link.parameters), "description": link.description}
            for name, link in success.links.items()}
    return response


def operation_id(maker: Callable) -> str:
    return maker.__name__.removeprefix("handle_")


def _operation(method: str, rule: str, op: Operation, config,
               error_examples: Mapping[type[ApiError], ApiError],
               examples: Mapping[str, Any]) -> dict[str, Any]:
    summary, description = _summary_and_description(op, config)
    parameters: list[dict[str, Any] | str] = []
    for name in re.findall(r"<(?:[^:<>]+:)?([^<>]+)>", rule):
        parameters.append({"name": name, "in": "path", "required": True,
                           **PATH_PARAMETERS[name]})
    if op.paginated:
        parameters += ["limit", "starting_after", "ending_before"]
    if op.idempotent:
        parameters.append("Idempotency-Key")
    if op.etag:
        parameters.append("If-None-Match")
    parameters.append("X-Request-ID")  # component names; apispec makes them $refs

    responses: dict[str, Any] = {}
    for success in op.success:
        responses[str(success.status)] = _success_response(op, method, success, examples)
    if op.etag:
        responses["304"] = {"description": "Not modified: `If-None-Match` names the current "
                                           "`ETag`. No body.",
                            "headers": _headers(op, method, 304)}
    by_status: dict[int, list[type[ApiError]]] = {}
    for error in _errors_of(op):
        by_status.setdefault(error.status, []).append(error)
    for status in sorted(by_status):
        if str(status) in responses:  # health 503s are the health body, never an error
            continue
        responses[str(status)] = _error_response(op, method, status, by_status[status],
                                                 error_examples, config)
    operation: dict[str, Any] = {
        "operationId": operation_id(op.maker),
        "summary": summary,
        "description": description,
        "tags": [op.tag],
        "parameters": parameters,
        "responses": dict(sorted(responses.items())),
    }
    if not op.authenticated:
        operation["security"] = []
    if op.request is not None:
        ref = _ref("schemas", op.request.__name__)
        example = op.request_example or {}
        operation["requestBody"] = {
            "required": op.body_required,
            "description": "A JSON object or a form. " + (
                "Required." if op.body_required else
                "Optional: an empty body, of any type, is an empty object."),
            "content": {"application/json": {"schema": ref, "example": example},
                        "application/x-www-form-urlencoded": {
                            "schema": ref,
                            "example": {k: v for k, v in example.items() if v is not None}}},
        }
    return operation


def _info_description(config) -> str:
    user_rate, ip_rate = config.rate_limit_user_per_minute, config.rate_limit_ip_per_minute
    limits = (f"On this server: {user_rate} requests per minute per user (burst "
              f"{config.rate_limit_user_burst}) and {ip_rate} per minute per client address "
              f"(burst {config.rate_limit_ip_burst}); 0 means that limit is off.")
    return f"""\
SayPI is a cowsay conversation API: users create conversations in which animals speak or
think lines of text, rendered as classic cowsay art.

**Requests.** Write endpoints take a JSON object (`application/json`) or a form
(`application/x-www-form-urlencoded`); an empty body of any type is an empty object, any
other non-empty body is `415`. Unknown parameters are ignored. JSON values must have the
documented type (no coercion); form values are parsed (`think=true`). A JSON `null` for an
optional parameter means "not given", except where a parameter says it clears a value.
Strings may not contain control characters (newline and tab are allowed in a line's `text`)
or unpaired surrogates (`\\ud800` in JSON).
Bodies over {config.max_body_bytes} bytes (`MAX_BODY_BYTES`) are `413`. Routing comes first:
an unknown path is `404` and a wrong method `405 method_not_allowed` with an `Allow` header,
with or without a token.

**Authentication.** `Authorization: Bearer <token>`, the token `POST /users` returns once.
Everything else is yours alone: another user's object is `404`, never `403`. Authenticated
responses carry `Cache-Control: no-store`.

**Errors.** Every error is a JSON `Error` object: `code` (one code, one HTTP status),
`message` (complete sentences) and, for some codes, `data`. No response carries a stack
trace, SQL or a secret.

**Every response** carries `X-Request-ID`. Successful GETs of objects and lists carry an
`ETag` and answer a matching `If-None-Match` with `304`.

**Creation.** `POST` returns `201` with a `Location`, and takes an optional `Idempotency-Key`.

**Lists** are keyset-paginated with `limit`, `starting_after` and `ending_before`, oldest
first, as `{{"type", "has_more", "data"}}`.

**Rate limits.** Per user once authenticated, per client address before (GCRA), shared by
all processes. Limited responses carry `RateLimit` and `RateLimit-Policy`; an exceeded limit
is `429` with `Retry-After`. {limits} Health, metrics and docs are never limited.

**Object limits** on this server: {config.max_conversations_per_user} conversations and
{config.max_moods_per_user} moods per user, {config.max_lines_per_conversation} lines per
conversation; more is `409 action_not_allowed`.

**Decisions where the contract is silent** are stated in each operation's description:
malformed ids are `404 not_found` (they name nothing), not `400`; `PATCH
/conversations/{{conversation_id}}` requires `heading`; `PUT /moods/{{name}}` takes no
`Idempotency-Key` (PUT is idempotent by itself); health and metrics responses are never
cached and carry no ETag.
"""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("saypi")
    except Exception:  # not installed as a distribution (a bare checkout)
        return "0.0.0"


REQUEST_DEFAULTS: dict[type[Schema], dict[str, Any]] = {
    lines.CreateLine: {"animal": lines.DEFAULT_ANIMAL, "think": False,
                       "mood": BUILTIN_MOODS[0].name, "text": ""},
}
REQUEST_NOTES: dict[type[Schema], dict[str, str]] = {
    moods.PutMood: {"eyes": f"When creating, default `{BUILTIN_MOODS[0].eyes}`; when "
                            "updating, omitted keeps the current value.",
                    "tongue": f"When creating, default `{BUILTIN_MOODS[0].tongue}` (two "
                              "spaces); when updating, omitted keeps the current value."},
    lines.CreateLine: {"animal": "Must be listed by `GET /animals`.",
                       "mood": "A built-in mood or one of yours, case-insensitive.",
                       "text": "Rendered literally."},
    users.CreateUser: {"email": "Unique case-insensitively; stored as given."},
    users.UpdateUser: {"email": "Unique case-insensitively; stored as given."},
}
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
    conversations.ConversationListItemOut: ("A conversation as lists show it (no `lines`).",
                                            {}),
    conversations.ConversationOut: ("A conversation with all its lines, oldest first.", {}),
}


def build_spec(config) -> dict[str, Any]:
    """The OpenAPI document as a dict."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title=TITLE, version=_version(), openapi_version=OPENAPI_VERSION, plugins=[plugin],
        info={"description": _info_description(config)},
        tags=[{"name": "Users", "description": "Sign up, and your own user object."},
              {"name": "Animals", "description": "The cowsay animals this server renders."},
              {"name": "Moods", "description": "Eyes and tongues: eight built-ins plus your "
                                               "own."},
              {"name": "Conversations", "description": "A heading and the lines said in it."},
              {"name": "Lines", "description": "What an animal says or thinks, rendered."},
              {"name": "Operations", "description": "Health checks and metrics: never "
                                                    "authenticated or rate limited."}],
        security=[{"bearerAuth": []}],
    )
    plugin.converter.add_attribute_function(_field_properties)
    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer",
        "description": "The token `POST /users` returns, once. Tokens are verified without a "
                       "database round trip and never appear in URLs or logs."})

    for schema, (description, notes) in RESPONSE_NOTES.items():
        _response_component(spec, schema, notes, description)
    for schema in (users.CreateUser, users.UpdateUser, moods.PutMood,
                   conversations.CreateConversation, conversations.UpdateConversation,
                   lines.CreateLine):
        _request_component(spec, schema, REQUEST_DEFAULTS.get(schema, {}),
                           REQUEST_NOTES.get(schema, {}))
    examples = _example_objects(config)
    for name, item, kind in (("MoodList", "MoodOut", "mood"),
                             ("ConversationList", "ConversationListItemOut", "conversation"),
                             ("LineList", "LineOut", "line")):
        spec.components.schema(name, component=_list_component(item, kind))
    for name, component in _health_components().items():
        spec.components.schema(name, component=component)

    error_examples = _error_examples(config)
    spec.components.schema("Error", component={
        "type": "object", "required": ["code", "message"],
        "description": "The body of every error response.",
        "properties": {
            "code": {"type": "string", "enum": [e.code for e in ALL_ERRORS],
                     "description": "A stable machine string; one code, one HTTP status."},
            "message": {"type": "string", "description": "Complete sentences built only from "
                                                         "the error's own data."},
            "data": {"description": "Structured detail; its shape depends on `code`, and "
                                    "it is absent for codes without detail."},
        },
        "example": error_examples[InvalidParams].body(),
    })
    for error in ALL_ERRORS:
        data = ERROR_DATA[error]
        properties: dict[str, Any] = {"code": {"type": "string", "enum": [error.code]},
                                      "message": {"type": "string"}}
        if data is not None:
            properties["data"] = data
        spec.components.schema(_error_name(error), component={
            "description": f"`{error.code}` ({error.status}): {ERROR_WHEN[error]}.",
            "allOf": [_ref("schemas", "Error"), {
                "type": "object", "required": ["code", "message", *(["data"] if data else [])],
                "additionalProperties": False, "properties": properties}],
            "example": error_examples[error].body(),
        })
    for name, header in HEADERS.items():
        spec.components.header(name, header)
    for name, parameter in PARAMETERS.items():
        spec.components.parameter(name, parameter["in"], {
            k: v for k, v in parameter.items() if k not in ("in",)})

    paths: dict[str, dict[str, Any]] = {}
    for (method, rule), op in OPERATIONS.items():
        paths.setdefault(openapi_path(rule), {})[method.lower()] = _operation(
            method, rule, op, config, error_examples, examples)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    for name in ("MoodList", "ConversationList", "LineList", *RESPONSE_SCHEMA_NAMES,
                 *_health_components()):
        if name in examples:
            document["components"]["schemas"][name]["example"] = examples[name]
    return document


RESPONSE_SCHEMA_NAMES = tuple(schema.__name__ for schema in RESPONSE_NOTES)


def spec_json(config) -> bytes:
    """The OpenAPI document, serialised once."""
    return json.dumps(build_spec(config), ensure_ascii=False, indent=1).encode("utf-8")


