"""The shared parts of SayPI's OpenAPI document: everything but the operations.

Bodies come from the marshmallow schemas through apispec's marshmallow plugin, taught
SayPI's custom fields here; headers and parameters are shared by many operations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apispec import APISpec
from marshmallow import Schema

from app.domain import ids
from app.domain.pages import DEFAULT_LIMIT, MAX_LIMIT
from app.http import errors as api
from app.http import patterns
from app.http.errors import CURSOR_MISSING
from app.http.fields import Bool, Email, ObjectList, PublicId, Text, TextList, Timestamp
from app.http.idempotency import HEADER as IDEMPOTENCY_HEADER

# JSON Schema patterns (ECMA 262 syntax, as OpenAPI requires) for the fields' rules, made
# from the same character rules the validators use.
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



def error_name(error: type[api.ApiError]) -> str:
    return f"{error.__name__}Error"


# --- fields -> JSON Schema -----------------------------------------------------------------
def field_properties(self, field, ret: dict, **kwargs: Any) -> dict:
    """apispec attribute function for the custom fields of app/http/fields.py."""
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
    if isinstance(field, TextList):
        return {"type": "array", "minItems": field.min_items, "maxItems": field.max_items,
                "items": field_properties(self, field.item, {})}
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
    if isinstance(field, TextList):
        return f"A list of {field.min_items} to {field.max_items} strings."
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


# --- headers and parameters -----------------------------------------------------------------
HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {"description": "The request's id: the one sent, when it is 1-128 "
                                    "characters of `[A-Za-z0-9._-]` and holds no credential "
                                    "(see the parameter), else a generated one. Every log "
                                    "line of the request carries it.",
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
                       "is 1-128 characters of `[A-Za-z0-9._-]`; otherwise one is generated. "
                       "An id that looks like a token (`usr_` and 16 hex digits, then a dot) "
                       "or shares the Authorization header's credential is replaced by a "
                       "generated one too, so a token never reaches the logs.",
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
    "endpoint_id": {"description": "A webhook endpoint id (`we_...`) of yours.",
                    "schema": {"type": "string", "pattern": "^we_[0-9a-f]{16}$"},
                    "example": "we_2f1c4b8d0a6e9375"},
    "name": {"description": "A mood name: 1-30 printable ASCII characters other than `/`, "
                            "case-insensitive, percent-encoded in the path.",
             "schema": {"type": "string", "pattern": MOOD_NAME},
             "example": "sleepy"},
}
